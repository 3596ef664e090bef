"""Datasets by name: name spelling, the registry lookup, statistics, the data folder, loading (reference §2).

Holds `load_dataset`, `list_datasets`, the mean/std table (`dataset_stats`), the data folder
(`default_data_root`), class selection and subsets (`select_classes`, `subsample`, `sample`). The other
parts of the pipeline live beside it; the names they export are re-exported here:

- `cartl_kit.images`: the in-memory split `ImageData` and its conversions (`as_float`, `to_channels`);
- `cartl_kit.sources`: the embedded datasets and the registry; `cartl_kit.paper_data`: the readers of
  CIFAR, SVHN and GTSRB files and their errors (`DatasetNotAvailable`, `DatasetCorrupt`);
- `cartl_kit.augment`: the training augmentation (`Augmentation`);
- `cartl_kit.loaders`: batches (`BatchLoader`, `make_loader`, `make_loaders`).

Name spelling: ``<dataset>[<classes>]@<subset>``, both parts optional.

- ``mnist5k[0-4]``, ``mnist5k[5-9]``, ``cifar10[0,2,7]``, ``cifar100[0-9,20]``: keep those classes and
  renumber them 0..K-1 in the order written (``mnist5k[5-9]`` maps digit 5 to label 0).
- ``cifar10@50/class``: a seeded subset of 50 training images per class; ``cifar10@10%``: 10 % of each
  class. A small-data name describes a training task: its test split is the full test set, as in the
  reference's ``cifar10(0.1)``. The keyword forms are ``classes=``, ``per_class=`` and ``fraction=``.
- ``mnist5k[5-9]@20/class`` combines both (classes are selected first).

The default transfer scenario is `DEFAULT_SOURCE` → `DEFAULT_TARGET` (mnist5k digits 0–4 → 5–9).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from .augment import CIFAR_AUGMENTATION, NO_AUGMENTATION, AugmentParams, Augmentation
from .images import SPLITS, ImageData, as_float, resize_images, to_channels
from .loaders import BatchLoader, make_loader, make_loaders
from .paper_data import (CIFAR10_URL, CIFAR100_URL, DATA_ENV_VAR, GTSRB_ARCHIVES, GTSRB_BASE_URL, GTSRB_CLASSES,
                         GTSRB_SIZE, SVHN_URLS, CifarUnpickler, DatasetCorrupt, DatasetNotAvailable,
                         inside_folder)
from .sources import REGISTRY, SPLIT_SEED, TEST_FRACTION, DatasetSource, stratified_split

PathLike = Union[str, os.PathLike]
PACKAGE_DIR = Path(__file__).resolve().parent  # the installed (or checked-out) cartl_kit folder

DEFAULT_SOURCE = "mnist5k[0-4]"
DEFAULT_TARGET = "mnist5k[5-9]"

# Mean/std per channel of each dataset's training images in [0, 1]. The first five are the reference's
# constants; mnist5k and digits were computed here from their train split (see tests/test_data.py).
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar100": ((0.50708, 0.48655, 0.44092), (0.26733, 0.25644, 0.27615)),
    "cifar10": ((0.49140, 0.48216, 0.44653), (0.24703, 0.24348, 0.26159)),
    "svhn": ((0.43768, 0.44377, 0.47280), (0.19803, 0.20102, 0.19704)),
    "mnist": ((0.1307,), (0.3081,)),
    "gtsrb": ((0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669)),
    "mnist5k": ((0.13128,), (0.30848,)),
    "digits": ((0.30531,), (0.37585,)),  # at 8×8; upsampled to 28×28 the std is 0.324
    "digits28": ((0.30531,), (0.32433,)),  # its 1,438 training images
    "fashion": ((0.28604,), (0.35302,)),  # the 60,000 training images (tests/test_fashion.py checks it)
}


# ---------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetName:
    """A parsed dataset name: base dataset, optional class selection, optional training subset."""

    base: str
    classes: tuple[int, ...] | None = None
    per_class: int | None = None
    fraction: float | None = None

    def __str__(self) -> str:
        text = self.base
        if self.classes is not None:
            text += f"[{format_classes(self.classes)}]"
        if self.per_class is not None:
            text += f"@{self.per_class}/class"
        if self.fraction is not None:
            text += f"@{self.fraction * 100:g}%"
        return text


_NAME_RE = re.compile(r"^(?P<base>[a-z0-9_]+)(?:\[(?P<classes>[^\]]*)\])?(?:@(?P<subset>.+))?$")


def parse_name(name: str) -> DatasetName:
    """Split a dataset name into its parts (the base name is not checked here).

    Args:
        name: e.g. ``"mnist5k[5-9]"``, ``"cifar10@10%"``, ``"cifar10[0,2,7]@50/class"``.

    Returns:
        The parsed `DatasetName`.

    Raises:
        ValueError: when the spelling is not understood.

    >>> parse_name("mnist5k[5-9]@20/class")
    DatasetName(base='mnist5k', classes=(5, 6, 7, 8, 9), per_class=20, fraction=None)
    """
    match = _NAME_RE.match(name.strip().lower())
    if match is None:
        raise ValueError(f"cannot read dataset name {name!r}; expected <dataset>[<classes>]@<subset>, "
                         "e.g. 'mnist5k[5-9]', 'cifar10[0,2,7]', 'cifar10@50/class', 'cifar10@10%'; "
                         f"known datasets: {', '.join(REGISTRY)}")
    classes = None if match["classes"] is None else _parse_classes(match["classes"], name)
    per_class, fraction = (None, None) if match["subset"] is None else _parse_subset(match["subset"], name)
    return DatasetName(match["base"], classes, per_class, fraction)


def _parse_classes(text: str, name: str) -> tuple[int, ...]:
    classes: list[int] = []
    for item in text.replace(" ", "").split(","):
        bounds = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if bounds is None:
            raise ValueError(f"cannot read class selection [{text}] in {name!r}; use e.g. [0-4] or [0,2,7]")
        low, high = int(bounds[1]), int(bounds[2] or bounds[1])
        if high < low:
            raise ValueError(f"empty class range {item!r} in {name!r}")
        classes.extend(range(low, high + 1))
    return _check_class_list(classes)


def _check_class_list(classes: Sequence[int]) -> tuple[int, ...]:
    classes = tuple(int(c) for c in classes)
    if not classes:
        raise ValueError("the class selection is empty")
    if len(set(classes)) != len(classes):
        raise ValueError(f"the class selection {list(classes)} repeats a class")
    if min(classes) < 0:
        raise ValueError(f"the class selection {list(classes)} has a negative class")
    return classes


def _parse_subset(text: str, name: str) -> tuple[int | None, float | None]:
    if per_class := re.fullmatch(r"(\d+)/class", text):
        return int(per_class[1]), None
    if percent := re.fullmatch(r"(\d+(?:\.\d+)?)%", text):
        return None, float(percent[1]) / 100
    raise ValueError(f"cannot read subset @{text} in {name!r}; use @50/class or @10%")


def format_classes(classes: Sequence[int]) -> str:
    """Write a class list compactly: runs of consecutive ascending classes become ``a-b``.

    Args:
        classes: class ids in the order they are renumbered.

    Returns:
        The text between the brackets of a dataset name.

    >>> format_classes([5, 6, 7, 8, 9]), format_classes([0, 2, 7])
    ('5-9', '0,2,7')
    """
    parts, start = [], 0
    for i in range(1, len(classes) + 1):
        if i == len(classes) or classes[i] != classes[i - 1] + 1:
            low, high = classes[start], classes[i - 1]
            parts.append(str(low) if low == high else f"{low}-{high}" if high > low + 1 else f"{low},{high}")
            start = i
    return ",".join(parts)


# ---------------------------------------------------------------------------------------------------
# Registry lookup, data folder, statistics
# ---------------------------------------------------------------------------------------------------

def list_datasets() -> dict[str, str]:
    """The dataset names `load_dataset` accepts, each with a one-line description.

    Returns:
        name → description (class selection and subsets are spelled on top of these names).

    >>> "mnist5k" in list_datasets()
    True
    """
    return {name: entry.description for name, entry in REGISTRY.items()}


def _entry(base: str) -> DatasetSource:
    if base not in REGISTRY:
        raise ValueError(f"unknown dataset {base!r}; known datasets: {', '.join(REGISTRY)}")
    return REGISTRY[base]


def default_data_root() -> Path:
    """The data folder used when ``root=`` is not given; the first of these rules that applies:

    1. ``$CARTL_DATA``, when that environment variable is set (and not empty);
    2. the checkout's ``data/``, when the package sits in a source checkout: the folder above
       `PACKAGE_DIR` holds ``pyproject.toml`` and a ``data/`` folder (an editable install, or a clone);
    3. the user's cache folder, ``$XDG_CACHE_HOME/cartl_kit/data`` (``~/.cache/cartl_kit/data`` when
       ``XDG_CACHE_HOME`` is unset), for a kit installed by pip into site-packages.

    Returns:
        An absolute path (not created here; the paper's readers create it when they download).

    >>> default_data_root().name
    'data'
    """
    if os.environ.get(DATA_ENV_VAR):
        return Path(os.environ[DATA_ENV_VAR]).expanduser().resolve()
    checkout = PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "data").is_dir():
        return (checkout / "data").resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser().resolve() / "cartl_kit" / "data"


def data_root(root: PathLike | None = None) -> Path:
    """The folder datasets live in: ``root`` if given, else `default_data_root()`.

    Args:
        root: an explicit folder (wins over everything).

    Returns:
        The absolute path (not created here).
    """
    if root is None:
        return default_data_root()
    return Path(root).expanduser().resolve()


def dataset_stats(name: str, *, channels: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a dataset, for the normaliser inside a model built for it.

    Class selections and subsets use their base dataset's values (``mnist5k[0-4]`` → mnist5k). The
    reference normalised every *target* with the CIFAR-100 source's statistics; here the target model
    keeps its teacher's normaliser, so these are only looked up when a model is created for a source.

    Args:
        name: a dataset name, or ``"mnist"`` (the reference's MNIST constants). ``digits`` values are
            for its native 8×8 images (upsampled to 28×28 the std is 0.324, the mean unchanged).
        channels: 3 repeats grey statistics per channel (exact for a repeated grey channel).

    Returns:
        (mean, std), tuples with one value per channel.

    >>> dataset_stats("cifar100")[0]
    (0.50708, 0.48655, 0.44092)
    """
    base = parse_name(name).base
    if base not in DATASET_STATS:
        raise ValueError(f"no statistics for {base!r}; known: {', '.join(DATASET_STATS)}")
    mean, std = DATASET_STATS[base]
    if channels is None or channels == len(mean):
        return mean, std
    if len(mean) == 1 and channels == 3:
        return mean * 3, std * 3
    raise ValueError(f"{base} statistics have {len(mean)} channel(s); cannot give {channels}")


# ---------------------------------------------------------------------------------------------------
# Class selection, subsets, loading
# ---------------------------------------------------------------------------------------------------

def select_classes(data: ImageData, classes: Sequence[int]) -> ImageData:
    """Keep only the given classes and renumber them 0..K-1 in the order given.

    Args:
        data: a loaded split.
        classes: labels of ``data`` to keep; ``classes[i]`` becomes label i.

    Returns:
        A new ImageData named ``<name>[<classes>]``.

    >>> select_classes(load_dataset("mnist5k", split="test"), [5, 6]).classes
    ('5', '6')
    """
    classes = _check_class_list(classes)
    if max(classes) >= data.num_classes:
        raise ValueError(f"{data.name} has classes 0..{data.num_classes - 1}; cannot select {list(classes)}")
    mapping = torch.full((data.num_classes,), -1, dtype=torch.int64)
    mapping[list(classes)] = torch.arange(len(classes))
    keep = torch.nonzero(mapping[data.labels] >= 0).flatten()
    return replace(data, name=f"{data.name}[{format_classes(classes)}]", images=data.images[keep],
                   labels=mapping[data.labels[keep]], classes=tuple(data.classes[c] for c in classes))


def subsample(data: ImageData, *, per_class: int | None = None, fraction: float | None = None,
              seed: int = 0) -> ImageData:
    """A seeded small-data subset: ``per_class`` images of every class, or ``fraction`` of each class.

    Class c draws with ``np.random.default_rng([seed, c])``; a fraction keeps round(fraction · count)
    images of each class (at least one). Dataset order is kept. (The reference kept the first r·5000
    CIFAR-10 images of each class and froze one augmented copy; here the subset is random and augmented
    afresh every epoch.)

    Args:
        data: a loaded split.
        per_class: images per class (every class must have that many).
        fraction: share of each class, in (0, 1].
        seed: selects which images.

    Returns:
        A new ImageData named ``<name>@<n>/class`` or ``<name>@<p>%``.
    """
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class and fraction")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    share = 0.0 if fraction is None else fraction
    labels = data.labels.numpy()
    chosen = []
    for c in range(data.num_classes):
        members = np.flatnonzero(labels == c)
        n = per_class if per_class is not None else max(1, int(math.floor(share * len(members) + 0.5)))
        if n > len(members):
            raise ValueError(f"{data.name} {data.split} has {len(members)} images of class {c} "
                             f"({data.classes[c]}), fewer than per_class={n}")
        chosen.append(np.random.default_rng([seed, c]).permutation(members)[:n])
    suffix = f"@{per_class}/class" if per_class is not None else f"@{share * 100:g}%"
    return data.take(np.sort(np.concatenate(chosen)), name=data.name + suffix)


def sample(data: ImageData, n: int, *, seed: int = 0) -> ImageData:
    """A seeded random subset of ``n`` images (all of them when n >= len(data)), kept in dataset order.

    Use it instead of "the first n": the embedded test splits are ordered by class, so their first n
    images are mostly of the first classes.

    Args:
        data: a loaded split.
        n: how many images (at least 1).
        seed: selects which images (``np.random.default_rng(seed)``).

    Returns:
        A new ImageData named ``<name>~<n>`` (the same object when it already has at most n images).

    >>> sample(load_dataset("digits", split="test"), 100).labels.unique().numel()
    10
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (or evaluate everything), got {n!r}")
    if n >= len(data):
        return data
    chosen = np.random.default_rng(seed).choice(len(data), size=n, replace=False)
    return data.take(np.sort(chosen), name=f"{data.name}~{n}")


def load_dataset(name: str, *, split: str, root: PathLike | None = None, download: bool = True,
                 classes: Sequence[int] | None = None, per_class: int | None = None,
                 fraction: float | None = None, subset_seed: int = 0, size: int | None = None,
                 channels: int | None = None, verify: bool = False) -> ImageData:
    """Load one split of a dataset by name into memory.

    The paper's datasets are read from ``root`` in torchvision's layout and downloaded there by
    torchvision when a file is missing (``download=True``, the default); files already present are never
    downloaded again. The embedded datasets need no files.

    Args:
        name: see the module docstring, e.g. ``"mnist5k[5-9]"``, ``"cifar10@10%"``; `list_datasets()`.
        split: ``"train"`` or ``"test"``.
        root: data folder; defaults to `default_data_root()` ($CARTL_DATA, a checkout's data/, the cache).
        download: allow downloading absent files of the paper's datasets.
        classes: keyword form of ``[...]``: keep these classes, renumbered 0..K-1 in this order.
        per_class: keyword form of ``@n/class``. Unlike the name form it also applies to the test split.
        fraction: keyword form of ``@p%`` (0.1 = 10 %); same rule as ``per_class``.
        subset_seed: which images a subset keeps.
        size: resize images to size×size (e.g. ``digits`` with ``size=28``).
        channels: convert to 1 (grey) or 3 (RGB) channels, see `to_channels`.
        verify: check the files' MD5 against the published checksums first (CIFAR, SVHN).

    Returns:
        The split as an `ImageData`.

    Raises:
        ValueError: unknown name or split, bad spelling, impossible selection.
        DatasetNotAvailable: files absent and not downloadable (names dataset, folder, URL).
        DatasetCorrupt: a file exists but cannot be read.

    >>> load_dataset("mnist5k[0-4]", split="train").class_counts()
    [400, 400, 400, 400, 400]
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    parsed = parse_name(name)
    entry = _entry(parsed.base)
    if classes is not None and parsed.classes is not None:
        raise ValueError(f"classes given twice: in the name {name!r} and as classes={list(classes)}")
    name_subset = parsed.per_class is not None or parsed.fraction is not None
    if (per_class is not None or fraction is not None) and name_subset:
        raise ValueError(f"subset given twice: in the name {name!r} and as an argument")
    images, labels, class_names = entry.read(parsed.base, data_root(root), split, download=download,
                                              verify=verify)
    data = ImageData(parsed.base, split, images, labels, tuple(class_names),
                     entry.augmentation if split == "train" else None)
    selection = classes if classes is not None else parsed.classes
    if selection is not None:
        data = select_classes(data, selection)
    if per_class is not None or fraction is not None:
        data = subsample(data, per_class=per_class, fraction=fraction, seed=subset_seed)
    elif split == "train" and name_subset:
        data = subsample(data, per_class=parsed.per_class, fraction=parsed.fraction, seed=subset_seed)
    if size is not None:
        data = replace(data, images=resize_images(data.images, size))
    if channels is not None:
        data = replace(data, images=to_channels(data.images, channels))
    return data


__all__ = [  # defined here, then re-exported from images, augment, loaders, sources and paper_data
    "DATASET_STATS", "DEFAULT_SOURCE", "DEFAULT_TARGET", "DatasetName", "PACKAGE_DIR", "PathLike", "data_root",
    "dataset_stats", "default_data_root", "format_classes", "list_datasets", "load_dataset", "parse_name", "sample",
    "select_classes", "subsample", "AugmentParams", "Augmentation", "BatchLoader", "CIFAR100_URL", "CIFAR10_URL",
    "CIFAR_AUGMENTATION", "CifarUnpickler", "DATA_ENV_VAR", "DatasetCorrupt", "DatasetNotAvailable", "GTSRB_ARCHIVES",
    "GTSRB_BASE_URL", "GTSRB_CLASSES", "GTSRB_SIZE", "ImageData", "NO_AUGMENTATION", "SPLITS", "SPLIT_SEED",
    "SVHN_URLS", "TEST_FRACTION", "as_float", "inside_folder", "make_loader", "make_loaders", "resize_images",
    "stratified_split", "to_channels",
]
