"""BatchNorm folded away for the attack (cartl_kit.fold): the folded model equals the eval-mode model, and a
training step with ``fold_bn=True`` equals one without, up to floating-point rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cartl_kit as ck
from cartl_kit.fold import FoldedWideResNet, bn_affine, fold_bn_into_conv, folded_for_attack


def _model(dtype=torch.float32, **kwargs) -> ck.WideResNet:
    """A tiny WRN whose BatchNorm layers hold non-trivial statistics and affine parameters."""
    generator = torch.Generator().manual_seed(0)
    model = ck.create_model("wrn16_1", num_classes=5, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3),
                            generator=generator, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.4 * torch.rand(n, generator=generator) - 0.2)
    return model.to(dtype).eval()


def _logits_and_input_gradient(model, x, y):
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    return logits.detach(), grad


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("half_residual_k", [None, 4])
def test_folded_model_has_the_eval_models_logits_and_input_gradients(channels_last, half_residual_k):
    model = _model(half_residual_k=half_residual_k)
    x, y = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 4])
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    logits, grad = _logits_and_input_gradient(model, x, y)
    folded_logits, folded_grad = _logits_and_input_gradient(folded_for_attack(model), x, y)
    assert torch.allclose(folded_logits, logits, atol=1e-5, rtol=0)
    assert (folded_grad - grad).abs().max() <= 1e-5 * grad.abs().max()
    assert all(p.grad is None for p in model.parameters())  # the fold reads the weights, it never trains them

    double = _model(torch.float64, half_residual_k=half_residual_k)
    logits, grad = _logits_and_input_gradient(double, x.double(), y)
    folded_logits, folded_grad = _logits_and_input_gradient(FoldedWideResNet(double), x.double(), y)
    assert torch.allclose(folded_logits, logits, atol=1e-12, rtol=0)
    assert torch.allclose(folded_grad, grad, atol=1e-12 * grad.abs().max().item(), rtol=0)


def test_bn_after_a_conv_folds_into_it():
    conv, bn = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=True).double(), torch.nn.BatchNorm2d(6).double()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    weight, bias = fold_bn_into_conv(conv, bn)
    assert torch.allclose(F.conv2d(x, weight, bias, stride=2, padding=1), bn(conv(x)), atol=1e-12)
    scale, shift = bn_affine(bn)
    assert torch.allclose(scale.view(1, -1, 1, 1) * x.new_ones(1, 6, 1, 1) * 2 + shift.view(1, -1, 1, 1),
                          bn(2 * x.new_ones(1, 6, 1, 1)), atol=1e-12)


@pytest.mark.parametrize("step", ["adversarial", "fdm"])
def test_a_training_step_with_folded_attacks_gives_the_same_parameters(step):
    # float64, so that no signed-gradient component flips through rounding and the examples are identical.
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.arange(8) % 5
    attack = ck.AttackConfig(eps=8 / 255, step_size=2 / 255, steps=3)
    states = []
    for fold_bn, chunk in ((False, None), (True, None), (True, 3)):
        model = _model(torch.float64)
        generator = torch.Generator().manual_seed(3)
        settings = {"attack": attack, "generator": generator, "fold_bn": fold_bn, "attack_chunk": chunk}
        make = {"adversarial": lambda: ck.adversarial_step(**settings),
                "fdm": lambda: ck.fdm_step(k=3, lam=0.01, **settings)}[step]
        ck.fit(model, [(x, y), (x.flip(0), y.flip(0))], make(),
               ck.OptimConfig(epochs=1, base_lr=0.05, warmup_epochs=0, milestones=()), device="cpu", progress=False)
        states.append(model.state_dict())
    plain, *folded = states
    for name, value in plain.items():
        for state in folded:
            assert torch.allclose(state[name].double(), value.double(), atol=1e-10, rtol=0), name
    assert any((value != _model(torch.float64).state_dict()[name]).any() for name, value in plain.items())  # it trained


def test_fold_refuses_train_mode_other_models_and_non_booleans():
    model = _model()
    with pytest.raises(ValueError, match="only in eval mode"):
        folded_for_attack(model.train())
    with pytest.raises(TypeError, match="needs a WideResNet"):
        folded_for_attack(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2)).eval())
    with pytest.raises(ValueError, match="fold_bn must be True or False"):
        ck.adversarial_step(fold_bn="yes")
    with pytest.raises(ValueError, match="fold_bn must be True or False"):
        ck.fdm_step(k=2, lam=0.01, fold_bn=1)
    with pytest.raises(ValueError, match="pass fold_bn=True with it"):
        ck.adversarial_step(attack_chunk=32)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk must be None"):
            ck.adversarial_step(fold_bn=True, attack_chunk=bad)


def test_a_chunked_folded_model_gives_the_whole_batchs_logits_and_input_gradients():
    model = _model(torch.float64)
    x, y = torch.rand(7, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4)), torch.arange(7) % 5
    logits, grad = _logits_and_input_gradient(FoldedWideResNet(model), x, y)
    for chunk in (1, 3, 7, 50):
        chunked_logits, chunked_grad = _logits_and_input_gradient(FoldedWideResNet(model, chunk=chunk), x, y)
        assert torch.allclose(chunked_logits, logits, atol=1e-12, rtol=0), chunk
        assert torch.allclose(chunked_grad, grad, atol=1e-12, rtol=0), chunk
