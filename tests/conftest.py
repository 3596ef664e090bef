"""Shared fixtures: real 8x8 digits (scikit-learn ships them), two small models trained on them, and Debian's
Fashion-MNIST where a test needs the real files."""

from __future__ import annotations

import os

import pytest
import torch

import cartl_kit as ck
from cartl_kit import config as cfg
from cartl_kit.data import as_float, load_dataset

EPS = 0.1  # attack radius for the 8x8 digits (pixel units)

# A preset for runs in seconds: 8x8 digits 0-4 -> 5-9, one epoch each, PGD-1 training, a 64-image PGD-2 evaluation
TINY_PRESET = cfg.Preset(
    name="tiny", arch="wrn16_1", source_dataset="digits[0-4]", target_dataset="digits[5-9]",
    train_attack=cfg.AttackConfig(eps=0.1, step_size=0.05, steps=1),
    evaluation=cfg.EvalConfig(attack=cfg.AttackConfig(eps=0.1, step_size=0.05, steps=2), max_examples=64),
    source_optim=cfg.OptimConfig(epochs=1, batch_size=128, milestones=()),
    transfer_optim=cfg.OptimConfig(epochs=1, batch_size=128, base_lr=0.05, warmup_epochs=0, milestones=()),
    k=3, lam=0.01, beta=0.6,
)


def pytest_configure(config):
    """Register the ``slow`` marker (tests that take more than about 15 s) unless the configuration already does."""
    if not any(line.split(":")[0].strip() == "slow" for line in config.getini("markers")):
        config.addinivalue_line("markers", "slow: takes more than about 15 s (deselect with -m 'not slow')")


@pytest.fixture
def debian_fashion(monkeypatch):
    """Debian's full Fashion-MNIST (`apt-get install dataset-fashion-mnist`), read from its system folder: a failure
    under CI (.ci/run installs it), a skip elsewhere when it is missing."""
    from cartl_kit import fashion
    monkeypatch.delenv(fashion.FOLDER_ENV_VAR, raising=False)
    if not (fashion.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail("CI installs Debian's dataset-fashion-mnist (.ci/run): apt-get install dataset-fashion-mnist")
        pytest.skip("needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")


class Batches:
    """Minimal re-iterable loader over tensors (seeded shuffling)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64, shuffle: bool = False, seed: int = 0):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.generator) if self.shuffle else torch.arange(len(self.y))
        for start in range(0, len(self.y), self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.x[index], self.y[index]


@pytest.fixture(scope="session")
def digits():
    """(x_train, y_train, x_test, y_test): the kit's fixed split of the 8x8 digits, 1x8x8 in [0, 1], 10 classes."""
    train, test = (load_dataset("digits", split=split) for split in ("train", "test"))
    return as_float(train.images), train.labels, as_float(test.images), test.labels


def _train(digits, step, epochs: int, seed: int = 0) -> ck.WideResNet:
    x_train, y_train, _, _ = digits
    ck.seed_everything(seed)
    model = ck.create_model("wrn16_1", num_classes=10, in_channels=1, mean=(0.3,), std=(0.4,))
    ck.fit(model, Batches(x_train, y_train, shuffle=True, seed=seed), step, ck.OptimConfig(epochs=epochs, base_lr=0.1),
           device="cpu", progress=False)
    return model.eval()


@pytest.fixture(scope="session")
def natural_model(digits) -> ck.WideResNet:
    """WRN-16-1 trained naturally on the digits (about 97 % clean test accuracy)."""
    return _train(digits, ck.natural_step, epochs=6)


@pytest.fixture(scope="session")
def robust_model(digits) -> ck.WideResNet:
    """WRN-16-1 adversarially trained on the digits with PGD-5, eps 0.1."""
    return _train(digits, ck.adversarial_step(attack=ck.AttackConfig(eps=EPS, step_size=EPS / 3, steps=5)), epochs=6)


@pytest.fixture
def tiny_model() -> ck.WideResNet:
    torch.manual_seed(0)
    return ck.create_model("wrn16_1", num_classes=10, in_channels=1)
