"""Fashion-MNIST: tiny files in the real IDX format (gzipped, torchvision's layout); one test reads Debian's
full package (`apt-get install dataset-fashion-mnist`, which CI does)."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from cartl_kit import fashion
from cartl_kit.data import as_float, dataset_stats, load_dataset
from cartl_kit.paper_data import DatasetCorrupt, DatasetNotAvailable


def _idx(images: np.ndarray) -> bytes:
    dims = images.ndim
    header = (0x0800 + dims).to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in images.shape)
    return header + images.astype(np.uint8).tobytes()


def _write(folder, split: str, n: int = 30, *, images: bytes | None = None) -> np.ndarray:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10
    prefix = "train" if split == "train" else "t10k"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images if images is not None else _idx(x)))
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(y)))
    return x


@pytest.fixture
def no_system_copy(monkeypatch, tmp_path):
    monkeypatch.setenv(fashion.FOLDER_ENV_VAR, str(tmp_path / "nowhere"))


def test_reads_torchvisions_layout_with_class_selection(tmp_path, no_system_copy):
    x = _write(tmp_path / "FashionMNIST" / "raw", "test")
    data = load_dataset("fashion", split="test", root=tmp_path, download=False)
    assert data.images.shape == (30, 1, 28, 28) and (data.images[:, 0].numpy() == x).all()
    assert data.labels.tolist() == [i % 10 for i in range(30)] and data.num_classes == 10
    shirts = load_dataset("fashion[5-9]", split="test", root=tmp_path, download=False)
    assert len(shirts) == 15 and shirts.labels.max() == 4  # renumbered 5..9 -> 0..4


def test_a_system_folder_is_found_without_a_download(tmp_path, monkeypatch):
    _write(tmp_path / "debian", "train")
    monkeypatch.setenv(fashion.FOLDER_ENV_VAR, str(tmp_path / "debian"))
    assert len(load_dataset("fashion", split="train", root=tmp_path / "empty", download=False)) == 30


def test_a_file_is_unzipped_once_and_read_again_when_it_changes(tmp_path, no_system_copy, monkeypatch):
    folder = tmp_path / "FashionMNIST" / "raw"
    first = _write(folder, "test")
    opened = []
    real_open = gzip.open
    monkeypatch.setattr(fashion.gzip, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    for _ in range(3):
        data = load_dataset("fashion[0-4]", split="test", root=tmp_path, download=False)
    assert len(opened) == 2 and (data.images[:, 0].numpy() == first[np.arange(30) % 10 < 5]).all()  # images, labels
    images = folder / "t10k-images-idx3-ubyte.gz"
    changed = np.full((30, 28, 28), 7)
    images.write_bytes(gzip.compress(_idx(changed)))
    os.utime(images, ns=(images.stat().st_atime_ns, images.stat().st_mtime_ns + 10**9))  # a new time, whatever the clock
    again = load_dataset("fashion", split="test", root=tmp_path, download=False)
    assert (again.images == 7).all() and len(opened) == 3  # only the changed file was read again


def test_missing_files_say_how_to_get_them(tmp_path, no_system_copy):
    with pytest.raises(DatasetNotAvailable, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion", split="train", root=tmp_path, download=False)


@pytest.mark.parametrize("payload, problem", [
    (b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100, "the header says"),
    (b"not an idx file at all", "not an IDX file"),
])
def test_a_damaged_file_is_refused_in_one_line(tmp_path, no_system_copy, payload, problem):
    _write(tmp_path / "FashionMNIST" / "raw", "test", images=payload)
    with pytest.raises(DatasetCorrupt, match=problem):
        load_dataset("fashion", split="test", root=tmp_path, download=False)


def test_the_real_debian_package(debian_fashion):
    train = load_dataset("fashion", split="train", download=False, verify=True)
    test = load_dataset("fashion", split="test", download=False, verify=True)
    assert (len(train), len(test)) == (60_000, 10_000) and train.class_counts() == [6000] * 10
    x = as_float(train.images)
    (mean,), (std,) = dataset_stats("fashion")
    assert mean == pytest.approx(x.mean().item(), abs=1e-5) and std == pytest.approx(x.std(unbiased=False).item(), abs=1e-5)


def test_the_fashion_plan_is_nine_teachers_and_its_small_data_shrinks_the_target_subset():
    """`reproduce --preset fashion`: 3 teacher x 2 transfer seeds, 9 teachers, 120 transfers; the small-data
    columns are 50 % and 10 % of the preset's target set (itself 20 % of Fashion-MNIST 5-9's training images)."""
    from cartl_kit.plan import cells, get_plan, seed_pairs
    plan = get_plan("fashion")
    everything = [cell for seed, transfer_seed in seed_pairs(plan) for cell in cells(plan, seed, transfer_seed)]
    assert len({c.config.teacher for c in everything}) == 9 and len({c.config for c in everything}) == 120
    small = {c.column: c.config.dataset for c in everything if c.table == "baselines"}
    assert small == {"full": "fashion[5-9]@20%", "50 %": "fashion[5-9]@10%", "10 %": "fashion[5-9]@2%"}
