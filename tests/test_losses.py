"""FDM and LwF: hand-computed values, reductions, gradients through both branches, bad weights."""

from __future__ import annotations

import math

import pytest
import torch

import cartl_kit as ck
from conftest import EPS


def test_fdm_equals_hand_computed_value():
    clean = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv = torch.tensor([[3.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 3.0]])
    # per-sample L2 distances 5 and 2, d = 4: lam / sqrt(4) * (5 + 2)
    assert ck.fdm_loss(clean, adv, lam=0.5).item() == pytest.approx(0.5 / 2 * 7)
    assert ck.fdm_loss(clean, adv, lam=0.5, reduction="mean").item() == pytest.approx(0.5 / 2 * 3.5)


def test_fdm_uses_the_whole_feature_tensor_for_d():
    clean, adv = torch.zeros(3, 2, 4, 4), torch.ones(3, 2, 4, 4)
    d = 2 * 4 * 4  # each distance is sqrt(d), so lam / sqrt(d) * 3 * sqrt(d) = 3 * lam
    assert ck.fdm_loss(clean, adv, lam=0.01).item() == pytest.approx(0.03)
    assert d == clean[0].numel()


def test_fdm_gradients_flow_through_both_branches():
    clean = torch.randn(4, 8, requires_grad=True)
    adv = torch.randn(4, 8, requires_grad=True)
    ck.fdm_loss(clean, adv, lam=1.0).backward()
    assert clean.grad.abs().sum() > 0 and adv.grad.abs().sum() > 0
    assert torch.allclose(clean.grad, -adv.grad)


def test_fdm_step_trains_the_extractor_through_both_passes(robust_model, digits):
    x, y = digits[0][:32], digits[1][:32]
    model = ck.create_model("wrn16_1", num_classes=10, in_channels=1)
    model.load_state_dict(robust_model.state_dict())
    k = 3
    step = ck.fdm_step(k=k, lam=1.0, attack=ck.AttackConfig(eps=EPS, step_size=EPS / 3, steps=2))
    model.train()
    loss, metrics = step(model, x, y)
    assert metrics["fdm"] > 0 and loss.item() == pytest.approx(metrics["ce"] + metrics["fdm"], rel=1e-5)
    # the FDM term alone reaches the stem: the gradient of the regulariser is not detached
    model.zero_grad()
    torch.manual_seed(0)
    x_adv = ck.pgd_linf(model.eval(), x, y, eps=EPS, step_size=EPS / 3, steps=2)
    model.train()
    split = model.num_blocks - k
    ck.fdm_loss(model.forward_features(x, upto=split), model.forward_features(x_adv, upto=split), lam=1.0).backward()
    assert model.stem.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.blocks[split:].parameters())  # nothing after block L-k


def test_fdm_step_with_zero_lambda_is_adversarial_training(digits):
    x, y = digits[0][:16], digits[1][:16]
    model = ck.create_model("wrn16_1", num_classes=10, in_channels=1).train()
    _, metrics = ck.fdm_step(k=2, lam=0.0, attack=ck.AttackConfig(eps=EPS, step_size=EPS / 3, steps=1))(model, x, y)
    assert metrics["fdm"] == 0.0 and metrics["loss"] == pytest.approx(metrics["ce"])


def test_lwf_equals_hand_computed_value():
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0], [1.0, -3.0]])
    # L1 distances 3 and 4, batch mean 3.5
    loss = ck.lwf_loss(student, teacher, lam=0.1)
    assert loss.item() == pytest.approx(0.35)
    loss.backward()
    assert student.grad.abs().sum() > 0


@pytest.mark.parametrize("lam", [-0.01, math.nan, math.inf, "0.1"])
def test_bad_lambda_is_refused(lam):
    features = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        ck.fdm_loss(features, features, lam=lam)
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        ck.fdm_step(k=2, lam=lam)
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        ck.lwf_loss(features, features, lam=lam)


def test_mismatched_features_and_bad_reduction():
    with pytest.raises(ValueError, match="differ in shape"):
        ck.fdm_loss(torch.zeros(2, 3), torch.zeros(2, 4), lam=0.1)
    with pytest.raises(ValueError, match="reduction must be 'sum'"):
        ck.fdm_loss(torch.zeros(2, 3), torch.zeros(2, 3), lam=0.1, reduction="max")


def test_relative_fdm_is_the_hand_computed_ratio_and_ignores_the_features_scale():
    g = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    by_hand = 0.5 * sum((a - c).norm() / c.norm() for a, c in zip(adv, clean))
    assert ck.fdm_loss(clean, adv, lam=0.5, distance="relative").item() == pytest.approx(by_hand.item(), rel=1e-6)
    for scale in (1e-3, 7.0):  # the absolute distance shrinks with the features; the relative one does not
        assert ck.fdm_loss(scale * clean, scale * adv, lam=0.5, distance="relative").item() == pytest.approx(by_hand.item(), rel=1e-5)
        assert ck.fdm_loss(scale * clean, scale * adv, lam=0.5).item() == pytest.approx(
            scale * ck.fdm_loss(clean, adv, lam=0.5).item(), rel=1e-5)
    scale = torch.ones((), requires_grad=True)  # so no gradient asks the features to shrink
    ck.fdm_loss(scale * clean, scale * adv, lam=0.5, distance="relative").backward()
    assert abs(scale.grad.item()) < 1e-5
    with pytest.raises(ValueError, match="distance must be 'absolute'"):
        ck.fdm_loss(clean, adv, lam=0.5, distance="cosine")
    with pytest.raises(ValueError, match="distance must be 'absolute'"):
        ck.fdm_step(k=2, lam=0.1, distance="cosine")


def test_an_fdm_rel_teacher_trains_with_the_relative_distance(tmp_path):
    from cartl_kit import config as cfg, runs
    attack = cfg.AttackConfig(eps=0.1, step_size=0.05, steps=1)
    optim = cfg.OptimConfig(epochs=1, batch_size=128, milestones=())
    made = {}
    for method in ("fdm", "fdm-rel"):
        config = cfg.SourceConfig(dataset="digits[0-4]", arch="wrn16_1", method=method, k=4, lam=0.01, attack=attack,
                                  optim=optim)
        made[method] = runs.run(config, root=tmp_path, device="cpu", progress=False, shipped=False)
    assert made["fdm-rel"].path.name.startswith("fdm-rel-k4-lam0.01-")
    # the same seed, data and first step: only the FDM term's distance differs (relative ≈ λ·‖Δh‖/‖h‖ per example)
    assert made["fdm-rel"].history[0]["fdm"] != made["fdm"].history[0]["fdm"]
    with pytest.raises(ValueError, match="'fdm-rel' needs k"):
        cfg.SourceConfig(dataset="digits[0-4]", arch="wrn16_1", method="fdm-rel")
