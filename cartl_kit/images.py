"""One dataset split in memory (`ImageData`) and the tensor conversions applied to its images (reference §2).

Images are kept as tensors N×C×H×W: uint8 (0..255) where the source is 8-bit, float32 in [0, 1]
otherwise, and become float32 in [0, 1] one batch at a time (`as_float`). `to_channels` adapts grey ↔
RGB and `resize_images` the size, so a model trained on one dataset can see another. Nothing here
normalises: the model owns its normaliser (STYLE rule 1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .augment import Augmentation

SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False, repr=False)
class ImageData:
    """One split of one dataset held in memory.

    Attributes:
        name: the canonical name (``mnist5k[5-9]@20/class``).
        split: ``"train"`` or ``"test"``.
        images: (N, C, H, W) uint8 in 0..255, or float32 in [0, 1].
        labels: (N,) int64 in 0..num_classes-1.
        classes: class names; label i is ``classes[i]``.
        augmentation: the training augmentation policy of this dataset (None on the test split).

    Indexing gives ``(float32 image (C, H, W) in [0, 1], int label)``, so an ImageData also works as a
    map-style ``torch.utils.data.Dataset``.

    >>> ImageData("toy", "test", torch.zeros(2, 1, 28, 28), torch.tensor([0, 1]), ("a", "b")).image_shape
    (1, 28, 28)
    """

    name: str
    split: str
    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    augmentation: Augmentation | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images must be N×C×H×W uint8 or float32, got {tuple(self.images.shape)} "
                             f"{self.images.dtype}")
        if self.labels.ndim != 1 or self.labels.dtype != torch.int64 or len(self.labels) != len(self.images):
            raise ValueError("labels must be int64 of shape (N,) matching images")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        floats = self.images.is_floating_point() and len(self.images)
        if floats and not 0.0 <= float(self.images.min()) <= float(self.images.max()) <= 1.0:
            raise ValueError("float images must lie in [0, 1]")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise ValueError(f"labels must lie in 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return as_float(self.images[index]), int(self.labels[index])

    def __repr__(self) -> str:
        return (f"ImageData(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape={self.image_shape}, dtype={self.images.dtype}, classes={self.num_classes})")

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are 0..num_classes-1)."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Channels per image (1 grey, 3 RGB)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return self.channels, *self.image_size

    def class_counts(self) -> list[int]:
        """Number of images of each class, indexed by label."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def take(self, indices: Tensor | np.ndarray | Sequence[int], *, name: str | None = None) -> ImageData:
        """The images at ``indices`` (in that order) as a new ImageData with the same classes.

        Args:
            indices: integer positions into this split.
            name: name of the result; defaults to this one's.

        Returns:
            A new ImageData (copied tensors).
        """
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return replace(self, name=name or self.name, images=self.images[idx], labels=self.labels[idx])


def as_float(images: Tensor) -> Tensor:
    """Images as a new float32 tensor in [0, 1] (uint8 is divided by 255; float is copied).

    Args:
        images: uint8 (0..255) or float tensor of any shape.

    Returns:
        float32 tensor of the same shape.

    >>> as_float(torch.tensor([0, 255], dtype=torch.uint8))
    tensor([0., 1.])
    """
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32, copy=True)


def to_channels(images: Tensor, channels: int) -> Tensor:
    """Adapt grey ↔ RGB so a model trained on one can see the other.

    Grey → RGB repeats the channel (exact). RGB → grey takes the ITU-R 601 luma
    0.299 R + 0.587 G + 0.114 B, as PIL's ``convert("L")`` does; uint8 input is rounded back to uint8.

    Args:
        images: (..., C, H, W) with C in {1, 3}, uint8 or float.
        channels: 1 or 3.

    Returns:
        (..., channels, H, W) of the same dtype (the input itself when C == channels).

    >>> to_channels(torch.zeros(2, 1, 28, 28), 3).shape
    torch.Size([2, 3, 28, 28])
    """
    have = images.shape[-3]
    if channels == have:
        return images
    if have == 1 and channels == 3:
        return images.repeat_interleave(3, dim=-3)
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(3, 1, 1)
        grey = (images.to(torch.float32) * weights).sum(dim=-3, keepdim=True)
        if images.dtype == torch.uint8:
            return grey.round_().clamp_(0, 255).to(torch.uint8)
        return grey.to(images.dtype)
    raise ValueError(f"can only convert between 1 and 3 channels, not {have} → {channels}")


def resize_images(images: Tensor, size: int) -> Tensor:
    """Resize every image to size×size (bilinear; antialiased when shrinking).

    Args:
        images: (N, C, H, W) uint8 or float.
        size: the new height and width.

    Returns:
        (N, C, size, size) of the same dtype (uint8 is rounded).
    """
    if images.shape[-2:] == (size, size):
        return images
    shrink = size < max(images.shape[-2:])
    out = F.interpolate(images.to(torch.float32), size=(size, size), mode="bilinear",
                        align_corners=False, antialias=shrink)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.clamp_(0.0, 1.0).to(images.dtype)


__all__ = ["ImageData", "SPLITS", "as_float", "resize_images", "to_channels"]
