"""Readers of the paper's datasets in torchvision's on-disk layout: CIFAR-10/100, SVHN, GTSRB (reference §2).

torchvision downloads and extracts (its URLs, checksums and folder layout). Reading is done here by small
readers of the same files, because torchvision's CIFAR and SVHN classes re-hash every file (MD5) on each
construction: that costs seconds per load and rejects the tiny files the tests write in the real format.
Checksums are verified on download by torchvision and on request here (verify=True).

Files are data, never code: CIFAR pickles go through `CifarUnpickler`, which admits only numpy's array
reconstructors, and GTSRB's test CSV may only name files inside its image folder (`inside_folder`).
A reader raises `DatasetNotAvailable` when files are absent and `DatasetCorrupt` when they are damaged.
"""

from __future__ import annotations

import csv
import functools
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

DATA_ENV_VAR = "CARTL_DATA"  # overrides the default data folder (see cartl_kit.data.default_data_root)

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
DIGIT_CLASSES = tuple(str(d) for d in range(10))  # SVHN, mnist5k and digits


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
# Presence and checksums
# ---------------------------------------------------------------------------------------------------

def ensure_present(dataset: str, split: str, root: Path, folder: Path, required: Sequence[Path], *,
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


def verify_md5(dataset: str, path: Path, md5: str) -> None:
    from torchvision.datasets.utils import check_md5
    if not check_md5(path, md5):
        raise DatasetCorrupt(dataset, path, "its MD5 checksum differs from the published one")


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 and CIFAR-100: python pickles, read by a restricted unpickler
# ---------------------------------------------------------------------------------------------------

@functools.cache
def _cifar_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR python batch names: numpy's array and scalar reconstructors.

    Real batches were pickled by Python 2 with numpy < 2 (``numpy.core``); numpy 2 writes ``numpy._core``.
    ``_codecs.encode`` is how Python 3 writes bytes at protocols 0-2, ``_frombuffer`` how numpy writes arrays
    at protocol 5. All of them only build arrays, dtypes and bytes from data; none runs code it is given.
    """
    import importlib
    try:
        multiarray, numeric = (importlib.import_module(f"numpy._core.{m}") for m in ("multiarray", "numeric"))
    except ImportError:  # numpy < 2
        multiarray, numeric = (importlib.import_module(f"numpy.core.{m}") for m in ("multiarray", "numeric"))
    import _codecs
    admitted = {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar}
    table: dict[tuple[str, str], object] = {(f"{package}.multiarray", name): value
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


def read_cifar(dataset: str, root: Path, split: str, *, download: bool, verify: bool,
               hundred: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """One split of CIFAR-10, or of CIFAR-100 with its fine labels (``hundred=True``), from ``root``.

    Returns:
        (images (N, 3, 32, 32) uint8, labels (N,) int64, class names); absent files are downloaded
        through torchvision when ``download`` is True.
    """
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
    ensure_present(dataset, split, root, folder, paths, url=url, download=download, fetch=fetch,
                    how_to=f"download {url} and extract it in {root} so that {paths[0]} exists")
    if verify:
        from torchvision.datasets import CIFAR10, CIFAR100
        tv = CIFAR100 if hundred else CIFAR10
        for name, md5 in tv.train_list + tv.test_list + [[tv.meta["filename"], tv.meta["md5"]]]:
            if name in files or name == meta_file:
                verify_md5(dataset, folder / name, md5)

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


# ---------------------------------------------------------------------------------------------------
# SVHN (.mat) and GTSRB (.ppm in class folders, test labels in a CSV)
# ---------------------------------------------------------------------------------------------------

def read_svhn(dataset: str, root: Path, split: str, *, download: bool,
              verify: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """One split of SVHN from ``root/svhn``: (images (N, 3, 32, 32) uint8, labels (N,) int64 with digit 0
    as label 0, class names)."""
    folder = root / "svhn"
    path = folder / f"{split}_32x32.mat"

    def fetch() -> object:
        from torchvision.datasets import SVHN
        return SVHN(str(folder), split=split, download=True)

    ensure_present(dataset, split, root, folder, [path], url=SVHN_URLS[split], download=download,
                    fetch=fetch, how_to=f"download {SVHN_URLS[split]} into {folder}")
    if verify:
        from torchvision.datasets import SVHN
        verify_md5(dataset, path, SVHN.split_list[split][2])
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
    return torch.from_numpy(images), torch.from_numpy(labels), DIGIT_CLASSES


def _decode_gtsrb(dataset: str, path: str) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((GTSRB_SIZE, GTSRB_SIZE), Image.Resampling.BILINEAR)
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


def read_gtsrb(dataset: str, root: Path, split: str, *, download: bool,
               verify: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """One split of GTSRB from ``root/gtsrb``, every image resized to 32×32: (images (N, 3, 32, 32) uint8,
    labels (N,) int64 in 0..42, class names). ``verify`` is accepted for the common signature (no MD5 here)."""
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

    ensure_present(dataset, split, root, base, required, url=archives, download=download, fetch=fetch,
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


__all__ = ["CIFAR100_URL", "CIFAR10_URL", "CifarUnpickler", "DATA_ENV_VAR", "DIGIT_CLASSES", "DatasetCorrupt",
           "DatasetNotAvailable", "GTSRB_ARCHIVES", "GTSRB_BASE_URL", "GTSRB_CLASSES", "GTSRB_SIZE", "SVHN_URLS",
           "ensure_present", "inside_folder", "read_cifar", "read_gtsrb", "read_svhn", "verify_md5"]
