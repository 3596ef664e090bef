"""L-infinity attacks in pixel space: PGD (Madry et al.) and FGSM (CARTL paper §2, reference spec §3, §9).

Attacks are pure functions: they take a model, clean images in [0, 1] and labels, and return
adversarial images inside the eps-ball and inside [0, 1]. Gradients are taken with
``torch.autograd.grad`` on the input only; model parameters are never touched and the model's
train/eval mode is left to the caller (training crafts examples in eval mode, like the reference).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_attack_args(*, eps: float, step_size: float, steps: int) -> None:
    """Raise ValueError for an eps outside (0, 1], a non-positive step size or a negative step count."""
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"eps must be in (0, 1] (pixel units, e.g. 8/255 or 0.3), got {eps}")
    if not step_size > 0.0:
        raise ValueError(f"step_size must be > 0 (pixel units, e.g. 2/255), got {step_size}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")


def _sum_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # A sum, not a mean: per-sample gradients then do not shrink with the batch size.
    return F.cross_entropy(logits, y, reduction="sum")


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent in the L-inf ball, returning the final iterate.

    Each step moves by ``step_size * sign(grad)``, projects onto the eps-ball around ``x`` and clips
    to [0, 1]. The random start is uniform in [-eps, eps] and clipped to [0, 1] (the reference left
    it unclipped; foolbox clips).

    Args:
        model: maps images in [0, 1] to logits. Its mode (train/eval) is not changed.
        x: clean images in [0, 1].
        y: integer labels.
        eps: radius of the L-inf ball in pixel units, in (0, 1].
        step_size: size of one signed-gradient step in pixel units.
        steps: number of gradient steps (0 returns the random start, or x).
        random_start: start from a uniform random point of the ball.
        loss_fn: ``loss_fn(logits, y)`` to maximise; default summed cross-entropy.
        generator: optional ``torch.Generator`` for the random start.

    Returns:
        Adversarial images, detached, same shape and dtype as ``x``.

    Shape:
        x: (B, C, H, W), y: (B,) -> (B, C, H, W)

    Example:
        >>> x_adv = pgd_linf(model, x, y, eps=8/255, step_size=2/255, steps=7)
    """
    check_attack_args(eps=eps, step_size=step_size, steps=steps)
    loss_fn = loss_fn or _sum_cross_entropy
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
        x_adv = (x + (2 * noise.to(x.device, x.dtype) - 1) * eps).clamp(0.0, 1.0)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    """Fast gradient sign method: one step of size eps from x, clipped to [0, 1].

    Args:
        model: maps images in [0, 1] to logits. Its mode is not changed.
        x: clean images in [0, 1].
        y: integer labels.
        eps: radius of the L-inf ball in pixel units, in (0, 1].
        loss_fn: ``loss_fn(logits, y)`` to maximise; default summed cross-entropy.

    Returns:
        Adversarial images, detached.

    Example:
        >>> x_adv = fgsm(model, x, y, eps=8/255)
    """
    return pgd_linf(model, x, y, eps=eps, step_size=eps, steps=1, random_start=False, loss_fn=loss_fn)
