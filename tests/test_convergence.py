"""The convergence and sanity report: sound models pass, gradient-masked and input-blind models are flagged."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cartl_kit.attacks import pgd_linf_any
from cartl_kit.attacks import margin_loss, pgd_trace
from cartl_kit.convergence import Grid, convergence_report, format_report
from cartl_kit.ensemble import EnsembleConfig
from conftest import EPS

TINY = EnsembleConfig(guard_steps=5, guard_restarts=1, apgd_ce_steps=5, apgd_t_steps=5, n_targets=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: on a busy 2-core CPU one thread is many times faster than two (no OpenMP barriers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def linear(digits) -> nn.Module:
    """Softmax regression on the 8x8 digits (about 97 % test accuracy): a sound model, on which the attacks converge."""
    x_train, y_train, _, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        optimiser.step()
    return model.eval()


class Quantised(nn.Module):
    """Rounds the input to 5 grey levels first: the input gradient is exactly zero (gradient masking)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


class Saturated(nn.Module):
    """Softmax, then times 1e4: the predictions are unchanged but cross-entropy gradients vanish."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 1e4 * self.inner(x).softmax(1)


class Constant(nn.Module):
    """Ignores its input: the same logits for every image, favouring ``label``."""

    def __init__(self, label: int, classes: int = 10):
        super().__init__()
        self.logits = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(label), classes).float() * 5)

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


def test_margin_loss_is_the_summed_cw_margin():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    loss = margin_loss(logits, y)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx((1 - 3) + (5 - 2))


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_trace_is_any_iterate_pgd(linear, digits, loss):
    x, y = digits[2][:64], digits[3][:64]
    broken_at = pgd_trace(linear, x, y, eps=EPS, step_size=EPS / 4, steps=10, loss=loss,
                          generator=torch.Generator().manual_seed(1))
    assert broken_at.min() >= 0 and broken_at.max() <= 11 and (broken_at == 11).any() and (broken_at <= 10).any()
    if loss == "ce":  # the same trajectory as pgd_linf_any: broken within k steps = a k-step pgd_linf_any
        for k in (3, 10):
            _, broken = pgd_linf_any(linear, x, y, eps=EPS, step_size=EPS / 4, steps=k,
                                     generator=torch.Generator().manual_seed(1))
            assert torch.equal(broken, broken_at <= k)


def test_a_sound_model_is_converged_and_not_flagged(linear, digits):
    x, y = digits[2][:100], digits[3][:100]
    report = convergence_report(linear, x, y, eps=EPS, quick=True, config=TINY, seed=0)
    assert report.flags == [] and report.converged
    assert all(row["ok"] for row in report.sanity)
    assert report.eps_sweep[-1]["eps"] == 1.0 and report.eps_sweep[-1]["robust_acc"] == 0.0
    assert 0 < report.headline_acc < report.clean_acc and report.zero_grad_frac == 0
    assert report.all_attacks_acc <= min(r["robust_acc"] for r in report.convergence)
    data = report.as_dict()
    json.dumps(data)
    again = convergence_report(linear, x, y, eps=EPS, quick=True, config=TINY, seed=0).as_dict()
    assert {**data, "seconds": 0} == {**again, "seconds": 0}  # deterministic


def test_the_sweeps_are_monotone_in_steps_and_restarts(linear, digits):
    grid = Grid(steps=(2, 5, 10), step_fractions=(0.1, 1.0), step_sweep_steps=5, restarts=(1, 2, 3), restart_steps=5,
                apgd_steps=(3, 6), apgd_restart_steps=4, eps_multiples=(0.5, 1.0), eps_steps=5)
    report = convergence_report(linear, digits[2][:60], digits[3][:60], eps=EPS, grid=grid, config=TINY)
    for family, sweep, n in [("PGD-CE", "steps", 3), ("PGD-margin", "restarts", 3), ("APGD-CE", "steps", 2),
                             ("APGD-CE", "restarts", 3), ("PGD-margin", "step size", 2)]:
        rows = [row for row in report.convergence if row["family"] == family and row["sweep"] == sweep]
        assert len(rows) == n and all(row["attack"].startswith(family) for row in rows)
        if sweep != "step size":  # more steps (any-iterate) or more restarts never break fewer examples
            assert all(a["robust_acc"] >= b["robust_acc"] for a, b in zip(rows, rows[1:])), rows
    assert [row["eps"] for row in report.eps_sweep] == [0.05, 0.1, 1.0]
    assert report.all_attacks_acc <= min(row["robust_acc"] for row in report.convergence)


def test_a_quantised_model_is_flagged_and_not_converged(linear, digits):
    x, y = digits[2][:100], digits[3][:100]
    report = convergence_report(Quantised(linear).eval(), x, y, eps=EPS, quick=True, config=TINY, surrogate=linear)
    flags = " | ".join(report.flags)
    assert not report.converged
    assert "zero gradient" in flags and "eps -> large" in flags and "transfer PGD-CE" in flags
    assert report.headline_acc > 0.5  # white-box attacks barely work (on the linear model itself: about 15 %)


def test_a_saturated_softmax_is_flagged_as_gradient_masking(linear, digits):
    x, y = digits[2][:100], digits[3][:100]
    report = convergence_report(Saturated(linear).eval(), x, y, eps=EPS, quick=True, config=TINY)
    assert any(flag.startswith("gradient masking suspected") for flag in report.flags), report.flags
    assert report.zero_grad_frac > 0.5 and not report.converged


def test_an_input_blind_model_is_flagged_at_large_eps(digits):
    x = digits[2][:40]
    y = torch.full((40,), 3)
    report = convergence_report(Constant(3).eval(), x, y, eps=EPS, quick=True, config=TINY)
    assert report.eps_sweep[-1]["robust_acc"] == 1.0
    assert any(flag.startswith("eps -> large") for flag in report.flags) and not report.converged


def test_format_report_names_the_attack_in_every_row(linear, digits):
    report = convergence_report(linear, digits[2][:50], digits[3][:50], eps=EPS, quick=True, config=TINY, surrogate=linear)
    text = format_report(report)
    names = {row["attack"] for row in report.convergence + report.sanity + report.eps_sweep}
    rows = [line for line in text.split("\n\n", 1)[1].splitlines()
            if line.startswith("  ") and not line.strip().startswith(("attack ", "check "))]
    assert len(rows) == len(report.convergence) + len(report.sanity) + len(report.eps_sweep)
    for line in rows:
        assert any(name in line for name in names), line
    assert report.headline_attack in text and ("NOT converged" in text) != report.converged


@pytest.mark.slow
def test_the_shipped_fdm_teacher_is_flagged_as_gradient_masked():
    from cartl_kit.data import load_dataset, sample
    from cartl_kit.runs import SHIPPED_RUNS, load_run
    model = load_run(SHIPPED_RUNS / "fdm-k4-lam0.01-wrn16_1-mnist5k_0-4_-s0-cd664a656f").model.eval()
    data = sample(load_dataset("mnist5k[0-4]", split="test"), 64, seed=0)
    grid = Grid(attacks=("PGD-CE",), steps=(10,), step_fractions=(1.0,), step_sweep_steps=10, restarts=(1,),
                restart_steps=10, eps_multiples=(), eps_steps=5)
    report = convergence_report(model, data.images.float() / 255, data.labels, eps=0.3, grid=grid, config=TINY)
    assert any(flag.startswith("gradient masking suspected") for flag in report.flags), report.flags
    small = next(row for row in report.sanity if row["check"].startswith("(d)"))
    assert small["value"] - report.headline_acc > 0.1  # PGD-20 with step eps/7.5 overstates by far (about 14 points)
