"""Batches from an in-memory split: `BatchLoader`, `make_loader`, `make_loaders` (reference §2).

A loader slices the split's tensors in the calling process, converts each batch to float32 in [0, 1] and
applies the training augmentation (`cartl_kit.augment`) on the device that receives the batch. Shuffling
and augmentation draw from seeded ``torch.Generator`` streams, so a loader is reproducible and resumable.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from .augment import Augmentation
from .images import ImageData, as_float


class BatchLoader:
    """Batches ``(x, y)`` from an in-memory ImageData: x float32 (B, C, H, W) in [0, 1], y int64 (B,).

    Shuffling and augmentation draw from two ``torch.Generator`` streams seeded by ``seed``, so a loader
    rebuilt with the same seed yields the same batches, and each pass over it (epoch) differs. On CPU it
    slices index tensors in the calling process (no worker processes: the work per batch is a gather and
    a division). On CUDA the uint8 dataset is copied to the GPU once (``preload``, the default) or
    batches travel from pinned memory; conversion and augmentation then run on the GPU.
    The last batch may be smaller (drop_last False); ``len(loader)`` is the number of batches.
    """

    def __init__(self, data: ImageData, *, batch_size: int, shuffle: bool,
                 augmentation: Augmentation | None, device: torch.device, seed: int,
                 preload: bool | None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.augmentation = None if augmentation is None or augmentation.is_identity else augmentation
        self.device = device
        cuda = device.type == "cuda"
        self.preload = cuda if preload is None else preload
        images, labels = data.images, data.labels
        if self.preload:
            images, labels = images.to(device), labels.to(device)
        elif cuda:
            images, labels = images.pin_memory(), labels.pin_memory()
        self._images, self._labels = images, labels
        order_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
        self._order_generator = torch.Generator().manual_seed(int(order_seed))
        self._augment_generator = torch.Generator().manual_seed(int(augment_seed))

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    @property
    def images(self) -> Tensor:
        """All images of the split as this loader holds them: (N, C, H, W) uint8 or float32, in dataset
        order, neither converted nor augmented; on the device when preloaded, pinned when bound for CUDA."""
        return self._images

    @property
    def labels(self) -> Tensor:
        """All labels of the split, (N,) int64 in dataset order, where `images` is."""
        return self._labels

    def state_dict(self) -> dict[str, Tensor]:
        """The random state of shuffling and augmentation, to resume training at an epoch boundary."""
        return {"order": self._order_generator.get_state(), "augment": self._augment_generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned: later passes repeat those of the saved loader."""
        self._order_generator.set_state(state["order"])
        self._augment_generator.set_state(state["augment"])

    def __repr__(self) -> str:
        return (f"BatchLoader({self.data.name!r} {self.data.split}, batches={len(self)}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"augment={self.augmentation is not None}, device={self.device})")

    def batch_indices(self) -> Iterator[Tensor | slice]:
        """The positions of each batch of the next pass (a shuffle is drawn per pass, when shuffling).

        ``cache.CachedFeatures`` replays these, so cached features come in exactly the loader's order.
        """
        n = len(self.data)
        order = torch.randperm(n, generator=self._order_generator) if self.shuffle else None
        if order is not None and self.preload:
            order = order.to(self.device)
        for start in range(0, n, self.batch_size):
            yield slice(start, start + self.batch_size) if order is None else order[start:start + self.batch_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index in self.batch_indices():
            x, y = self._images[index], self._labels[index]
            if x.device.type == "cpu" and self.device.type != "cpu":  # not preloaded: copy this batch over
                if self.device.type == "cuda" and not x.is_pinned():
                    x, y = x.pin_memory(), y.pin_memory()
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
            x = as_float(x)
            if self.augmentation is not None:
                x = self.augmentation(x, generator=self._augment_generator)
            yield x, y


def make_loader(data: ImageData, *, batch_size: int = 128, shuffle: bool | None = None,
                augment: bool | Augmentation = True, device: str | torch.device | None = None,
                seed: int = 0, preload: bool | None = None) -> BatchLoader:
    """An iterable of batches over one split.

    Args:
        data: the split to serve.
        batch_size: images per batch (the reference: 128).
        shuffle: reshuffle every pass; defaults to True for the train split, False for test.
        augment: True applies the dataset's training augmentation (train split only; none for SVHN,
            GTSRB, mnist5k, digits), False none, or an explicit `Augmentation` for a train split.
            The test split is never augmented.
        device: where batches are delivered (default CPU).
        seed: seeds shuffling and augmentation.
        preload: on CUDA, copy the whole split to the GPU once (default True there).

    Returns:
        A `BatchLoader`.

    >>> len(make_loader(load_dataset("mnist5k[0-4]", split="test"), batch_size=128))
    4
    """
    if isinstance(augment, Augmentation):
        if data.split != "train":
            raise ValueError("evaluation data is never augmented; pass an Augmentation for train splits")
        augmentation: Augmentation | None = augment
    else:
        augmentation = data.augmentation if augment and data.split == "train" else None
    device = torch.device(device) if device is not None else torch.device("cpu")
    if shuffle is None:
        shuffle = data.split == "train"
    return BatchLoader(data, batch_size=batch_size, shuffle=shuffle, augmentation=augmentation,
                       device=device, seed=seed, preload=preload)


def make_loaders(train: ImageData, test: ImageData, *, batch_size: int = 128,
                 eval_batch_size: int | None = None, augment: bool | Augmentation = True,
                 device: str | torch.device | None = None, seed: int = 0,
                 preload: bool | None = None) -> tuple[BatchLoader, BatchLoader]:
    """Training and evaluation loaders for a train/test pair.

    The training loader shuffles and augments (see `make_loader`); the evaluation loader keeps dataset
    order and never augments.

    Args:
        train: the training split.
        test: the evaluation split (same classes as ``train``).
        batch_size: training batch size (the reference: 128).
        eval_batch_size: evaluation batch size; defaults to ``batch_size``.
        augment: as in `make_loader`, for the training loader only.
        device: where batches are delivered (default CPU).
        seed: seeds the training loader's shuffling and augmentation.
        preload: as in `make_loader`.

    Returns:
        (train_loader, test_loader).

    >>> train_loader, test_loader = make_loaders(load_dataset("mnist5k[0-4]", split="train"),
    ...                                          load_dataset("mnist5k[0-4]", split="test"))
    """
    if train.classes != test.classes:
        raise ValueError(f"train ({train.name}) and test ({test.name}) have different classes: "
                         f"{train.classes} vs {test.classes}")
    train_loader = make_loader(train, batch_size=batch_size, shuffle=True, augment=augment, device=device,
                               seed=seed, preload=preload)
    test_loader = make_loader(test, batch_size=eval_batch_size or batch_size, shuffle=False, augment=False,
                              device=device, seed=seed, preload=preload)
    return train_loader, test_loader


__all__ = ["BatchLoader", "make_loader", "make_loaders"]
