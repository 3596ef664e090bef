"""NEFT, non-expansive fine-tuning (CARTL paper §4.2, reference spec §6).

Every Conv2d and Linear weight inside the last k blocks is reparametrised as W* = β·W/σ(W), where
σ(W) is the largest singular value of the weight reshaped to (out, in·kh·kw), estimated by power
iteration that advances once per training-mode forward (Miyato et al.). The reparametrisation uses
``torch.nn.utils.parametrize``, so the optimiser keeps training the original W and
``remove_neft`` bakes β·W/σ into plain weights for export.

Note (reference spec §6): σ of the reshaped kernel is not the operator norm of the convolution, and
biases and BatchNorm are not constrained, so "non-expansive" is approximate;
``conv_operator_norm`` measures the true operator norm for a given input size.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .models import WideResNet, check_k


def check_beta(beta: float) -> None:
    """Raise ValueError unless β is a finite number > 0 (not a bool)."""
    if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta (NEFT's bound on each layer's spectral norm) must be > 0, e.g. 1.0, 0.6 or 0.4; got {beta!r}")


class ScaledSpectralNorm(nn.Module):
    """Parametrisation W -> β·W/σ(W) with a persistent power iteration (u, v are buffers).

    The power iteration starts from random unit vectors, drawn from ``generator`` (default the global state).
    """

    u: torch.Tensor  # (out,)
    v: torch.Tensor  # (in*kh*kw,)

    def __init__(self, weight: torch.Tensor, *, beta: float, power_iterations: int = 1, eps: float = 1e-12,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        check_beta(beta)
        if power_iterations < 1:
            raise ValueError(f"power_iterations must be >= 1, got {power_iterations}")
        self.beta = float(beta)
        self.power_iterations = power_iterations
        self.eps = eps
        matrix = weight.detach().flatten(1)  # (out, in*kh*kw)
        u = F.normalize(_randn(matrix.shape[0], like=matrix, generator=generator), dim=0, eps=eps)
        v = F.normalize(_randn(matrix.shape[1], like=matrix, generator=generator), dim=0, eps=eps)
        self.register_buffer("u", u)
        self.register_buffer("v", v)

    @torch.no_grad()
    def _power_iteration(self, matrix: torch.Tensor) -> None:
        for _ in range(self.power_iterations):
            self.v.copy_(F.normalize(matrix.t() @ self.u, dim=0, eps=self.eps))
            self.u.copy_(F.normalize(matrix @ self.v, dim=0, eps=self.eps))

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """The current estimate uᵀ W v of the largest singular value (gradient flows through W)."""
        matrix = weight.flatten(1)
        # Clone u, v: a later training forward updates them in place before this graph is used.
        return torch.dot(self.u.clone(), matrix @ self.v.clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._power_iteration(weight.detach().flatten(1))
        return self.beta * weight / self.sigma(weight)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, power_iterations={self.power_iterations}"


def _randn(n: int, *, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """n standard-normal draws with ``like``'s dtype and device (drawn on the generator's device)."""
    if generator is None:
        return torch.randn(n, dtype=like.dtype, device=like.device)
    return torch.randn(n, dtype=like.dtype, device=generator.device, generator=generator).to(like.device)


def neft_layers(model: WideResNet, *, k: int) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """(qualified name, module) of every Conv2d/Linear inside the last k blocks, in forward order."""
    num_blocks = check_k(model, k)
    layers: list[tuple[str, nn.Conv2d | nn.Linear]] = []
    for index in range(num_blocks - k, num_blocks):
        for name, module in model.blocks[index].named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                layers.append((f"blocks.{index}.{name}".rstrip("."), module))
    return layers


def apply_neft(model: WideResNet, *, k: int, beta: float, power_iterations: int = 1,
               generator: torch.Generator | None = None) -> list[str]:
    """Reparametrise every conv/linear weight of the last k blocks as β·W/σ(W), in place.

    Args:
        model: the student (usually from ``make_student``).
        k: number of fine-tuned blocks, 1 <= k <= L.
        beta: bound β > 0 on each layer's spectral norm (the paper: 1.0, 0.6, 0.4).
        power_iterations: power-iteration steps per training forward (the reference uses 1).
        generator: ``torch.Generator`` for the power iteration's random start; default the global state.

    Returns:
        The names of the reparametrised layers (WRN-34, k = 8: 14 layers).

    Example:
        >>> apply_neft(student, k=4, beta=0.4)
    """
    check_beta(beta)
    layers = neft_layers(model, k=k)
    for name, module in layers:
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"{name} already has NEFT applied; call remove_neft(model) first")
    for _, module in layers:
        parametrize.register_parametrization(
            module, "weight", ScaledSpectralNorm(module.weight, beta=beta, power_iterations=power_iterations,
                                                 generator=generator)
        )
    return [name for name, _ in layers]


def _weight_parametrizations(module: nn.Module) -> parametrize.ParametrizationList:
    """The parametrizations of a parametrized module's ``weight`` (they hold the trained ``original``)."""
    parametrizations = module.parametrizations
    if not isinstance(parametrizations, nn.ModuleDict) or "weight" not in parametrizations:
        raise ValueError(f"{type(module).__name__} has no parametrized weight")
    weight = parametrizations["weight"]
    if not isinstance(weight, parametrize.ParametrizationList):
        raise ValueError(f"{type(module).__name__}.parametrizations.weight is not a ParametrizationList")
    return weight


def _neft_modules(model: nn.Module) -> list[tuple[str, nn.Module, ScaledSpectralNorm]]:
    found = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in _weight_parametrizations(module):
                if isinstance(p, ScaledSpectralNorm):
                    found.append((name, module, p))
    return found


def remove_neft(model: nn.Module) -> int:
    """Bake β·W/σ(W) into plain ``weight`` parameters (no power iteration), in place.

    Afterwards ``model.state_dict()`` loads into a plain model of the same architecture. Returns
    the number of layers converted.
    """
    found = _neft_modules(model)
    for _, module, spectral in found:
        was_training = spectral.training
        spectral.eval()  # evaluate with the stored u, v: no extra power-iteration step
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        spectral.train(was_training)
    return len(found)


def largest_singular_value(weight: torch.Tensor) -> float:
    """Exact largest singular value of the weight reshaped to (out, in·kh·kw)."""
    return torch.linalg.matrix_norm(weight.detach().flatten(1).double(), ord=2).item()


@torch.no_grad()
def conv_operator_norm(conv: nn.Conv2d, input_shape: tuple[int, int, int], *, iterations: int = 50) -> float:
    """Operator norm of a convolution (as a linear map on inputs of ``input_shape``) by power iteration.

    This is the true Lipschitz constant of the layer, which σ of the reshaped kernel does not bound.
    """
    if isinstance(conv.padding, str):
        raise ValueError(f"conv_operator_norm needs a numeric padding, got padding={conv.padding!r}")
    padding = conv.padding
    weight = conv.weight.detach()
    x = torch.randn(1, *input_shape, dtype=weight.dtype, device=weight.device)
    x = x / x.norm()
    norm = 0.0
    for _ in range(iterations):
        y = F.conv2d(x, weight, stride=conv.stride, padding=padding)
        x = F.conv_transpose2d(y, weight, stride=conv.stride, padding=padding,
                               output_padding=_output_padding(conv, padding, input_shape, y.shape))
        norm = x.norm().sqrt().item()
        x = x / x.norm()
    return norm


def _output_padding(conv: nn.Conv2d, padding: tuple[int, ...], input_shape: tuple[int, int, int],
                    out_shape: torch.Size) -> tuple[int, int]:
    pads = []
    for dim in range(2):
        size = (out_shape[2 + dim] - 1) * conv.stride[dim] - 2 * padding[dim] + conv.kernel_size[dim]
        pads.append(input_shape[1 + dim] - size)
    return pads[0], pads[1]


def neft_report(model: nn.Module) -> list[dict]:
    """One row per NEFT layer: name, β, the power-iteration σ estimate, the exact σ of W and of β·W/σ.

    ``effective_sigma`` is the largest singular value of the weight the layer actually uses; NEFT
    aims at ``effective_sigma <= beta`` (reached once the power iteration has converged).
    """
    rows = []
    for name, module, spectral in _neft_modules(model):
        original = _weight_parametrizations(module).original
        with torch.no_grad():
            estimate = spectral.sigma(original).item()
            effective = spectral.beta * original / estimate
        rows.append({
            "layer": name,
            "beta": spectral.beta,
            "sigma_estimate": estimate,
            "sigma_exact": largest_singular_value(original),
            "effective_sigma": largest_singular_value(effective),
        })
    return rows
