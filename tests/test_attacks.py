"""PGD and FGSM: constraints, strength, purity, and agreement with foolbox's LinfPGD."""

from __future__ import annotations

import pytest
import torch

import cartl_kit as ck
from conftest import EPS, Batches


@pytest.mark.parametrize("eps", [EPS, 8 / 255, 0.3, 1.0])
@pytest.mark.parametrize("attack", ["pgd", "pgd_no_start", "fgsm"])
def test_adversarial_examples_stay_in_the_ball_and_the_box(natural_model, digits, eps, attack):
    x, y = digits[2][:64], digits[3][:64]
    if attack == "fgsm":
        x_adv = ck.fgsm(natural_model, x, y, eps=eps)
    else:
        x_adv = ck.pgd_linf(natural_model, x, y, eps=eps, step_size=eps / 4, steps=5, random_start=attack == "pgd")
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any()


def test_pgd_lowers_accuracy_far_more_than_random_noise(natural_model, digits):
    x, y, eps = digits[2], digits[3], 2 * EPS
    clean = (natural_model(x).argmax(1) == y).float().mean().item()
    noise = (x + eps * torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)).mul(2).sub(1)).clamp(0, 1)
    noisy = (natural_model(noise).argmax(1) == y).float().mean().item()
    x_adv = ck.pgd_linf(natural_model, x, y, eps=eps, step_size=eps / 4, steps=10)
    attacked = (natural_model(x_adv).argmax(1) == y).float().mean().item()
    assert clean > 0.9
    assert clean - noisy < 0.1  # noise at the corners of the same ball barely hurts
    assert noisy - attacked > 0.5  # PGD does


def test_pgd_is_pure(natural_model, digits):
    x, y = digits[2][:16], digits[3][:16]
    natural_model.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in natural_model.state_dict().items()}
    x_copy = x.clone()
    ck.pgd_linf(natural_model, x, y, eps=EPS, step_size=0.02, steps=3)
    assert not natural_model.training
    assert all(p.grad is None for p in natural_model.parameters())
    assert all(torch.equal(before[k], v) for k, v in natural_model.state_dict().items())
    assert torch.equal(x, x_copy)


def test_pgd_is_reproducible_with_a_generator(natural_model, digits):
    x, y = digits[2][:16], digits[3][:16]
    runs = [ck.pgd_linf(natural_model, x, y, eps=EPS, step_size=0.02, steps=2, generator=torch.Generator().manual_seed(3))
            for _ in range(2)]
    assert torch.equal(*runs)


def test_zero_steps_without_random_start_returns_the_input(natural_model, digits):
    x, y = digits[2][:8], digits[3][:8]
    assert torch.equal(ck.pgd_linf(natural_model, x, y, eps=EPS, step_size=0.02, steps=0, random_start=False), x)


def test_pgd_agrees_with_foolbox_linf_pgd(robust_model, digits):
    """The paper's evaluator (foolbox LinfPGD, same eps/step/steps/random start) within 2 points."""
    fb = pytest.importorskip("foolbox")
    x, y = digits[2], digits[3]
    eps, steps, step_size = 1.5 * EPS, 20, EPS / 4  # a larger ball than trained for: robust accuracy well inside (0, 1)
    torch.manual_seed(0)
    ours = ck.robust_accuracy(robust_model, Batches(x, y, batch_size=128),
                              attack=ck.AttackConfig(eps=eps, step_size=step_size, steps=steps),
                              device="cpu", progress=False)
    attack = fb.attacks.LinfPGD(steps=steps, abs_stepsize=step_size, random_start=True)
    _, clipped, success = attack(fb.PyTorchModel(robust_model, bounds=(0, 1)), x, y, epsilons=eps)
    theirs = 1 - success.float().mean().item()
    assert (clipped - x).abs().max() <= eps + 1e-6
    assert 0.2 < ours.robust_acc < ours.clean_acc  # a regime where the comparison means something
    assert abs(ours.robust_acc - theirs) <= 0.02, (ours.robust_acc, theirs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=0.0, step_size=0.01, steps=5), "eps must be in \\(0, 1\\]"),
    (dict(eps=1.5, step_size=0.01, steps=5), "eps must be in \\(0, 1\\]"),
    (dict(eps=-0.1, step_size=0.01, steps=5), "eps must be in \\(0, 1\\]"),
    (dict(eps=0.1, step_size=0.0, steps=5), "step_size must be > 0"),
    (dict(eps=0.1, step_size=0.01, steps=-1), "steps must be an integer >= 0"),
    (dict(eps=0.1, step_size=0.01, steps=2.5), "steps must be an integer >= 0"),
])
def test_bad_attack_arguments(tiny_model, kwargs, message):
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=message):
        ck.pgd_linf(tiny_model, x, y, **kwargs)
    with pytest.raises(ValueError, match=message):
        ck.adversarial_step(attack=ck.AttackConfig(**kwargs))


# --- the any-iterate fast path --------------------------------------------------------------------

def test_any_iterate_pgd_breaks_a_superset_of_what_final_iterate_pgd_breaks(robust_model, digits):
    x, y = digits[2][:200], digits[3][:200]
    kwargs = dict(eps=1.5 * EPS, step_size=EPS / 4, steps=10)
    final = ck.pgd_linf(robust_model, x, y, generator=torch.Generator().manual_seed(1), **kwargs)
    x_any, broken = ck.pgd_linf_any(robust_model, x, y, generator=torch.Generator().manual_seed(1), **kwargs)
    with torch.no_grad():
        final_wrong = robust_model(final).argmax(1) != y
        any_wrong = robust_model(x_any).argmax(1) != y
    assert 0 < final_wrong.sum() < len(y)  # a regime where the comparison means something
    assert (broken >= final_wrong).all(), "every final-iterate break is an any-iterate break"
    assert torch.equal(any_wrong, broken), "x_adv is the iterate that broke each example"
    # unbroken examples followed exactly the final-iterate trajectory
    assert torch.allclose(x_any[~broken], final[~broken], atol=1e-6)
    assert (x_any - x).abs().max() <= kwargs["eps"] + 1e-6 and x_any.min() >= 0 and x_any.max() <= 1


def test_any_iterate_pgd_respects_the_active_mask_and_refuses_train_mode(robust_model, digits, tiny_model):
    x, y = digits[2][:32], digits[3][:32]
    active = torch.arange(32) % 2 == 0
    x_adv, broken = ck.pgd_linf_any(robust_model, x, y, eps=EPS, step_size=EPS / 4, steps=3, active=active,
                                    random_start=False)
    assert broken[~active].all() and torch.equal(x_adv[~active], x[~active])
    with pytest.raises(ValueError, match="eval mode"):
        ck.pgd_linf_any(tiny_model.train(), x, y, eps=EPS, step_size=EPS / 4, steps=1)


def test_robust_accuracy_any_mode_is_never_higher_and_channels_last_agrees(robust_model, digits):
    x, y = digits[2], digits[3]
    kwargs = dict(attack=ck.AttackConfig(eps=1.5 * EPS, step_size=EPS / 4, steps=10), device="cpu", progress=False)
    final = ck.robust_accuracy(robust_model, Batches(x, y, batch_size=128), generator=torch.Generator().manual_seed(0), **kwargs)
    fast = ck.robust_accuracy(robust_model, Batches(x, y, batch_size=128), generator=torch.Generator().manual_seed(0),
                              mode="any", **kwargs)
    assert fast.attack == "pgd_linf_any" and fast.clean_acc == final.clean_acc
    assert fast.robust_acc <= final.robust_acc and final.robust_acc - fast.robust_acc <= 0.02
    nhwc = ck.robust_accuracy(robust_model, Batches(x, y, batch_size=128), generator=torch.Generator().manual_seed(0),
                              channels_last=True, **kwargs)
    robust_model.to(memory_format=torch.contiguous_format)
    assert nhwc.clean_acc == final.clean_acc and abs(nhwc.robust_acc - final.robust_acc) <= 2 / len(y)
    with pytest.raises(ValueError, match="mode must be"):
        ck.robust_accuracy(robust_model, Batches(x, y, batch_size=128), mode="first", **kwargs)
