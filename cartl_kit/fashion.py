"""Fashion-MNIST (Xiao et al., 2017): 70,000 grey 28×28 images of 10 kinds of clothing, in the IDX format.

Where the files are looked for, in order (each split needs ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``,
gzipped or not):

1. ``<data root>/FashionMNIST/raw/``: torchvision's layout, where ``download=True`` puts them
   (``torchvision.datasets.FashionMNIST``, about 30 MB);
2. ``/usr/share/datasets/fashion-mnist/``: Debian's package ``dataset-fashion-mnist`` (MIT), the full set
   with no download (``apt-get install dataset-fashion-mnist``); ``CARTL_FASHION_DIR`` names another folder.

The reader checks the IDX headers (magic number, dimensions, counts), so a truncated or foreign file is
refused in one line (``DatasetCorrupt``), and a missing one says how to get it (``DatasetNotAvailable``).
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .paper_data import DatasetCorrupt, ensure_present, verify_md5

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FOLDER_ENV_VAR = "CARTL_FASHION_DIR"
URL = "https://github.com/zalandoresearch/fashion-mnist (torchvision.datasets.FashionMNIST)"
_MAGIC = {3: 0x00000803, 1: 0x00000801}  # IDX: unsigned bytes, 3 dimensions (images) or 1 (labels)


def _names(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def fashion_folders(root: Path) -> list[Path]:
    """The folders searched for the IDX files, in order (see the module docstring)."""
    system = Path(os.environ[FOLDER_ENV_VAR]) if os.environ.get(FOLDER_ENV_VAR) else DEBIAN_DIR
    return [root / "FashionMNIST" / "raw", system]


@functools.lru_cache(maxsize=4)  # a split's images and labels, train and test: each file is unzipped once
def _file_bytes(path: Path, modified_ns: int, size: int) -> bytes:
    """The (unzipped) bytes of ``path``; the modification time and size are the cache key's check for a changed file."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as handle:
        return handle.read()


def read_idx(dataset: str, path: Path, dims: int) -> np.ndarray:
    """An IDX array of unsigned bytes with ``dims`` dimensions; DatasetCorrupt for anything else. A file read
    before and not changed since is not read again (a reproduction loads the same split for every cell)."""
    try:
        stat = path.stat()
        raw = _file_bytes(path, stat.st_mtime_ns, stat.st_size)
    except (OSError, EOFError) as err:  # gzip: BadGzipFile (an OSError) or EOFError when truncated
        raise DatasetCorrupt(dataset, path, f"unreadable: {type(err).__name__}: {err}") from err
    if len(raw) < 4 + 4 * dims or int.from_bytes(raw[:4], "big") != _MAGIC[dims]:
        raise DatasetCorrupt(dataset, path, f"not an IDX file of {dims}-dimensional unsigned bytes")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    body = raw[4 + 4 * dims:]
    if len(body) != int(np.prod(shape)):
        raise DatasetCorrupt(dataset, path, f"the header says {shape}, the file holds {len(body)} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def read_fashion(dataset: str, root: Path, split: str, *, download: bool,
                 verify: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """One split of Fashion-MNIST: (images (N, 1, 28, 28) uint8, labels (N,) int64, class names)."""
    names = _names(split)
    folders = fashion_folders(root)
    found: list[Path | None] | None = None
    for folder in folders:  # the first folder holding both files
        paths = [_find(folder, n) for n in names]
        if all(paths):
            found = paths
            break
    if found is None:
        raw = folders[0]

        def fetch() -> object:
            from torchvision.datasets import FashionMNIST
            return FashionMNIST(str(root), train=split == "train", download=True)

        ensure_present(dataset, split, root, raw, [raw / f"{n}.gz" for n in names], url=URL, download=download,
                        fetch=fetch, how_to=f"`apt-get install dataset-fashion-mnist` (Debian, no download: "
                                            f"{folders[1]}), or put {names[0]}.gz and {names[1]}.gz in {raw}")
        found = [_find(raw, n) for n in names]
    images_path, labels_path = (p for p in found if p is not None)
    if verify and images_path.suffix == ".gz" and images_path.parent == folders[0]:  # torchvision's download
        # (Debian's package recompressed the same IDX files: its .gz checksums differ; the headers are checked)
        from torchvision.datasets import FashionMNIST
        md5 = dict(FashionMNIST.resources)
        for path in (images_path, labels_path):
            if path.name in md5:
                verify_md5(dataset, path, md5[path.name])
    images, labels = read_idx(dataset, images_path, 3), read_idx(dataset, labels_path, 1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DatasetCorrupt(dataset, images_path, f"{images.shape} images for {len(labels)} labels, not N×28×28")
    if len(labels) and labels.max() >= len(FASHION_CLASSES):
        raise DatasetCorrupt(dataset, labels_path, f"a label is {labels.max()}, outside 0..9")
    return (torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
            FASHION_CLASSES)


__all__ = ["DEBIAN_DIR", "FASHION_CLASSES", "FOLDER_ENV_VAR", "fashion_folders", "read_fashion", "read_idx"]
