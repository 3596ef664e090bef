"""Clean/robust accuracy and the sanity checks that refuse misleading evaluations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cartl_kit as ck
from conftest import EPS, Batches


def test_accuracy_matches_a_manual_count(natural_model, digits):
    x, y = digits[2], digits[3]
    manual = (natural_model(x).argmax(1) == y).float().mean().item()
    assert ck.accuracy(natural_model, Batches(x, y, batch_size=50), device="cpu") == pytest.approx(manual)


def test_robust_result_fields_and_max_examples(robust_model, digits):
    result = ck.robust_accuracy(robust_model, Batches(digits[2], digits[3], batch_size=64),
                                attack=ck.AttackConfig(eps=EPS, step_size=EPS / 4, steps=5), max_examples=100,
                                device="cpu", progress=False)
    assert result.n == 100 and result.steps == 5 and result.eps == EPS and result.attack == "pgd_linf"
    assert 0 < result.robust_acc <= result.clean_acc <= 1
    assert "robust" in str(result) and result.as_dict()["n"] == 100


def test_training_mode_is_refused(natural_model, digits):
    natural_model.train()
    try:
        with pytest.raises(ck.SanityCheckError, match="training mode; call model.eval"):
            ck.robust_accuracy(natural_model, Batches(digits[2], digits[3]),
                               attack=ck.AttackConfig(eps=EPS, step_size=0.02, steps=1), progress=False)
    finally:
        natural_model.eval()


def test_a_batchnorm_in_training_mode_is_refused(natural_model, digits):
    natural_model.blocks[3].bn1.train()
    try:
        with pytest.raises(ck.SanityCheckError, match="BatchNorm layer 'blocks.3.bn1'"):
            ck.accuracy(natural_model, Batches(digits[2], digits[3]))
    finally:
        natural_model.eval()


@pytest.mark.parametrize("head, message", [(nn.Softmax(dim=1), "probabilities"), (nn.LogSoftmax(dim=1), "log-probabilities")])
def test_probability_outputs_are_refused(natural_model, digits, head, message):
    model = nn.Sequential(natural_model, head).eval()
    with pytest.raises(ck.SanityCheckError, match=message):
        ck.accuracy(model, Batches(digits[2], digits[3]))


class Quantised(nn.Module):
    """Rounds its input to 4 grey levels without a straight-through gradient: masks gradients."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 3) / 3)


def test_gradient_masking_is_refused(natural_model, digits):
    with pytest.raises(ck.SanityCheckError, match="input gradient is zero"):
        ck.robust_accuracy(Quantised(natural_model).eval(), Batches(digits[2], digits[3]),
                           attack=ck.AttackConfig(eps=EPS, step_size=0.02, steps=5), progress=False)


def test_empty_loader_is_refused(natural_model):
    with pytest.raises(ValueError, match="no examples"):
        ck.accuracy(natural_model, [])


def test_batch_seeds_are_distinct_32_bit_and_batch_0_keeps_the_seed():
    from cartl_kit.evaluate import batch_seed
    seeds = [batch_seed(7, index) for index in range(10_000)]
    assert seeds[0] == 7 and len(set(seeds)) == len(seeds) and all(0 <= s < 2 ** 32 for s in seeds)
    with pytest.raises(ValueError, match="seed in"):
        batch_seed(-1, 0)


@pytest.mark.parametrize("method", ["pgd", "ensemble"])
def test_an_evaluation_split_into_runs_of_batches_adds_up_to_the_whole(robust_model, digits, method):
    """Random starts seeded per batch: the batches in two parts (as DDP ranks take them) give the same counts."""
    from cartl_kit.config import EvalConfig
    from cartl_kit.ensemble import EnsembleConfig
    from cartl_kit.measure import combine, measure
    evaluation = EvalConfig(attack=ck.AttackConfig(eps=2 * EPS, step_size=EPS / 4, steps=2), method=method,
                            ensemble=EnsembleConfig(guard_steps=2, guard_restarts=1, apgd_ce_steps=2, apgd_t_steps=1,
                                                    n_targets=1))
    x, y = digits[2][:60], digits[3][:60]
    whole = measure(robust_model, Batches(x, y, batch_size=16), evaluation, device="cpu", progress=False, seed=3)
    parts = [measure(robust_model, Batches(x[:32], y[:32], batch_size=16), evaluation, device="cpu", progress=False,
                     seed=3),
             None,  # a rank with no batch
             measure(robust_model, Batches(x[32:], y[32:], batch_size=16), evaluation, device="cpu", progress=False,
                     seed=3, first_batch=2)]
    assert combine(parts, evaluation) == whole
    assert whole["n"] == 60 and 0 < whole["robust_acc"] < whole["clean_acc"]
