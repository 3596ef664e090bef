"""APGD, the ensemble (the kit's headline robust accuracy), its records, and the sentences made from results."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

import cartl_kit as ck
from cartl_kit import config as cfg
from cartl_kit.apgd import apgd, apgd_targeted, checkpoints, dlr_loss, target_classes
from cartl_kit.ensemble import CLEAN, ROBUST, EnsembleConfig, ensemble_accuracy, worst_case
from cartl_kit.findings import attack_findings, claim_checked, ordering
from conftest import EPS, Batches

SMALL = EnsembleConfig(guard_steps=5, guard_restarts=2, apgd_ce_steps=10, apgd_t_steps=5, n_targets=2)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_checkpoints_follow_croce_and_hein():
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10)[:3] == [0, 3, 5]


def test_dlr_loss_is_invariant_to_the_scale_and_shift_of_the_logits():
    torch.manual_seed(0)
    z, y, t = torch.randn(32, 10), torch.randint(0, 10, (32,)), torch.randint(0, 10, (32,))
    for target in (None, t):
        base = dlr_loss(z, y, target)
        assert torch.allclose(dlr_loss(7.0 * z + 3.0, y, target), base, atol=1e-5)
    with pytest.raises(ValueError, match="at least 4 classes"):
        dlr_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long))


@pytest.mark.parametrize("kind", ["ce", "dlr", "targeted"])
def test_apgd_stays_in_the_ball_and_what_it_calls_broken_is_misclassified(robust_model, digits, kind):
    x, y = digits[2][:96], digits[3][:96]
    if kind == "targeted":
        x_adv, broken = apgd_targeted(robust_model, x, y, eps=2 * EPS, steps=10, n_targets=2, generator=_gen())
    else:
        x_adv, broken = apgd(robust_model, x, y, eps=2 * EPS, steps=10, loss=kind, generator=_gen())
    assert (x_adv - x).abs().max() <= 2 * EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        wrong = robust_model(x_adv).argmax(1) != y
    assert wrong[broken].all()  # every example it counts as broken has a misclassified point in the ball
    assert broken.any() and not broken.all()


def test_apgd_beats_plain_pgd_of_the_same_budget_and_retires_only_the_active(robust_model, digits):
    x, y = digits[2], digits[3]
    _, pgd_broken = ck.pgd_linf_any(robust_model, x, y, eps=2 * EPS, step_size=2 * EPS / 10, steps=10, generator=_gen())
    _, apgd_broken = apgd(robust_model, x, y, eps=2 * EPS, steps=10, generator=_gen())
    assert apgd_broken.float().mean() >= pgd_broken.float().mean() - 0.01
    active = torch.arange(len(y)) % 2 == 0
    _, half = apgd(robust_model, x, y, eps=2 * EPS, steps=10, generator=_gen(), active=active)
    assert half[~active].all()  # the inactive count as broken, as the cascade needs


def test_apgd_refuses_training_mode_and_unknown_losses(tiny_model, digits):
    x, y = digits[2][:4], digits[3][:4]
    with pytest.raises(ValueError, match="eval mode"):
        apgd(tiny_model.train(), x, y, eps=0.1)
    with pytest.raises(ValueError, match="unknown APGD loss 'l2'"):
        apgd(tiny_model.eval(), x, y, eps=0.1, loss="l2")
    with pytest.raises(ValueError, match="n_targets"):
        apgd_targeted(tiny_model.eval(), x, y, eps=0.1, n_targets=0)


def test_targets_are_the_most_likely_wrong_classes(robust_model, digits):
    x, y = digits[2][:32], digits[3][:32]
    targets = target_classes(robust_model, x, y, 3)
    assert len(targets) == 3 and all((t != y).all() for t in targets)
    logits = robust_model(x).detach()
    first = logits.gather(1, targets[0][:, None]).squeeze(1)
    second = logits.gather(1, targets[1][:, None]).squeeze(1)
    assert (first >= second).all()


def test_the_cascade_finds_the_same_robust_examples_as_every_attack_on_every_example(robust_model, digits):
    x, y = digits[2][:128], digits[3][:128]
    broken, by = worst_case(robust_model, x, y, eps=2 * EPS, config=SMALL, generator=_gen())
    full, every = worst_case(robust_model, x, y, eps=2 * EPS, config=SMALL, generator=_gen(), cascade=False)
    assert torch.equal(broken, full)
    assert [b == ROBUST for b in by] == (~broken).tolist()
    for first, all_of in zip(by, every):  # the cascade names the first attack of those that broke it
        assert first == all_of.split("|")[0]
    assert {b for b in by} - {CLEAN, ROBUST} <= set(SMALL.attacks)


class Saturated(nn.Module):
    """A masked model: the same decisions, but logits scaled so far that cross-entropy gradients vanish in float32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return 1e4 * self.model(x)


def test_the_ensemble_sees_through_a_softmax_saturated_model_that_fools_pgd(robust_model, digits):
    x, y = digits[2][:128], digits[3][:128]
    masked = Saturated(robust_model).eval()
    _, pgd_broken = ck.pgd_linf_any(masked, x, y, eps=2 * EPS, step_size=2 * EPS / 8, steps=20, generator=_gen())
    strong, _ = worst_case(masked, x, y, eps=2 * EPS, config=SMALL, generator=_gen())
    honest, _ = worst_case(robust_model, x, y, eps=2 * EPS, config=SMALL, generator=_gen())
    pgd_robust, strong_robust = 1 - pgd_broken.float().mean(), 1 - strong.float().mean()
    assert pgd_robust - strong_robust > 0.2  # CE-PGD is fooled by the saturation ...
    assert abs(strong_robust - (1 - honest.float().mean())) < 0.1  # ... the ensemble (DLR) is not


def test_ensemble_accuracy_counts_each_attack_and_is_reproducible(robust_model, digits):
    loader = Batches(digits[2][:150], digits[3][:150], batch_size=64)
    first = ensemble_accuracy(robust_model, loader, eps=2 * EPS, config=SMALL, generator=_gen(), progress=False)
    again = ensemble_accuracy(robust_model, loader, eps=2 * EPS, config=SMALL, generator=_gen(), progress=False)
    assert first == again and first.n == 150 and len(first.broken_by) == 150
    assert list(first.after) == list(SMALL.attacks)
    left = list(first.after.values())
    assert first.clean_acc >= left[0] and left == sorted(left, reverse=True) and left[-1] == first.robust_acc
    pgd = ck.robust_accuracy(robust_model, loader, attack=ck.AttackConfig(eps=2 * EPS, step_size=2 * EPS / 4, steps=10),
                             progress=False, generator=_gen())
    assert first.robust_acc <= pgd.robust_acc + 0.02
    assert "APGD-T-5x2" in str(first) and json.dumps(first.as_dict())


def test_eval_config_names_its_attack_and_survives_json():
    quick = cfg.get_preset("quick").evaluation
    assert quick.method == "ensemble" and quick.name.startswith("ens-") and quick.short == "ensemble"
    assert quick.label.startswith("ensemble (PGD-") and "APGD-CE" in quick.label
    pgd = quick.as_pgd()
    assert pgd.name == "pgd20-eps0.3-step0.04-nall" and pgd.label == "PGD-20"  # the shipped PGD-20 key is kept
    assert cfg.from_json(cfg.to_json(quick)) == quick
    with pytest.raises(ValueError, match="unknown evaluation method 'fgsm'"):
        cfg.EvalConfig(method="fgsm")
    with pytest.raises(ValueError, match="guard_restarts must be an integer >= 1"):
        EnsembleConfig(guard_restarts=0)
    with pytest.raises(ValueError, match="max_examples"):
        cfg.EvalConfig(max_examples=0)
    assert EnsembleConfig().doubled().apgd_ce_steps == 2 * EnsembleConfig().apgd_ce_steps


def test_findings_say_only_what_the_numbers_show():
    table = pd.DataFrame([{"label": "vanilla TL", "robust_acc": 0.39, "pgd_acc": 0.48},
                          {"label": "NEFT", "robust_acc": 0.43, "pgd_acc": 0.55},
                          {"label": "CARTL", "robust_acc": 0.17, "pgd_acc": 0.61}])
    assert ordering(table) == "NEFT (43.0 %) > vanilla TL (39.0 %) > CARTL (17.0 %)"
    lines = attack_findings(table, headline="the ensemble", pgd="PGD-20")
    assert any("PGD-20 says CARTL, the ensemble says NEFT" in line for line in lines)
    flagged = [line for line in lines if "overstates" in line]
    assert len(flagged) == 3 and "CARTL by 44.0 points" in flagged[-1]
    assert "the claim does not show here" in claim_checked("CARTL is more robust than NEFT", table, "CARTL", "NEFT")
    assert claim_checked("NEFT beats vanilla", table, "NEFT", "vanilla TL").endswith("— the claim shows here.")
    sampled = table.assign(n=500)  # on 500 images a 4-point gap is within noise, a 26-point gap is not
    assert claim_checked("NEFT beats vanilla", sampled, "NEFT", "vanilla TL").endswith(
        "(+4.0 points, within noise (2 s.e. ≈ 6.2)) — the direction shows here, but within noise.")
    assert claim_checked("CARTL beats NEFT", sampled, "CARTL", "NEFT").endswith("— the claim does not show here.")
    assert "Measured robust accuracy under the ensemble: CARTL 17.0 %" in claim_checked(
        "CARTL beats NEFT", sampled, "CARTL", "NEFT", name="robust accuracy under the ensemble")
    agree = table.assign(pgd_acc=table["robust_acc"] + 0.01)
    assert not any("disagree" in line or "overstates" in line for line in attack_findings(agree))


def test_a_claim_is_never_judged_on_a_run_at_chance():
    table = pd.DataFrame([{"method_name": "vanilla", "clean_acc": 0.74, "robust_acc": 0.45},
                          {"method_name": "LwF", "clean_acc": 0.74, "robust_acc": 0.01},
                          {"method_name": "CARTL", "clean_acc": 0.16, "robust_acc": 0.16}])  # 5 classes: chance 20 %
    said = claim_checked("CARTL beats LwF", table, "CARTL", "LwF", label="method_name", chance=0.2)
    assert "Not judged here: CARTL is at chance (16.0 % clean, chance 20.0 %)" in said and "shows" not in said
    assert claim_checked("vanilla beats LwF", table, "vanilla", "LwF", label="method_name",
                         chance=0.2).endswith("— the claim shows here.")
