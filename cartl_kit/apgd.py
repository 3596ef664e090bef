"""Auto-PGD (APGD) in the L-infinity ball, with the cross-entropy and the targeted DLR losses.

Written from the algorithm of Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks" (ICML 2020), §3: a step size that starts at 2·eps and is
halved at checkpoints when the loss stopped rising (fewer than ``rho`` of the steps since the last
checkpoint increased it) or when the last halving brought no new best; after a halving the iterate
restarts from the best point found; each step mixes the new and the previous move with momentum
``alpha`` = 0.75. APGD-T runs the attack once per target class (the top classes of the clean logits
other than the true one) with the targeted DLR loss, which is invariant to the scale of the logits.

Like ``attacks.pgd_linf_any``, these functions count an example as broken at its first misclassified
iterate, and a broken example leaves the batch at once (the model must be in eval mode, so the others'
trajectories do not change). They return ``(x_adv, broken)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .attacks import check_attack_args, check_images
from .progress import attack_step

ALPHA, RHO = 0.75, 0.75  # momentum and the oscillation threshold of Croce & Hein


def checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step size: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), scaled by ``steps`` and rounded up.

    Example:
        >>> checkpoints(100)[:4]
        [0, 22, 41, 57]
    """
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * steps - 1e-9) for q in p if q < 1})


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example cross-entropy (float32); ``target`` is ignored (untargeted)."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example difference of logits ratio (Croce & Hein, eq. 6), to be maximised.

    Untargeted: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3). Targeted towards ``target``:
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), where z_pi is the logit vector sorted descending.
    Both are invariant to shifting and scaling the logits.
    """
    z = logits.float()
    ordered = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    if target is None:
        if z.shape[1] < 3:
            raise ValueError(f"the DLR loss needs at least 3 classes, the model has {z.shape[1]}")
        other = z.clone()
        other.scatter_(1, y[:, None], -float("inf"))
        return -(z_y - other.max(1).values) / (ordered[:, 0] - ordered[:, 2] + 1e-12)
    if z.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, the model has {z.shape[1]}")
    z_t = z.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


LOSSES = {"ce": ce_loss, "dlr": dlr_loss}


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def _random_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """A random point of the ball: uniform noise rescaled so its largest entry per example is eps (as in APGD)."""
    noise = 2 * torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device) - 1
    noise = noise.to(x.device, x.dtype)
    scale = noise.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
    return (x + eps * noise / scale).clamp(0.0, 1.0)


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 100,
    loss: str = "ce",
    target: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One run of APGD (untargeted with ``loss="ce"`` or ``"dlr"``; targeted with ``loss="dlr"`` and ``target``).

    Args:
        model: maps images in [0, 1] to logits; must be in eval mode.
        x: clean images in [0, 1], (B, C, H, W).
        y: true labels, (B,).
        eps: radius of the L-inf ball in pixel units, in (0, 1].
        steps: iterations (Croce & Hein: 100).
        loss: ``"ce"`` or ``"dlr"`` (see ``dlr_loss``).
        target: (B,) target classes for the targeted DLR loss, or None.
        generator: for the random start.
        active: (B,) bool, the examples to attack (e.g. those still unbroken); the others count as broken.

    Returns:
        ``(x_adv, broken)``: for a broken example its first misclassified iterate, else the best-loss
        point found; and a (B,) bool tensor, True where some iterate was misclassified.

    Example:
        >>> x_adv, broken = apgd(model.eval(), x, y, eps=8/255, steps=100, loss="ce")
    """
    check_attack_args(eps=eps, step_size=eps, steps=steps)
    check_images(x)
    if model.training:
        raise ValueError("APGD needs the model in eval mode (model.eval()): with batch statistics, "
                         "retiring examples would change the others' outputs")
    if loss not in LOSSES:
        raise ValueError(f"unknown APGD loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if target is not None and loss != "dlr":
        raise ValueError("a targeted APGD uses the DLR loss (loss='dlr')")
    loss_fn = LOSSES[loss]
    x = x.detach()
    start = _random_start(x, eps, generator)
    result = start.clone()
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    if active is not None:
        broken |= ~active.to(x.device)
    index = torch.nonzero(~broken).squeeze(1)
    if len(index) == 0 or steps == 0:
        return result, broken

    shape = (-1, *[1] * (x.dim() - 1))
    xc, yc = x[index], y[index]
    tc = target[index] if target is not None else None
    x_adv = start[index]
    marks = set(checkpoints(steps)[1:])
    last_mark = 0

    def evaluate(point):
        point = point.detach().requires_grad_(True)
        logits = model(point)
        values = loss_fn(logits, yc, tc)
        (grad,) = torch.autograd.grad(values.sum(), point)
        return values.detach(), grad.detach(), logits.argmax(1) != yc

    def retire(keep: torch.Tensor):
        nonlocal index, xc, yc, tc
        index, xc, yc = index[keep], xc[keep], yc[keep]
        tc = tc[keep] if tc is not None else None

    values, grad, wrong = evaluate(x_adv)
    result[index[wrong]], broken[index[wrong]] = x_adv[wrong], True
    keep = ~wrong
    retire(keep)
    x_adv, values, grad = x_adv[keep], values[keep], grad[keep]
    step = torch.full((len(index),), 2.0 * eps, device=x.device, dtype=x.dtype)
    best_x, best_value, best_grad = x_adv.clone(), values.clone(), grad.clone()
    previous = x_adv.clone()
    increases = torch.zeros(len(index), device=x.device)
    last_value = values.clone()
    best_at_mark = best_value.clone()
    halved_at_mark = torch.zeros(len(index), dtype=torch.bool, device=x.device)

    name = "APGD-T" if target is not None else f"APGD-{loss.upper()}"
    for i in range(steps):
        if len(index) == 0:
            break
        attack_step(name, i + 1, steps)
        with torch.no_grad():
            z = _project(x_adv + step.view(shape) * grad.sign(), xc, eps)
            a = ALPHA if i > 0 else 1.0
            moved = _project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - previous), xc, eps)
            previous, x_adv = x_adv, moved
        values, grad, wrong = evaluate(x_adv)
        with torch.no_grad():
            result[index[wrong]], broken[index[wrong]] = x_adv[wrong], True
            increases += (values > last_value).float()
            last_value = values
            better = values > best_value
            best_x[better], best_value[better], best_grad[better] = x_adv[better], values[better], grad[better]
            if i + 1 in marks:  # a checkpoint: halve where progress stalled, and restart from the best point
                since = i + 1 - last_mark
                stalled = increases <= RHO * since
                stalled |= ~halved_at_mark & (best_at_mark >= best_value)
                step[stalled] /= 2
                x_adv[stalled], grad[stalled] = best_x[stalled], best_grad[stalled]
                previous[stalled] = best_x[stalled]
                halved_at_mark, best_at_mark = stalled, best_value.clone()
                increases.zero_()
                last_mark = i + 1
            keep = ~wrong
            if not keep.all():
                retire(keep)
                x_adv, previous, grad, step = x_adv[keep], previous[keep], grad[keep], step[keep]
                best_x, best_value, best_grad = best_x[keep], best_value[keep], best_grad[keep]
                increases, last_value = increases[keep], last_value[keep]
                best_at_mark, halved_at_mark = best_at_mark[keep], halved_at_mark[keep]
    result[index] = best_x.detach() if len(index) else result[index]
    return result.detach(), broken


def target_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_targets: int) -> list[torch.Tensor]:
    """APGD-T's targets: for each rank r = 1..n_targets, the r-th highest clean logit other than the true class."""
    with torch.no_grad():
        logits = model(x).float()
    logits.scatter_(1, y[:, None], -float("inf"))
    ordered = logits.argsort(dim=1, descending=True)
    n_targets = min(n_targets, logits.shape[1] - 1)
    return [ordered[:, r] for r in range(n_targets)]


def apgd_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 100,
    n_targets: int = 9,
    generator: torch.Generator | None = None,
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD-T: APGD with the targeted DLR loss, once for each of the ``n_targets`` most likely wrong classes
    (at most classes - 1; Croce & Hein use 9), on the examples that are still unbroken.

    Example:
        >>> x_adv, broken = apgd_targeted(model.eval(), x, y, eps=8/255, steps=100, n_targets=9)
    """
    if isinstance(n_targets, bool) or not isinstance(n_targets, int) or n_targets < 1:
        raise ValueError(f"n_targets must be an integer >= 1, got {n_targets!r}")
    check_images(x)
    x = x.detach()
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    if active is not None:
        broken |= ~active.to(x.device)
    result = x.clone()
    for target in target_classes(model, x, y, n_targets):
        if broken.all():
            break
        x_adv, now = apgd(model, x, y, eps=eps, steps=steps, loss="dlr", target=target, generator=generator,
                          active=~broken)
        new = now & ~broken
        result[new] = x_adv[new]
        broken |= now
    return result.detach(), broken
