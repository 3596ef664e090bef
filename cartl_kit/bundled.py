"""The notebooks and course labs that travel inside the package, and copying them into a user's folder.

A wheel carries ``notebooks/*.ipynb`` as ``cartl_kit.notebooks`` and ``labs/`` (the nbgrader sources and
configuration) as ``cartl_kit.labs`` (see ``pyproject.toml``); a source checkout reads the same files from
its folders. ``cartl-kit notebooks DIR`` and ``cartl-kit labs DIR`` call ``copy_bundle``.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

BUNDLES = {"notebooks": ("notebooks", "notebooks", ["*.ipynb"]),
           "labs": ("labs", "labs", ["nbgrader_config.py", "README.md", "source/*/*.ipynb"])}


def bundle_folder(kind: str) -> Path:
    """Where the ``kind`` ("notebooks" or "labs") files are: inside the installed package, else the checkout."""
    if kind not in BUNDLES:
        raise ValueError(f"unknown bundle {kind!r}; choose one of {sorted(BUNDLES)}")
    package, folder, _ = BUNDLES[kind]
    installed = Path(str(resources.files("cartl_kit") / package))  # a wheel puts them inside the package
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / folder  # a checkout (plain or editable): beside the package


def bundle_files(kind: str) -> list[Path]:
    """The files of bundle ``kind``, relative to its folder, sorted."""
    base = bundle_folder(kind)
    files = sorted({p.relative_to(base) for pattern in BUNDLES[kind][2] for p in base.glob(pattern) if p.is_file()})
    if not files:
        raise FileNotFoundError(f"the kit's {kind} are missing from {base}; reinstall cartl_kit")
    return files


def copy_bundle(kind: str, dest: str | os.PathLike, *, force: bool = False) -> list[Path]:
    """Copy the kit's ``kind`` ("notebooks" or "labs") into ``dest`` (created if missing); returns the new files.

    Nothing is overwritten unless ``force``: a file of the bundle already in ``dest`` is refused before any
    copy, with one line naming it.

    Example:
        >>> copy_bundle("notebooks", "my-cartl")  # then: jupyter lab my-cartl
    """
    if not isinstance(dest, (str, os.PathLike)) or os.fspath(dest) == "":
        raise ValueError(f"the destination {dest!r} is not a folder name; pass one, e.g. 'my-cartl'")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"the destination {dest} is a file; pass a folder (it is created if missing)")
    base, files = bundle_folder(kind), bundle_files(kind)
    clashes = [f for f in files if (dest / f).exists()]
    if clashes and not force:
        raise ValueError(f"{dest / clashes[0]} already exists ({len(clashes)} of the {len(files)} files would be "
                         f"overwritten); pass another folder, or --force to overwrite")
    for relative in files:
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base / relative, dest / relative)
    return [dest / f for f in files]
