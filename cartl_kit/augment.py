"""The reference's training augmentation as batched tensor operations (reference §2.2).

`Augmentation` composes random translation (crop with zero padding), horizontal flip and rotation into
one affine resampling per batch; `AugmentParams` is one batch's random draw. `CIFAR_AUGMENTATION` is the
reference's CIFAR policy, `NO_AUGMENTATION` the identity. Inputs and outputs are pixels in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class AugmentParams(NamedTuple):
    """The random draw for one batch: shifts in pixels, flips, angles in degrees, each of shape (B,)."""

    shift_x: Tensor
    shift_y: Tensor
    flip: Tensor
    angle: Tensor


@dataclass(frozen=True)
class Augmentation:
    """Random translation (crop with zero padding), horizontal flip and rotation, one resampling per batch.

    The reference's CIFAR pipeline is RandomCrop(32, padding=4) → RandomHorizontalFlip →
    RandomRotation(15), zero fill, nearest interpolation. Composed into one affine map per image and
    sampled once with `grid_sample`, it gives the same output for the same random draw without
    per-image Python work: output pixel p takes the input at flip(rotate(p)) + shift (integer shifts
    and flips alone are exact pixel copies).

    Args:
        crop_padding: maximum shift in pixels along each axis (RandomCrop's ``padding``); 0 disables.
        flip: flip horizontally with probability 1/2.
        max_rotation: rotation angle drawn uniformly from [-max_rotation, max_rotation] degrees.
        interpolation: ``"nearest"`` (torchvision's RandomRotation default) or ``"bilinear"``.

    Shape:
        x: (B, C, H, W) float in [0, 1] → same shape, same range.

    >>> Augmentation(crop_padding=4, flip=True)(torch.rand(8, 3, 32, 32), generator=torch.Generator()).shape
    torch.Size([8, 3, 32, 32])
    """

    crop_padding: int = 0
    flip: bool = False
    max_rotation: float = 0.0
    interpolation: str = "nearest"

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.max_rotation < 0:
            raise ValueError("crop_padding and max_rotation must be non-negative")
        if self.interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {self.interpolation!r}")

    @property
    def is_identity(self) -> bool:
        """True when the augmentation leaves every image unchanged."""
        return self.crop_padding == 0 and not self.flip and self.max_rotation == 0.0

    def sample(self, batch: int, *, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw the random parameters for a batch.

        Args:
            batch: number of images.
            generator: CPU generator (reproducible batches).

        Returns:
            `AugmentParams`: integer shifts in [-crop_padding, crop_padding], flip flags, angles.
        """
        p = self.crop_padding
        shift = torch.randint(-p, p + 1, (2, batch), generator=generator)
        flip = torch.rand(batch, generator=generator) < 0.5
        if not self.flip:
            flip = torch.zeros(batch, dtype=torch.bool)
        angle = (torch.rand(batch, generator=generator, dtype=torch.float64) * 2 - 1) * self.max_rotation
        return AugmentParams(shift[0], shift[1], flip, angle)

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Apply a drawn set of parameters.

        Args:
            x: float images (B, C, H, W).
            params: from `sample` with the same B.

        Returns:
            A new (B, C, H, W) tensor; pixels moved in from outside the image are 0.
        """
        batch, _, height, width = x.shape
        sign = 1.0 - 2.0 * params.flip.to(torch.float64)
        radians = params.angle.to(torch.float64) * (math.pi / 180)
        cos, sin = torch.cos(radians), torch.sin(radians)
        # theta maps output to input coordinates (flip∘rotation) in grid_sample's [-1, 1] units; the aspect
        # factors keep the rotation rigid in pixels for non-square images.
        theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = sign * cos
        theta[:, 0, 1] = -sign * sin * height / width
        theta[:, 1, 0] = sin * width / height
        theta[:, 1, 1] = cos
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # B×H×W×2, before the shift
        # The reference rotates the *cropped* image: what its rotation brings in from outside the crop
        # window is zero fill, not the neighbouring pixels of the original, hence this mask.
        inside = (grid.abs() <= 1).all(dim=-1).unsqueeze(1)  # B×1×H×W
        shift = torch.stack([params.shift_x * 2.0 / width, params.shift_y * 2.0 / height], dim=-1)
        grid = grid + shift.to(device=x.device, dtype=x.dtype).view(batch, 1, 1, 2)
        out = F.grid_sample(x, grid, mode=self.interpolation, padding_mode="zeros", align_corners=False)
        return out * inside

    def __call__(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch: `sample` then `apply` (the input itself when `is_identity`).

        Args:
            x: float images (B, C, H, W) in [0, 1].
            generator: CPU generator for the random parameters.

        Returns:
            The augmented batch, same shape and dtype.
        """
        if self.is_identity:
            return x
        return self.apply(x, self.sample(len(x), generator=generator))


NO_AUGMENTATION = Augmentation()
CIFAR_AUGMENTATION = Augmentation(crop_padding=4, flip=True, max_rotation=15.0)


__all__ = ["AugmentParams", "Augmentation", "CIFAR_AUGMENTATION", "NO_AUGMENTATION"]
