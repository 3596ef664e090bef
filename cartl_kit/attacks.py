"""L-infinity attacks in pixel space: PGD (Madry et al.) and FGSM (CARTL paper §2, reference spec §3, §9).

Attacks are pure functions: they take a model, clean images in [0, 1] and labels, and return
adversarial images inside the eps-ball and inside [0, 1]. Gradients are taken with
``torch.autograd.grad`` on the input only; model parameters are never touched and the model's
train/eval mode is left to the caller (training crafts examples in eval mode, like the reference).
``AttackConfig`` is the one way the rest of the kit (step functions, evaluation, analysis, configs)
is given a PGD attack's parameters.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from .params import check_bool
from .progress import attack_step

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_attack_args(*, eps: float, step_size: float, steps: int) -> None:
    """Raise ValueError for an eps outside (0, 1], a step size that is not a finite number > 0 or a negative
    step count (booleans, NaN and infinity are refused)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0.0 < eps <= 1.0:
        raise ValueError(f"eps must be in (0, 1] (pixel units, e.g. 8/255 or 0.3), got {eps!r}")
    if isinstance(step_size, bool) or not isinstance(step_size, numbers.Real) or not 0.0 < step_size < math.inf:
        raise ValueError(f"step_size must be > 0 and finite (pixel units, e.g. 2/255), got {step_size!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")


@dataclass(frozen=True)
class AttackConfig:
    """L-inf PGD in pixel units (default: the reference's training attack, PGD-7 with eps 8/255, step 2/255).

    Validated on construction (``check_attack_args``), so a bad value fails before anything runs.

    Example:
        >>> AttackConfig(eps=0.3, step_size=0.1, steps=7)
        AttackConfig(eps=0.3, step_size=0.1, steps=7, random_start=True)
    """

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 7
    random_start: bool = True

    def __post_init__(self) -> None:
        check_attack_args(eps=self.eps, step_size=self.step_size, steps=self.steps)
        check_bool("random_start", self.random_start)


PIXEL_TOLERANCE = 1e-4  # float rounding of images in [0, 1]; scaled (0..255) or normalised images are far outside


def check_images(x: torch.Tensor, *, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is a float tensor of finite pixels in [0, 1] (the kit's pixel space)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of images in [0, 1], got "
                         f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.numel() == 0:
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or infinite pixels; attacks need images in [0, 1]")
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if low < -PIXEL_TOLERANCE or high > 1 + PIXEL_TOLERANCE:
        raise ValueError(f"{name} has pixels in [{low:.4g}, {high:.4g}]; attacks need images in [0, 1] "
                         "(divide 0..255 images by 255; the model normalises inside)")


def _sum_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # A sum, not a mean: per-sample gradients then do not shrink with the batch size. In float32, also
    # under bf16 autocast.
    return F.cross_entropy(logits.float(), y, reduction="sum")


def _start(x: torch.Tensor, *, eps: float, random_start: bool, generator: torch.Generator | None) -> torch.Tensor:
    """PGD's starting point: x plus uniform noise in [-eps, eps], clipped to [0, 1]; or a copy of x."""
    if not random_start:
        return x.clone()
    noise = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
    return (x + (2 * noise.to(x.device, x.dtype) - 1) * eps).clamp(0.0, 1.0)


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
    check_images(x)
    loss_fn = loss_fn or _sum_cross_entropy
    x = x.detach()
    x_adv = _start(x, eps=eps, random_start=random_start, generator=generator)
    for i in range(steps):
        attack_step("PGD", i + 1, steps)
        x_adv.requires_grad_(True)
        loss = loss_fn(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


def pgd_linf_any(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD that retires each example at its first misclassified iterate ("any-iterate" success).

    The fast path of robust evaluation. Every step needs the logits of the current iterate for its
    gradient anyway, so checking them costs nothing; an example whose iterate is misclassified is
    counted as broken and leaves the batch, and later steps attack only the rest. The loss is a
    per-example sum and the model must be in eval mode (no batch statistics), so the examples still
    in the batch follow exactly the trajectory of ``pgd_linf`` with the same random start: the
    examples this attack leaves unbroken are a subset of those final-iterate PGD leaves correctly
    classified. It is at least as strong, never weaker.

    Args:
        model, x, y, eps, step_size, steps, random_start, generator: as in ``pgd_linf`` (the random
            start is drawn for the whole batch, exactly as there).
        active: optional (B,) bool mask of examples to attack (e.g. the clean-correct ones); the
            others count as broken from the start. Default: all.

    Returns:
        ``(x_adv, broken)``: the iterate at which each example broke (or its final iterate), detached,
        and a (B,) bool tensor, True where some iterate was misclassified.

    Example:
        >>> x_adv, broken = pgd_linf_any(model.eval(), x, y, eps=8/255, step_size=2/255, steps=100)
        >>> robust_accuracy = 1 - broken.float().mean()
    """
    check_attack_args(eps=eps, step_size=step_size, steps=steps)
    check_images(x)
    if model.training:
        raise ValueError("pgd_linf_any needs the model in eval mode (model.eval()): with batch statistics, "
                         "retiring examples would change the others' outputs")
    x = x.detach()
    start = _start(x, eps=eps, random_start=random_start, generator=generator)
    result = start.clone()
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    if active is not None:
        broken |= ~active.to(x.device)
    index = torch.nonzero(~broken).squeeze(1)
    x_adv, x_clean, y_active = start[index], x[index], y[index]
    for step in range(steps + 1):
        if len(index) == 0:
            break
        attack_step("PGD", min(step + 1, steps), steps)
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        wrong = logits.argmax(1) != y_active
        if step == steps or wrong.all():
            result[index] = x_adv.detach()
            broken[index] = wrong
            break
        keep = ~wrong
        (grad,) = torch.autograd.grad(_sum_cross_entropy(logits[keep], y_active[keep]), x_adv)
        with torch.no_grad():
            retired = index[wrong]
            result[retired], broken[retired] = x_adv[wrong], True
            index, x_clean, y_active = index[keep], x_clean[keep], y_active[keep]
            x_adv = x_adv[keep] + step_size * grad[keep].sign()
            x_adv = torch.min(torch.max(x_adv, x_clean - eps), x_clean + eps).clamp(0.0, 1.0)
    return result.detach(), broken


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


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The margin (Carlini-Wagner) loss to maximise: sum over the batch of max_{i != y} z_i - z_y, in float32.

    Positive exactly where an example is misclassified. Pass it as ``loss_fn`` to ``attacks.pgd_linf``.

    Example:
        >>> x_adv = pgd_linf(model, x, y, eps=0.3, step_size=0.075, steps=20, loss_fn=margin_loss)
    """
    z = logits.float()
    z_y = z.gather(1, y[:, None]).squeeze(1)
    return (z.scatter(1, y[:, None], -float("inf")).amax(1) - z_y).sum()


TRACE_LOSSES = {"ce": _sum_cross_entropy, "margin": margin_loss}


def pgd_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int,
              loss: str = "ce", random_start: bool = True, generator: torch.Generator | None = None,
              active: torch.Tensor | None = None) -> torch.Tensor:
    """Any-iterate PGD that records at which iterate each example broke.

    With ``loss="ce"`` it follows exactly the trajectory of ``attacks.pgd_linf_any`` (same random start
    for the same generator): ``pgd_trace(...) <= k`` is the broken mask of a k-step ``pgd_linf_any``.

    Args:
        model: the classifier, in eval mode (broken examples leave the batch).
        x, y, eps, step_size, steps, random_start, generator: as in ``attacks.pgd_linf``.
        loss: ``"ce"`` (summed cross-entropy) or ``"margin"`` (``margin_loss``).
        active: (B,) bool, the examples to attack (e.g. the clean-correct ones); the others break at 0.

    Returns:
        A (B,) long tensor: the first iterate (0 = the random start) classified wrongly, or
        ``steps + 1`` for an example no iterate broke.

    Example:
        >>> broken_at = pgd_trace(model.eval(), x, y, eps=0.3, step_size=0.075, steps=50, loss="margin")
        >>> robust_after_20 = (broken_at > 20).float().mean()
    """
    check_attack_args(eps=eps, step_size=step_size, steps=steps)
    if model.training:
        raise ValueError("pgd_trace needs the model in eval mode (model.eval())")
    if loss not in TRACE_LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(TRACE_LOSSES)}")
    x = x.detach()
    broken_at = torch.full((len(x),), steps + 1, dtype=torch.long, device=x.device)
    if active is not None:
        broken_at[~active.to(x.device)] = 0
    x_adv = _start(x, eps=eps, random_start=random_start, generator=generator)  # as pgd_linf_any's, whole batch
    index = torch.nonzero(broken_at > steps).squeeze(1)
    x_adv, xc, yc = x_adv[index], x[index], y[index]
    for step in range(steps + 1):
        if len(index) == 0:
            break
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        wrong = logits.argmax(1) != yc
        broken_at[index[wrong]] = step
        keep = ~wrong
        if step == steps or not keep.any():
            break
        (grad,) = torch.autograd.grad(TRACE_LOSSES[loss](logits[keep], yc[keep]), x_adv)
        with torch.no_grad():
            index, xc, yc = index[keep], xc[keep], yc[keep]
            x_adv = x_adv[keep] + step_size * grad[keep].sign()
            x_adv = torch.min(torch.max(x_adv, xc - eps), xc + eps).clamp(0.0, 1.0)
    return broken_at
