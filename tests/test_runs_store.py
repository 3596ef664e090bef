"""The runs store under concurrency, tampering, full disks and bad roots.

Concurrency is real: forked processes meet at a file barrier, then evaluate one run or train one config
at the same moment.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

from cartl_kit import config as cfg
from cartl_kit import runs, store
from test_runs import TINY_ATTACK, copy_of, tiny_source  # noqa: F401
from test_runs import trained_root  # noqa: F401  (a module-scoped fixture: one tiny teacher)

ONE_EPOCH = cfg.OptimConfig(epochs=1, batch_size=128, milestones=())


def one_epoch_source(seed: int) -> cfg.SourceConfig:
    return cfg.SourceConfig(dataset="digits[0-4]", arch="wrn16_1", attack=TINY_ATTACK, optim=ONE_EPOCH, seed=seed)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    return message


# --- real concurrency ---------------------------------------------------------------------------

def _barrier(folder: Path, me: int, parties: int) -> None:
    (folder / f"ready-{me}").touch()
    deadline = time.monotonic() + 120
    while len(list(folder.glob("ready-*"))) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError("the other workers never arrived")
        time.sleep(0.01)


def _evaluate_worker(run_folder: str, barrier: str, me: int, parties: int) -> str:
    torch.set_num_threads(1)
    finished = runs.load_run(run_folder)  # every worker reads metrics.json before any of them writes it
    _barrier(Path(barrier), me, parties)
    evaluation = cfg.EvalConfig(method="pgd", attack=cfg.AttackConfig(eps=0.1, step_size=0.05, steps=1),
                                max_examples=10 + me)
    runs.evaluate_run(finished, evaluation, device="cpu", progress=False)
    return evaluation.name


def _train_worker(root: str, barrier: str, me: int, parties: int, seed: int) -> int:
    torch.set_num_threads(1)
    epochs = []
    _barrier(Path(barrier), me, parties)
    runs.run(one_epoch_source(seed), root=root, device="cpu", progress=False, callback=epochs.append,
             shipped=False)
    return len(epochs)


@pytest.fixture(scope="module")
def workers():
    """Forked worker processes (torch is already imported; each worker uses one thread, as DataLoader's do)."""
    with ProcessPoolExecutor(max_workers=3, mp_context=multiprocessing.get_context("fork")) as pool:
        yield pool


def test_concurrent_evaluations_keep_every_entry(trained_root, tmp_path, workers):
    folder = runs.find_run(tiny_source(), copy_of(trained_root, tmp_path / "runs"), shipped=False)
    (tmp_path / "barrier").mkdir()
    jobs = [workers.submit(_evaluate_worker, str(folder), str(tmp_path / "barrier"), me, 3) for me in range(3)]
    names = [job.result(timeout=300) for job in jobs]
    stored = json.loads((folder / "metrics.json").read_text())
    assert sorted(stored) == sorted(names) and len(set(names)) == 3
    assert not (folder / store.LOCK_FILE).exists() and not list(folder.glob(".*.tmp"))


def test_two_identical_trainings_at_once_train_once(tmp_path, workers):
    (tmp_path / "barrier").mkdir()
    jobs = [workers.submit(_train_worker, str(tmp_path / "runs"), str(tmp_path / "barrier"), me, 2, 7)
            for me in range(2)]
    assert sorted(job.result(timeout=300) for job in jobs) == [0, 1]  # one trained its epoch, one reused it
    folder = runs.run_path(one_epoch_source(7), tmp_path / "runs")
    assert runs.is_finished(folder) and not (folder / store.LOCK_FILE).exists()


# --- integrity ----------------------------------------------------------------------------------

@pytest.fixture
def finished(trained_root, tmp_path) -> Path:
    return runs.find_run(tiny_source(), copy_of(trained_root, tmp_path / "runs"), shipped=False)


@pytest.fixture(scope="module")
def two_runs(trained_root, tmp_path_factory) -> Path:
    """The tiny teacher and a one-epoch run beside it."""
    root = copy_of(trained_root, tmp_path_factory.mktemp("two"))
    runs.run(one_epoch_source(3), root=root, device="cpu", progress=False, shipped=False)
    return root


def test_a_swapped_config_is_refused_naming_the_folder(finished):
    (finished / "config.json").write_text(json.dumps(cfg.to_dict(tiny_source(seed=1))))
    with pytest.raises(runs.RunError) as error:
        runs.load_run(finished)
    assert str(finished) in one_line(error) and "does not match its folder" in str(error.value)
    with pytest.raises(runs.RunError, match="does not match its folder"):
        runs.run(tiny_source(), root=finished.parent, device="cpu", progress=False, shipped=False)


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "empty"])
def test_a_damaged_model_is_not_finished(finished, damage):
    model = finished / runs.MODEL_FILE
    good = model.read_bytes()
    assert runs.is_finished(finished)
    if damage == "truncate":
        model.write_bytes(good[:-100])
    elif damage == "flip a byte":
        middle = len(good) // 2
        model.write_bytes(good[:middle] + bytes([good[middle] ^ 1]) + good[middle + 1:])
    else:
        model.write_bytes(b"")
    assert not runs.is_finished(finished)
    assert runs.find_run(tiny_source(), finished.parent, shipped=False) is None
    with pytest.raises(runs.RunError, match="corrupt"):
        runs.load_run(finished)
    with pytest.warns(UserWarning, match=re.escape(f"skipping {finished}")):
        assert runs.load_runs(finished.parent, include_shipped=False).empty


def _metrics_entry(robust_acc) -> dict:
    return {"pgd": {"clean_acc": 0.9, "robust_acc": robust_acc, "n": 10, "method": "pgd", "label": "PGD-1"}}


@pytest.mark.parametrize("name, content, problem", [
    ("metrics.json", _metrics_entry(-3.0), "robust_acc = -3.0"),
    ("metrics.json", _metrics_entry(1.5), "robust_acc = 1.5"),
    ("metrics.json", _metrics_entry("0.9"), "robust_acc = '0.9'"),
    ("metrics.json", _metrics_entry(True), "robust_acc = True"),
    ("metrics.json", _metrics_entry(float("nan")), "robust_acc = nan"),
    ("metrics.json", {"pgd": {"clean_acc": 0.9}}, "robust_acc = None"),
    ("metrics.json", {"pgd": {"clean_acc": 0.9, "robust_acc": 0.5, "n": -1}}, "n = -1"),
    ("metrics.json", ["pgd"], "not a dict of evaluations"),
    ("metrics.json", "{not json", "not valid JSON"),
    ("history.json", "[1, 2", "not valid JSON"),
    ("history.json", {"epoch": 1}, "not a list of epoch records"),
    ("history.json", [{"epoch": "1"}], "not a list of epoch records"),
    ("config.json", "", "not valid JSON"),
    ("config.json", [], "not a run config"),
    ("config.json", {"kind": "source", "dataset": "digits[0-4]", "arch": "wrn16_1", "colour": 3}, "not a run config"),
    ("config.json", {"kind": "eval"}, "not a run config"),
])
def test_bad_run_files_are_refused_naming_the_file_and_skipped_in_the_table(two_runs, tmp_path, name, content,
                                                                           problem):
    root = copy_of(two_runs, tmp_path / "runs")
    good, bad = (runs.find_run(config, root, shipped=False) for config in (one_epoch_source(3), tiny_source()))
    (bad / name).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(runs.RunError) as error:
        runs.load_run(bad)
    assert str(bad / name) in one_line(error) and problem in str(error.value)
    with pytest.warns(UserWarning, match=re.escape(f"skipping {bad}")) as caught:
        table = runs.load_runs(root, include_shipped=False)
    assert list(table["run"]) == [good.name] and len(caught) == 1


def test_the_shipped_runs_still_load_without_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = runs.load_runs(tmp_path, include_shipped=True)
    folders = sorted(path.parent for path in runs.SHIPPED_RUNS.glob("*/" + runs.MODEL_FILE))
    assert len(folders) >= 1 and set(table["run"]) == {folder.name for folder in folders}
    for folder in folders:
        assert runs.is_finished(folder)
        assert runs.load_run(folder).path == folder


# --- interrupted writes and full disks ----------------------------------------------------------

def test_leftover_temporary_files_are_removed_on_the_next_run(tmp_path):
    config = one_epoch_source(4)
    folder = runs.run_path(config, tmp_path)
    folder.mkdir(parents=True)
    leftovers = [folder / ".checkpoint.pt.abc123.tmp", folder / ".model.pt.x9.tmp", folder / ".config.json.q.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    runs.run(config, root=tmp_path, device="cpu", progress=False, shipped=False)
    assert not list(folder.glob(".*.tmp")) and runs.is_finished(folder)
    leftover = folder / ".metrics.json.k.tmp"  # a kill while an evaluation was recorded
    leftover.write_bytes(b"{")
    runs.record_metric(runs.load_run(folder), "pgd", _metrics_entry(0.5)["pgd"])
    assert not leftover.exists()


def _full_disk(only: str = ""):
    def write_file(path, data):
        if Path(path).name.startswith(only):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        with open(path, "wb") as file:
            file.write(data)
    return write_file


def test_a_full_disk_is_one_line_and_leaves_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "write_file", _full_disk())
    config = one_epoch_source(5)
    with pytest.raises(runs.RunError) as error:
        runs.run(config, root=tmp_path, device="cpu", progress=False, shipped=False)
    path = runs.run_path(config, tmp_path) / "config.json"
    assert one_line(error) == f"no space left on device while writing {path}; free space and rerun — the run resumes"
    assert list(tmp_path.iterdir()) == []


def test_a_disk_full_at_the_last_write_resumes_without_training_again(tmp_path, monkeypatch):
    config = one_epoch_source(6)
    monkeypatch.setattr(store, "write_file", _full_disk(only=".model.pt"))
    with pytest.raises(runs.RunError, match=f"while writing {runs.run_path(config, tmp_path) / 'model.pt'};"):
        runs.run(config, root=tmp_path, device="cpu", progress=False, shipped=False)
    folder = runs.run_path(config, tmp_path)
    assert (folder / runs.CHECKPOINT_FILE).exists() and not list(folder.glob(".*.tmp"))
    monkeypatch.undo()
    resumed = runs.run(config, root=tmp_path, device="cpu", progress=False, shipped=False,
                       callback=lambda record: pytest.fail("trained again"))
    assert [record["epoch"] for record in resumed.history] == [1]


def test_a_full_disk_while_recording_an_evaluation_is_one_line(finished, monkeypatch):
    monkeypatch.setattr(store, "write_file", _full_disk())
    with pytest.raises(runs.RunError, match="no space left on device while writing .*metrics.json"):
        runs.record_metric(runs.load_run(finished), "pgd", _metrics_entry(0.5)["pgd"])
    assert not list(finished.glob(".*.tmp")) and not (finished / "metrics.json").exists()


# --- the runs root ------------------------------------------------------------------------------

def _unwritable(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root writes anywhere: make the check see what another user would
        real = os.access
        monkeypatch.setattr(store.os, "access", lambda path, mode: False if Path(path) == folder else real(path, mode))
    return folder


@pytest.mark.parametrize("make, message", [
    (lambda tmp, mp: 123, "the runs folder 123 is not a path .*; pass a folder name such as 'runs'"),
    (lambda tmp, mp: b"runs", "is not a path"),
    (lambda tmp, mp: "", "the runs folder '' is empty; pass a folder name"),
    (lambda tmp, mp: "runs\0x", "NUL character"),
    (lambda tmp, mp: (tmp / "file").write_text("x") and tmp / "file", "is a file, not a folder"),
    (lambda tmp, mp: (tmp / "file").write_text("x") and tmp / "file" / "runs", "cannot be created: .*file is a file"),
    (lambda tmp, mp: _unwritable(tmp, mp), "is not writable .*refuses writes"),
    (lambda tmp, mp: _unwritable(tmp, mp) / "new" / "runs", "is not writable .*locked refuses writes"),
    (lambda tmp, mp: tmp / ("x" * 300), "too long .*pass a shorter path"),
    (lambda tmp, mp: tmp.joinpath(*["d" * 200] * 20), r"\.\.\. \(\d+ characters\) is too long"),
])
def test_bad_roots_are_refused_with_one_line(tmp_path, monkeypatch, make, message):
    root = make(tmp_path, monkeypatch)
    with pytest.raises(runs.RunError, match=message) as error:
        runs.check_root(root)
    assert repr(os.fspath(root) if isinstance(root, os.PathLike) else root)[:60] in one_line(error)
    with pytest.raises(runs.RunError, match=message):
        runs.run(one_epoch_source(8), root=root, device="cpu", progress=False, shipped=False)


def test_reading_needs_no_write_access_and_the_env_var_is_named(tmp_path, monkeypatch):
    folder = _unwritable(tmp_path, monkeypatch)
    assert runs.check_root(folder, writable=False) == folder and runs.load_runs(folder, include_shipped=False).empty
    assert runs.check_root(tmp_path / "new" / "runs") == tmp_path / "new" / "runs"
    monkeypatch.setenv(store.RUNS_ENV_VAR, "")
    with pytest.raises(runs.RunError, match=r"'' \(from \$CARTL_RUNS\) is empty"):
        runs.check_root()
    for bad in (123, ""):
        with pytest.raises(runs.RunError):
            runs.load_runs(bad)
    shutil.rmtree(folder, ignore_errors=True)


def test_evaluating_on_more_images_than_the_test_split_is_refused(finished):
    run = runs.load_run(finished)
    evaluation = cfg.EvalConfig(attack=TINY_ATTACK, max_examples=10**9)
    with pytest.raises(runs.RunError, match=r"max_examples = 1000000000 is more than the \d+ test images"):
        runs.evaluate_run(run, evaluation, device="cpu", progress=False)
    assert evaluation.name not in runs.load_run(finished).metrics
