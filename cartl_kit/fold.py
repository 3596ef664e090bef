"""BatchNorm folded away for the attack's passes (issue 20: the CPU adversarial-training step).

While the training step crafts its PGD examples, the model is in eval mode and its parameters do not
change, so every BatchNorm is a fixed per-channel affine map ``s·x + t`` with
``s = γ / √(running_var + ε)`` and ``t = β − running_mean·s``. In the kit's pre-activation units
(``models.WideBasicUnit``: BN1 → LeakyReLU → conv1 → BN2 → LeakyReLU → conv2, plus the shortcut) that
allows:

- **BN2 into conv1**: BN2 directly follows conv1, so ``BN2(conv1(a)) = conv(a; s·W1) + t``: a convolution
  with scaled weights and a bias, and BN2's pass (forward and input-gradient) disappears.
- **BN1 and the final BN as one ``addcmul``**: BN1 follows the residual sum and LeakyReLU sits between it and
  the next convolution, so it cannot fold into a convolution; it becomes ``t + s·x``, whose input
  gradient (``s·g``) is a plain product instead of ``native_batch_norm_backward``.
- the activations and the residual sum run in place where autograd allows it (LeakyReLU's slope is
  positive, so its gradient is read from its output).

- **the batch in chunks** (``chunk=32``, a separate switch): in eval mode every example's logits depend on
  that example alone, so the forward can run the batch in slices and concatenate the logits; autograd's
  backward then also runs slice by slice (it takes the most recently created node first), so each
  layer's output can still be in the cache when the next layer reads it. On a 2-core CPU it made the
  attack alone faster in a side run but not the whole training step (bench/README.md); a GPU wants the
  whole batch.

The input normalisation stays as it is: folding it into the stem would change what the stem's zero
padding sees. ``FoldedWideResNet(model)`` is a snapshot: build it again after the parameters or the
running statistics change (``train.adversarial_step(fold_bn=True)`` builds one per batch, which costs a
few element-wise passes over the weights). Logits and input gradients equal the eval-mode model's up to
floating-point rounding (tested, ``tests/test_fold.py``); gradients with respect to the parameters are
not available through it (the weights are detached).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .models import LEAKY_SLOPE, FinalNorm, WideBasicUnit, WideResNet


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift ``(s, t)`` of ``bn`` in eval mode, so that ``bn.eval()(x) = s·x + t`` per channel; detached."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("only a BatchNorm with running statistics (track_running_stats=True) can be folded")
    var, mean = bn.running_var.detach(), bn.running_mean.detach()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    return scale, shift


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the convolution equal to ``bn.eval()(conv(x))`` (BN directly after the conv); detached.

    Example:
        >>> weight, bias = fold_bn_into_conv(unit.conv1, unit.bn2)   # conv2d(a, weight, bias, ...) = bn2(conv1(a))
    """
    if conv.out_channels != bn.num_features:
        raise ValueError(f"the BatchNorm has {bn.num_features} channels but the conv outputs {conv.out_channels}")
    scale, shift = bn_affine(bn)
    weight = conv.weight.detach()
    folded = weight * scale.to(weight.dtype).view(-1, 1, 1, 1)
    folded = folded.contiguous(memory_format=_memory_format(weight))
    bias = shift if conv.bias is None else shift + scale * conv.bias.detach()
    return folded, bias.to(weight.dtype)


def _memory_format(weight: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) \
        and not weight.is_contiguous() else torch.contiguous_format


def _zero_padded(conv: nn.Conv2d) -> nn.Conv2d:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"only convolutions with numeric zero padding are folded, got {conv}")
    return conv


class _Conv:
    """A convolution's detached weight, optional bias and geometry."""

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> None:
        conv = _zero_padded(conv)
        self.weight = conv.weight.detach() if weight is None else weight
        self.bias = bias if bias is not None else (None if conv.bias is None else conv.bias.detach())
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _Affine:
    """An eval-mode BatchNorm as ``t + s·x`` with (1, C, 1, 1) scale and shift."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        scale, shift = bn_affine(bn)
        self.scale, self.shift = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)

    def activated(self, x: torch.Tensor) -> torch.Tensor:
        """LeakyReLU(s·x + t), the activation in place on the new tensor."""
        return F.leaky_relu(torch.addcmul(self.shift, x, self.scale), LEAKY_SLOPE, inplace=True)


class _FoldedUnit:
    """A ``WideBasicUnit`` in eval mode with BN2 folded into conv1."""

    def __init__(self, unit: WideBasicUnit) -> None:
        self.bn1 = _Affine(unit.bn1)
        self.conv1 = _Conv(unit.conv1, *fold_bn_into_conv(unit.conv1, unit.bn2))
        self.conv2 = _Conv(unit.conv2)
        self.shortcut = None if unit.shortcut is None else _Conv(unit.shortcut)
        self.half_residual = unit.half_residual

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        act = self.bn1.activated(x)
        shortcut = x if self.shortcut is None else self.shortcut(act)
        out = self.conv2(F.leaky_relu(self.conv1(act), LEAKY_SLOPE, inplace=True))
        if self.half_residual:
            return 0.5 * shortcut + 0.5 * out
        if out.dtype == shortcut.dtype:  # (under autocast the conv's output may be narrower: keep the promotion)
            return out.add_(shortcut)
        return shortcut + out


class FoldedWideResNet(nn.Module):
    """An eval-mode snapshot of a ``WideResNet`` for crafting attacks: same logits and input gradients, fewer passes.

    Built from the model's current weights and running statistics (see the module docstring); the
    original model is not changed. Only a model whose BatchNorm layers are ``nn.BatchNorm2d`` with running
    statistics, in the kit's block layout (``WideBasicUnit`` ..., ``FinalNorm``, ``nn.Linear``), can be folded.

    Example:
        >>> x_adv = pgd_linf(FoldedWideResNet(model.eval()), x, y, eps=8/255, step_size=2/255, steps=7)
    """

    def __init__(self, model: WideResNet, *, chunk: int | None = None) -> None:
        super().__init__()
        self.chunk = check_chunk(chunk)
        if not isinstance(model, WideResNet):
            raise TypeError(f"only a WideResNet (create_model) can be folded, got {type(model).__name__}")
        *units, final, head = list(model.blocks)
        if not (all(isinstance(u, WideBasicUnit) for u in units) and isinstance(final, FinalNorm)
                and isinstance(head, nn.Linear)):
            raise TypeError("only the kit's block layout (residual units, FinalNorm, Linear head) can be folded")
        self.normalize = model.normalize  # a submodule: its buffers follow .to() like the model's
        self._stem = _Conv(model.stem)
        self._units = [_FoldedUnit(u) for u in units if isinstance(u, WideBasicUnit)]
        self._final = _Affine(final.bn)
        self._head = (head.weight.detach(), None if head.bias is None else head.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.chunk is not None and x.shape[0] > self.chunk:
            return torch.cat([self._logits(part) for part in x.split(self.chunk)])
        return self._logits(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem(self.normalize(x))
        for unit in self._units:
            x = unit(x)
        x = torch.flatten(F.adaptive_avg_pool2d(self._final.activated(x), 1), 1)
        return F.linear(x, *self._head)


def check_chunk(chunk: int | None) -> int | None:
    """``chunk`` if it is None (the whole batch at once) or an integer >= 1."""
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be None (the whole batch) or an integer >= 1, e.g. 32, got {chunk!r}")
    return chunk


def check_fold_settings(fold_bn: bool, chunk: int | None) -> None:
    """Check the step functions' ``fold_bn`` and ``attack_chunk`` (the chunks are a setting of the fold)."""
    if not isinstance(fold_bn, bool):
        raise ValueError(f"fold_bn must be True or False, got {fold_bn!r}")
    if check_chunk(chunk) is not None and not fold_bn:
        raise ValueError("attack_chunk slices the folded model's batch: pass fold_bn=True with it")


def folded_for_attack(model: nn.Module, *, chunk: int | None = None) -> FoldedWideResNet:
    """``FoldedWideResNet(model, chunk=chunk)`` for a model in eval mode (the mode the kit crafts its examples in).

    Raises ValueError for a model in train mode: its BatchNorm layers would use batch statistics, which
    no fold reproduces.
    """
    if any(module.training for module in model.modules()):
        raise ValueError("fold BatchNorm only in eval mode (running statistics); call model.eval() first")
    if not isinstance(model, WideResNet):
        raise TypeError(f"fold_bn needs a WideResNet (create_model), got {type(model).__name__}")
    return FoldedWideResNet(model, chunk=chunk)


__all__ = ["FoldedWideResNet", "bn_affine", "check_chunk", "check_fold_settings", "fold_bn_into_conv", "folded_for_attack"]
