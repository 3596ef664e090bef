"""A training run killed (SIGKILL) at seeded random moments resumes to the bit-identical model.

Each run is a child forked from this process (everything imported, the data loaded once) that trains
with one thread, so the uninterrupted reference and the run that is killed and resumed compute the same
floating-point operations in the same order.
"""

from __future__ import annotations

import multiprocessing
import random
import signal
import time
from pathlib import Path

import torch

from cartl_kit import config as cfg
from cartl_kit import runs
from cartl_kit.data import load_dataset

CONFIG = cfg.SourceConfig(dataset="digits[0-4]", arch="wrn16_1", attack=cfg.AttackConfig(eps=0.1, step_size=0.05, steps=1),
                          optim=cfg.OptimConfig(epochs=4, batch_size=32, milestones=(0.5,)))


def _train(root: Path) -> None:
    torch.set_num_threads(1)  # as DataLoader workers do after a fork
    runs.run(CONFIG, root=root, device="cpu", progress=False, shipped=False)


def _start(root: Path) -> multiprocessing.Process:
    load_dataset(CONFIG.dataset, split="train")  # imports the loaders here, once, not in every child
    runs.environment(torch.device("cpu"))
    child = multiprocessing.get_context("fork").Process(target=_train, args=(root,))
    child.start()
    return child


def _train_to_the_end(root: Path) -> float:
    child = _start(root)
    start = time.monotonic()
    child.join(timeout=300)
    assert child.exitcode == 0
    return time.monotonic() - start


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / runs.MODEL_FILE, map_location="cpu", weights_only=True)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_kills_at_random_moments_resume_to_the_identical_model(tmp_path):
    seconds = _train_to_the_end(tmp_path / "straight")
    reference = _weights(runs.run_path(CONFIG, tmp_path / "straight"))
    root = tmp_path / "killed"
    folder = runs.run_path(CONFIG, root)
    draw = random.Random(18)
    interrupted = []
    for _ in range(4):
        child = _start(root)
        time.sleep(draw.uniform(0.05, 0.5) * seconds)
        child.kill()  # SIGKILL: no handler, no cleanup
        child.join()
        interrupted.append(child.exitcode == -signal.SIGKILL and not runs.is_finished(folder))
        if runs.is_finished(folder):  # it may have looked finished only once it was
            assert _same(_weights(folder), reference)
        else:
            assert runs.find_run(CONFIG, root, shipped=False) is None
    assert any(interrupted), "no kill landed before the run finished; the test checked nothing"
    _train_to_the_end(root)
    assert _same(_weights(folder), reference)
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "env.json", "history.json", "model.pt"]
    straight = runs.load_run(runs.run_path(CONFIG, tmp_path / "straight")).history
    resumed = runs.load_run(folder).history
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in straight]
