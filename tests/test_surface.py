"""The loss along the attack's direction: a smooth model against a gradient-masked one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cartl_kit.images import ImageData
from cartl_kit.surface import loss_along_attack


def _data(n: int = 64) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    return ImageData("toy", "test", x, y, ("low", "high"))


class Linear(nn.Module):
    def __init__(self, scale: float = 1.0, masked: bool = False):
        super().__init__()
        self.scale, self.masked = scale, masked

    def forward(self, x):
        margin = (x.mean((1, 2, 3)) - 0.5) * 40 * self.scale
        if self.masked:  # a step function of the margin: no gradient, the same decisions
            margin = margin.sign() * 10 + 0 * margin
        return torch.stack([-margin, margin], 1)


def test_the_loss_rises_along_the_gradient_and_not_along_a_random_sign():
    curve = loss_along_attack(Linear().eval(), _data(), eps=0.2, points=5)
    grad = curve[curve.direction == "gradient sign"].set_index("t")
    rand = curve[curve.direction == "random sign"].set_index("t")
    assert list(grad.index) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert grad.loss.is_monotonic_increasing and grad.loss.iloc[-1] > 5 * grad.loss.iloc[0]
    assert grad.accuracy.iloc[0] == rand.accuracy.iloc[0] == 1.0 and grad.accuracy.iloc[-1] < 0.2
    assert rand.loss.iloc[-1] < grad.loss.iloc[-1] / 3


def test_a_masked_model_has_no_gradient_direction_so_its_curve_stays_put():
    """Zero gradient: sign(0) = 0, the gradient direction does not move the image at all."""
    curve = loss_along_attack(Linear(masked=True).eval(), _data(), eps=0.2, points=3)
    grad = curve[curve.direction == "gradient sign"]
    assert grad.loss.nunique() == 1 and grad.accuracy.nunique() == 1
    with pytest.raises(ValueError, match="eval mode"):
        loss_along_attack(Linear().train(), _data(), eps=0.2)
    with pytest.raises(ValueError, match="points must be at least 2"):
        loss_along_attack(Linear().eval(), _data(), eps=0.2, points=1)
