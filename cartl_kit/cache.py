"""Fine-tuning on cached extractor features: the transfer fast path (exact where it applies).

A transfer-learning student trains only its last k blocks; the stem and blocks 1..L-k (the extractor)
are frozen. When the extractor's output for an image cannot change during fine-tuning, it can be
computed once for the whole training split, and every epoch then runs only the last k blocks:

- the extractor has no trainable parameter (always so for ``make_student``),
- its BatchNorm layers reuse the teacher's statistics (``FrozenBatchNorm2d``: the ``*-reuse`` cases;
  in the ``*-update`` cases the statistics change with every batch),
- no training augmentation (the images are the same every epoch),
- the step function only needs the model's output (``natural_step``: vanilla TL and NEFT; LwF also
  runs the teacher on the raw images, so it is not cached).

``feature_cache_blocker`` says why a configuration cannot be cached (or None), ``CachedFeatures`` replays a
``BatchLoader``'s batches in the same order from the cached features, and ``TunedTail`` runs the last
k blocks of the student on them. Results equal the plain path's up to floating-point rounding.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from .images import as_float
from .loaders import BatchLoader
from .models import WideResNet
from .transfer import extractor_modules


def feature_cache_blocker(student: WideResNet, *, k: int, loader, needs_images: bool = False) -> str | None:
    """Why fine-tuning ``student`` on ``loader`` cannot use cached features, or None if it can."""
    if needs_images:
        return "the step function needs the raw images (LwF runs the teacher on them, AFT attacks them)"
    if not isinstance(loader, BatchLoader):
        return "the loader is not a cartl_kit BatchLoader"
    if loader.augmentation is not None:
        return "the training images are augmented afresh every epoch"
    for module in extractor_modules(student, k=k):
        if any(p.requires_grad for p in module.parameters()):
            return "the extractor has trainable parameters"
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                return "the extractor's BatchNorm statistics are updated during fine-tuning (a *-update case)"
            if isinstance(m, nn.Dropout) and m.p > 0:
                return "the extractor has dropout"
    return None


class TunedTail(nn.Module):
    """The last k blocks of ``model`` as a module: ``forward(f) = model.forward_from(f, start=L-k)``.

    Its parameters are the model's own (training it trains the model); ``train()``/``eval()`` reach the
    whole model, as in the plain path.
    """

    def __init__(self, model: WideResNet, *, k: int) -> None:
        super().__init__()
        self.model = model
        self.start = model.split_index(k)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_from(features, start=self.start)


@torch.no_grad()
def extract(model: WideResNet, loader: BatchLoader, *, k: int, batch_size: int | None = None) -> torch.Tensor:
    """f^(L-k)(x) for every image of the loader's split, in dataset order, on the loader's device.

    ``batch_size`` defaults to the loader's (on a 2-core CPU, batches of 512 ran at half the speed of 64).
    """
    blocker = feature_cache_blocker(model, k=k, loader=loader)
    if blocker is not None:
        raise ValueError(f"the extractor's features cannot be cached: {blocker}")
    batch_size = batch_size or loader.batch_size
    start = model.split_index(k)
    images = loader.images
    parts = []
    for i in range(0, len(images), batch_size):
        x = as_float(images[i:i + batch_size].to(loader.device))
        parts.append(model.forward_features(x, upto=start))
    return torch.cat(parts)


class CachedFeatures:
    """Batches ``(f^(L-k)(x), y)`` in exactly the order a ``BatchLoader`` would serve ``(x, y)``.

    It shares the loader's shuffling generator, so the two are interchangeable epoch for epoch, and its
    ``state_dict`` is the loader's (checkpoints resume either way).
    """

    def __init__(self, loader: BatchLoader, features: torch.Tensor) -> None:
        if len(features) != len(loader.data):
            raise ValueError(f"{len(features)} features for {len(loader.data)} images")
        self.loader, self.features, self.labels = loader, features, loader.labels.to(features.device)

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in self.loader.batch_indices():
            if isinstance(index, torch.Tensor):
                index = index.to(self.features.device)
            yield self.features[index], self.labels[index]


__all__ = ["CachedFeatures", "TunedTail", "extract", "feature_cache_blocker"]
