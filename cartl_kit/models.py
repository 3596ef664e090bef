"""Wide ResNets with the reference's block numbering (CARTL paper §3, reference spec §1).

Every model takes pixels in [0, 1]; input normalisation is a module inside the model (buffers), so
attacks and epsilons live in pixel space. The network is laid out as

    normalize -> stem (3x3 conv, no BN) -> blocks[0] ... blocks[L-1]

where ``blocks`` holds exactly the reference's L blocks: the 3n pre-activation residual units in
forward order, then the final BatchNorm + LeakyReLU(0.1) (+ global average pooling, parameter-free),
then the linear head. WRN-34 has L = 17, WRN-28 L = 14, WRN-16 L = 8. "Fine-tune the last k blocks"
means blocks L-k+1 .. L (1-based); ``forward_features(x, upto=L-k)`` is the FDM feature, the input of
block L-k+1.

Weights are drawn from the global random state, or from a ``torch.Generator`` passed as ``generator=``
(``create_model``, ``reset_head``): then the global state is left untouched, and a generator seeded with s
gives the weights ``torch.manual_seed(s)`` followed by the global-state path would give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
import torch.nn.functional as F

LEAKY_SLOPE = 0.1  # the reference uses LeakyReLU(0.1) everywhere, never plain ReLU


@dataclass(frozen=True)
class WRNSpec:
    """Shape of a Wide ResNet preset: depth = 6n + 4, widths 16·widen, 32·widen, 64·widen."""

    depth: int
    widen: int

    @property
    def units_per_group(self) -> int:
        return (self.depth - 4) // 6

    @property
    def num_blocks(self) -> int:
        """L: residual units, then final BN+activation, then fc."""
        return 3 * self.units_per_group + 2


ARCHITECTURES: dict[str, WRNSpec] = {
    "wrn34_10": WRNSpec(34, 10),
    "wrn34_4": WRNSpec(34, 4),
    "wrn28_10": WRNSpec(28, 10),
    "wrn28_4": WRNSpec(28, 4),
    "wrn16_8": WRNSpec(16, 8),
    "wrn16_4": WRNSpec(16, 4),
    "wrn16_1": WRNSpec(16, 1),
}


class Normalize(nn.Module):
    """(x - mean) / std with per-channel buffers; checks the channel count of its input."""

    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor  # (1, C, 1, 1)

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}; give one value per channel")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"model expects images of shape (B, {self.channels}, H, W) but got {tuple(x.shape)}; "
                f"convert the data to {self.channels} channel(s) (grey <-> RGB) or create the model "
                f"with in_channels={x.shape[1] if x.dim() == 4 else '?'}"
            )
        return (x - self.mean) / self.std


class WideBasicUnit(nn.Module):
    """Pre-activation residual unit: BN -> LReLU -> conv(stride) -> BN -> LReLU -> conv, plus shortcut.

    If the channel count changes, the *activated* input feeds both the residual path and a 1x1 conv
    shortcut; otherwise the shortcut is the raw input. With ``half_residual`` the output is
    0.5·shortcut + 0.5·residual (the reference's "Parseval" units used by CARTL's NEFT student).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.shortcut = None if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        self.half_residual = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.leaky_relu(self.bn1(x), LEAKY_SLOPE)
        shortcut = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(F.leaky_relu(self.bn2(out), LEAKY_SLOPE))
        if self.half_residual:
            return 0.5 * shortcut + 0.5 * out
        return shortcut + out

    def extra_repr(self) -> str:
        return "half_residual=True" if self.half_residual else ""


class FinalNorm(nn.Module):
    """Block L-1: final BN -> LeakyReLU(0.1) -> global average pool -> flatten."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.bn(x), LEAKY_SLOPE)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, C)


class WideResNet(nn.Module):
    """A Wide ResNet exposing ``normalize``, ``stem`` and the ordered ``blocks`` (see module docstring)."""

    def __init__(
        self,
        spec: WRNSpec,
        *,
        num_classes: int,
        in_channels: int = 3,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        n, w = spec.units_per_group, spec.widen
        widths = [16, 16 * w, 32 * w, 64 * w]
        self.normalize = Normalize(mean or (0.0,) * in_channels, std or (1.0,) * in_channels)
        if self.normalize.channels != in_channels:
            raise ValueError(
                f"mean/std have {self.normalize.channels} channels but in_channels={in_channels}; they must agree"
            )
        # Constructing a layer draws PyTorch's default init from the global state; with a generator, on a
        # fork of it (left as it was), and _init_weights draws them again from the generator.
        with torch.random.fork_rng(devices=[], enabled=generator is not None):
            self.stem = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
            units: list[nn.Module] = []
            for group, stride in enumerate((1, 2, 2)):
                for i in range(n):
                    in_ch = widths[group] if i == 0 else widths[group + 1]
                    units.append(WideBasicUnit(in_ch, widths[group + 1], stride if i == 0 else 1))
            self.blocks = nn.ModuleList([*units, FinalNorm(widths[3]), nn.Linear(widths[3], num_classes)])
        self._init_weights(generator)

    def split_index(self, k: int) -> int:
        """The index of the first of the last ``k`` blocks (0-based), i.e. ``L - k``; checks ``k``."""
        return check_k(self, k) - k

    def _init_weights(self, generator: torch.Generator | None) -> None:
        # The reference: Kaiming-normal fan_out for convs, BN (1, 0), Linear keeps its default
        # weight init and only zeroes its bias.
        if generator is not None:  # first the default init construction drew, in construction order
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    _default_init_(m, generator)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def num_blocks(self) -> int:
        """L, the number of blocks in the reference's numbering."""
        return len(self.blocks)

    @property
    def in_channels(self) -> int:
        return self.normalize.channels

    @property
    def head(self) -> nn.Linear:
        """Block L, the linear classifier."""
        head = self.blocks[-1]
        if not isinstance(head, nn.Linear):
            raise TypeError(f"the last block of a WideResNet is its linear head, found {type(head).__name__}")
        return head

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward_features(self, x: torch.Tensor, *, upto: int) -> torch.Tensor:
        """Output of block ``upto`` (1-based; 0 = the stem's output), i.e. the input of block upto+1.

        ``forward_features(x, upto=L - k)`` is CARTL's FDM feature f^(L-k)(x) for fine-tuning depth k.
        """
        if not 0 <= upto <= self.num_blocks:
            raise ValueError(f"upto must be in 0..{self.num_blocks} for this model, got {upto}")
        x = self.stem(self.normalize(x))
        for block in self.blocks[:upto]:
            x = block(x)
        return x

    def forward_from(self, features: torch.Tensor, *, start: int) -> torch.Tensor:
        """Run blocks start+1 .. L on the output of block ``start`` (inverse split of forward_features)."""
        if not 0 <= start <= self.num_blocks:
            raise ValueError(f"start must be in 0..{self.num_blocks} for this model, got {start}")
        for block in self.blocks[start:]:
            features = block(features)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.forward_features(x, upto=0), start=0)

    def reset_head(self, num_classes: int, *, generator: torch.Generator | None = None) -> None:
        """Replace block L (fc) by a fresh Linear layer: PyTorch's default weight init (drawn from
        ``generator``, default the global state), zero bias."""
        old = self.head
        with torch.random.fork_rng(devices=[], enabled=generator is not None):
            fc = nn.Linear(old.in_features, num_classes)
        if generator is not None:
            _default_init_(fc, generator)
        fc = fc.to(device=old.weight.device, dtype=old.weight.dtype)
        nn.init.zeros_(fc.bias)
        self.blocks[-1] = fc


def _default_init_(layer: nn.Conv2d | nn.Linear, generator: torch.Generator) -> None:
    """PyTorch's default init of a conv or linear layer (its ``reset_parameters``), drawn from ``generator``."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    if layer.bias is not None:
        fan_in = layer.weight[0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def create_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    half_residual_k: int | None = None,
    generator: torch.Generator | None = None,
) -> WideResNet:
    """Build a Wide ResNet preset exactly as the reference does, with normalisation inside.

    Args:
        arch: one of ``ARCHITECTURES`` (e.g. ``"wrn34_10"``, ``"wrn28_4"``, ``"wrn16_1"``).
        num_classes: size of the head.
        in_channels: image channels (1 for grey digits, 3 for CIFAR).
        mean: per-channel mean of the input normalisation (default 0: no shift).
        std: per-channel std of the input normalisation (default 1: no scaling).
        half_residual_k: if given, the residual units inside the last k blocks compute
            0.5·shortcut + 0.5·residual (the reference's "pwrn" student for NEFT/CARTL).
        generator: CPU ``torch.Generator`` for the random weights; default the global random state.

    Returns:
        The model; ``blocks(model)`` lists its L blocks.

    Example:
        >>> create_model("wrn16_1", num_classes=5, in_channels=1).num_blocks
        8
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    model = WideResNet(ARCHITECTURES[arch], num_classes=num_classes, in_channels=in_channels, mean=mean, std=std,
                       generator=generator)
    if half_residual_k is not None:
        set_half_residual(model, k=half_residual_k)
    return model


def forward_flops(module: nn.Module, run) -> int:
    """Analytic FLOPs (2 per multiply-add) of the convolutions and linear layers that ``run()`` calls in ``module``.

    Counted from each layer's output shape with forward hooks, under ``torch.no_grad``; BatchNorm,
    activations and additions (a few per cent) are left out, as is usual for model FLOPs utilisation.

    Example:
        >>> forward_flops(model, lambda: model(torch.zeros(1, 3, 32, 32)))
    """
    total = 0

    def count(layer, args, out):
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            total += 2 * out.numel() * (layer.in_channels // layer.groups) * kh * kw
        elif isinstance(layer, nn.Linear):
            total += 2 * out.numel() * layer.in_features

    handles = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return total


def blocks(model: WideResNet) -> list[nn.Module]:
    """The model's L blocks in the reference's order (index i holds block i+1)."""
    return list(model.blocks)


class HasBlocks(Protocol):
    """Anything that says how many blocks it has (a ``WideResNet``)."""

    @property
    def num_blocks(self) -> int: ...


def check_k(model: HasBlocks, k: int) -> int:
    """Validate a fine-tuning depth: 1 <= k <= L. Returns L."""
    num_blocks = model.num_blocks
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_blocks:
        raise ValueError(f"k must be an integer in 1..{num_blocks} (the number of blocks of this model), got {k!r}")
    return num_blocks


def set_half_residual(model: WideResNet, *, k: int) -> list[int]:
    """Make the residual units among the last k blocks compute 0.5·shortcut + 0.5·residual.

    Units outside the last k blocks are set back to the plain sum. No parameters change, so state
    dicts load in both directions. Returns the 1-based block numbers that are now halved.
    """
    num_blocks = check_k(model, k)
    halved = []
    for number, block in enumerate(model.blocks, start=1):
        if isinstance(block, WideBasicUnit):
            block.half_residual = number > num_blocks - k
            if block.half_residual:
                halved.append(number)
    return halved
