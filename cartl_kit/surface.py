"""The loss around a test image, along the direction a first-order attack takes and along a random one.

Gradient masking shows in the loss surface: a model whose small-step gradients mislead has a loss that stays
flat (or even falls) along its own gradient's sign near x, while a large step, or a random direction, finds
misclassified points; a model that is robust in earnest has a loss that rises steadily along the gradient and
barely moves along a random direction. ``loss_along_attack`` measures both on a seeded sample:

    >>> curve = loss_along_attack(model.eval(), test_split, eps=0.3)
    >>> curve.pivot(index="t", columns="direction", values="loss")

Each image x moves to clip(x + t·ε·s, 0, 1) for t from 0 to 1, with s = sign(∇ₓ CE(f(x), y)) (FGSM's direction,
taken once at x) or a seeded random ±1 pattern.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import check_attack_args
from .data import sample
from .images import ImageData, as_float

DIRECTIONS = ("gradient sign", "random sign")


def loss_along_attack(model: nn.Module, data: ImageData, *, eps: float, points: int = 11, max_examples: int = 200,
                      seed: int = 0):
    """Mean cross-entropy and accuracy of ``model`` (eval mode) at x + t·ε·s, t = 0 … 1 in ``points`` steps, for
    s the gradient sign at x and a random sign; a pandas DataFrame with columns ``t``, ``direction``, ``loss``
    and ``accuracy`` (``points`` rows per direction), over a seeded sample of ``max_examples`` images."""
    import pandas as pd
    check_attack_args(eps=eps, step_size=eps, steps=1)
    if model.training:
        raise ValueError("the loss surface is measured on a trained model in eval mode: call model.eval() first")
    if points < 2:
        raise ValueError(f"points must be at least 2 (t = 0 and t = 1), got {points}")
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    chosen = sample(data, max_examples, seed=seed)
    x = as_float(chosen.images).to(device)
    y = chosen.labels.to(device)
    x_grad = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_grad), y, reduction="sum"), x_grad)
    generator = torch.Generator().manual_seed(seed)
    random_sign = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(device, x.dtype)
    rows = []
    with torch.no_grad():
        for name, direction in zip(DIRECTIONS, (grad.sign(), random_sign)):
            for t in torch.linspace(0, 1, points).tolist():
                logits = model((x + t * eps * direction).clamp(0, 1))
                rows.append({"t": round(t, 6), "direction": name,
                             "loss": F.cross_entropy(logits, y).item(),
                             "accuracy": (logits.argmax(1) == y).float().mean().item()})
    return pd.DataFrame(rows)


__all__ = ["DIRECTIONS", "loss_along_attack"]
