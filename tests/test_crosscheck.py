"""Cross-checks of the kit's attacks against reference implementations, on a shipped model and real data.

- the kit's APGD-CE and APGD-T (``cartl_kit.apgd``) against pyautoattack's (fra31/auto-attack, through
  ``cartl_kit.autoattack``), on the same points with the same budgets: the robust accuracies agree
  within 1.5 points (different random starts, so not per example);
- the kit's ensemble (default ``EnsembleConfig``) against foolbox's ``LinfPGD`` (100 steps, step 0.04,
  worst of 2 random restarts per example): the ensemble is never weaker by more than 0.5 point.

The model is the quick preset's shipped AT teacher (WRN-16-1, MNIST digits 0-4, 5 classes, eps 0.3), on a
seeded sample of its test split (200 images for APGD, 64 for the ensemble). Budgets are reduced (20 APGD
iterations, 2 targets) to keep the module fast on a CPU; ``bench/eval_ensemble.py`` runs the full ones.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pyautoattack")
fb = pytest.importorskip("foolbox")

from cartl_kit.apgd import apgd, apgd_targeted  # noqa: E402
from cartl_kit.autoattack import autoattack_accuracy  # noqa: E402
from cartl_kit.data import as_float, load_dataset, sample  # noqa: E402
from cartl_kit.ensemble import EnsembleConfig, worst_case  # noqa: E402
from cartl_kit.runs import SHIPPED_RUNS, load_run  # noqa: E402

EPS = 0.3
AT_TEACHER = "at-wrn16_1-mnist5k_0-4_-s0-e237b6eece"
N_APGD, N_PGD = 200, 64  # test images (seeded samples: the split is ordered by class)
ITERS, TARGETS = 20, 2  # the reduced APGD budgets, the same on both sides


def _points(model, n: int, seed: int):
    test = sample(load_dataset("mnist5k[0-4]", split="test"), n, seed=seed)
    x, y = as_float(test.images), test.labels
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    return model, x, y, correct


@pytest.fixture(scope="module")
def at_model():
    return load_run(SHIPPED_RUNS / AT_TEACHER).model.eval()


@pytest.fixture(scope="module")
def teacher(at_model):
    return _points(at_model, N_APGD, seed=1)


def _percent(mask: torch.Tensor) -> float:
    return 100 * mask.float().mean().item()


def test_autoattack_wrapper_caps_targets_and_restores_state(teacher):
    model, x, y, correct = teacher
    model.train()
    state = torch.random.get_rng_state()
    result = autoattack_accuracy(model, x[:8], y[:8], eps=EPS, version="custom", attacks=("apgd-t",), n_iter=2,
                                 n_targets=9)
    assert model.training and torch.equal(torch.random.get_rng_state(), state)
    model.eval()
    assert result["n_targets"] == 4 and result["n"] == 8 and len(result["robust"]) == 8
    assert result["attack"] == "AutoAttack custom: apgd-t (pyautoattack 0.2.0)"
    assert result["clean_acc"] == pytest.approx(_percent(correct[:8]) / 100)
    assert all(r <= c for r, c in zip(result["robust"], correct[:8].tolist()))  # robust implies correct clean
    with pytest.raises(ValueError, match="unknown"):
        autoattack_accuracy(model, x[:8], y[:8], eps=EPS, version="custom", attacks=("pgd",))


def test_kit_apgd_ce_agrees_with_pyautoattack(teacher):
    model, x, y, correct = teacher
    _, broken = apgd(model, x, y, eps=EPS, steps=ITERS, loss="ce", generator=torch.Generator().manual_seed(0),
                     active=correct)
    kit = _percent(correct & ~broken)
    reference = 100 * autoattack_accuracy(model, x, y, eps=EPS, version="custom", attacks=("apgd-ce",),
                                          n_iter=ITERS, seed=0)["robust_acc"]
    assert abs(kit - reference) <= 1.5, f"kit APGD-CE {kit:.1f} %, pyautoattack {reference:.1f} %"


def test_kit_apgd_t_agrees_with_pyautoattack(teacher):
    model, x, y, correct = teacher
    _, broken = apgd_targeted(model, x, y, eps=EPS, steps=ITERS, n_targets=TARGETS,
                              generator=torch.Generator().manual_seed(0), active=correct)
    kit = _percent(correct & ~broken)
    reference = 100 * autoattack_accuracy(model, x, y, eps=EPS, version="custom", attacks=("apgd-t",),
                                          n_iter=ITERS, n_targets=TARGETS, seed=0)["robust_acc"]
    assert abs(kit - reference) <= 1.5, f"kit APGD-T {kit:.1f} %, pyautoattack {reference:.1f} %"


def test_kit_ensemble_is_not_weaker_than_foolbox_pgd(at_model):
    model, x, y, correct = _points(at_model, N_PGD, seed=2)
    broken, _ = worst_case(model, x, y, eps=EPS, config=EnsembleConfig(), generator=torch.Generator().manual_seed(0))
    kit = _percent(~broken)
    # foolbox on the clean-correct points only (the others count as broken anyway); worst of 2 random restarts
    index = torch.nonzero(correct).squeeze(1)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cpu")
    attack = fb.attacks.LinfPGD(steps=100, abs_stepsize=0.04, random_start=True)
    torch.manual_seed(0)
    hit = torch.zeros(len(index), dtype=torch.bool)
    for _ in range(2):
        hit |= attack(fmodel, x[index], y[index], epsilons=EPS)[2]
    held = torch.zeros_like(correct)
    held[index[~hit]] = True
    reference = _percent(held)
    assert kit <= reference + 0.5, f"kit ensemble {kit:.1f} %, foolbox PGD-100x2 {reference:.1f} %"
