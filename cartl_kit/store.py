"""The runs store on disk: where run folders live, their locks, atomic writes, and checked reads.

A run folder ``<root>/<slug>-<hash>/`` (see ``runs``) is written only through this module. Every write
holds the folder's lock (``flock`` on ``<run>/.lock``): two processes training one config train it once,
and evaluations recorded at the same time all land in ``metrics.json``. Files are created by a write to
a temporary name and a rename, so readers see the old file or the whole new one; temporary files a
killed write left are removed the next time the folder is written, and a full disk is one line. What is
read back is checked: ``config.json`` must hash to its folder's name, ``model.pt`` must be an intact
archive for the run to count as finished, accuracies in ``metrics.json`` must be fractions, and a file
that fails raises ``RunError`` naming it. ``machine()`` describes what a measurement ran on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import io
import json
import math
import os
import platform
import tempfile
import zipfile
from importlib import resources
from pathlib import Path
from typing import Callable, TypeGuard

import torch

from . import __version__
from .config import SourceConfig, TransferConfig, config_hash, from_dict

RUNS_ENV_VAR = "CARTL_RUNS"
SHIPPED_RUNS = Path(str(resources.files("cartl_kit") / "shipped_runs"))  # finished runs that ship with the kit (package data)
MODEL_FILE, CHECKPOINT_FILE, LOCK_FILE = "model.pt", "checkpoint.pt", ".lock"
NAME_MAX, PATH_MAX = 255, 4096  # Linux's limits on one path component and a whole path, in bytes
RUN_NAME_ROOM = 200  # bytes a run folder and its file names add below the runs root
CONVERGENCE_PREFIX = "convergence-"  # metrics.json key of a convergence report: the prefix + the evaluation's name
INTERPOLATION_PREFIX = "interp-a"  # an LP-FT run's evaluation of θ(α) (cartl_kit.interpolate): interp-a0.5-<evaluation>

Config = SourceConfig | TransferConfig


class RunError(ValueError):
    """A run folder is missing, unfinished, corrupt, or does not match its config."""


# --- the runs root -------------------------------------------------------------------------------

def check_root(root: str | os.PathLike | None = None, *, writable: bool = True) -> Path:
    """The runs folder: ``root``, else $CARTL_RUNS, else ``runs/``; refused with one line if it cannot hold runs.

    Refused: a value that is not a path, an empty one, an existing file, a path too long for the run
    folders below it and (with ``writable``) a folder, or the nearest existing folder above it, that
    refuses writes.

    Raises:
        RunError: naming the value and how to fix it.

    Example:
        >>> check_root("runs")
    """
    given = root if root is not None else os.environ.get(RUNS_ENV_VAR, "runs")
    what = f"the runs folder {_shown(given)}" + ("" if root is not None or RUNS_ENV_VAR not in os.environ
                                                 else f" (from ${RUNS_ENV_VAR})")
    if isinstance(given, bytes) or not isinstance(given, (str, os.PathLike)):
        raise RunError(f"{what} is not a path ({type(given).__name__}); pass a folder name such as 'runs'")
    if not isinstance(os.fspath(given), str) or "\0" in os.fspath(given):
        raise RunError(f"{what} is not a path (bytes or a NUL character); pass a folder name such as 'runs'")
    if os.fspath(given) == "":
        raise RunError(f"{what} is empty; pass a folder name such as 'runs'")
    path = Path(given)
    if _too_long(path):
        raise RunError(f"{what} is too long for the run folders below it (at most {NAME_MAX} bytes a name, "
                       f"{PATH_MAX - RUN_NAME_ROOM} in all); pass a shorter path")
    if path.exists() and not path.is_dir():
        raise RunError(f"{what} is a file, not a folder; pass a folder (it is created if missing)")
    if writable:
        _check_writable(path, what)
    return path


def _shown(value, limit: int = 80) -> str:
    text = repr(os.fspath(value)) if isinstance(value, (str, os.PathLike)) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _too_long(path: Path) -> bool:
    names = [os.fsencode(part) for part in path.parts]
    return any(len(name) > NAME_MAX for name in names) or \
        len(os.fsencode(path.absolute())) > PATH_MAX - RUN_NAME_ROOM


def _check_writable(path: Path, what: str) -> None:
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunError(f"{what} cannot be created: {existing} is a file; pass another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"{what} is not writable ({existing} refuses writes); pass a folder you can write to "
                       f"or change its permissions")


def runs_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else $CARTL_RUNS, else ``runs/`` in the working directory (checked by ``check_root``, not for writing)."""
    return check_root(root, writable=False)


def run_path(config: Config, root: str | os.PathLike | None = None) -> Path:
    return runs_root(root) / f"{config.slug}-{config_hash(config)}"


def find_run(config: Config, root: str | os.PathLike | None = None, *, shipped: bool = True) -> Path | None:
    """The finished folder of ``config`` in ``root`` or (with ``shipped``) among the shipped runs, if any."""
    for base in (runs_root(root), SHIPPED_RUNS) if shipped else (runs_root(root),):
        path = base / f"{config.slug}-{config_hash(config)}"
        if is_finished(path):
            return path
    return None


def is_shipped(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies among the runs that ship with the kit (``SHIPPED_RUNS``)."""
    return Path(path).resolve().is_relative_to(SHIPPED_RUNS)


def is_finished(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a complete ``model.pt``: present and an intact archive (every CRC checked)."""
    try:
        stat = (Path(folder) / MODEL_FILE).stat()
    except OSError:
        return False
    return _zip_intact(str(Path(folder) / MODEL_FILE), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _zip_intact(path: str, mtime_ns: int, size: int) -> bool:  # cached while the file stays the same
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False


# --- locks and atomic files ---------------------------------------------------------------------

@contextlib.contextmanager
def locked(folder: str | os.PathLike):
    """Hold ``folder``'s lock (``flock`` on ``<folder>/.lock``, creating the folder) while the block runs.

    Every write to a run folder happens under it, so concurrent trainings of one config train once and
    concurrent evaluations of one run keep every entry. On release the lock file is removed, and the
    folder too if nothing else is in it (a refused run leaves nothing). A lock file found replaced after
    waiting (its holder removed it) is locked afresh.

    Example:
        >>> with locked(run_path(config)): ...
    """
    folder = Path(folder)
    fd = _acquire(folder)
    try:
        yield folder
    finally:
        (folder / LOCK_FILE).unlink(missing_ok=True)
        os.close(fd)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when empty


def _acquire(folder: Path) -> int:
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the folder was removed by the holder releasing it: create it again
            continue
        except OSError as error:
            if _disk_full(error):
                raise no_space(folder / LOCK_FILE) from None
            raise
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(folder / LOCK_FILE)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)


def _disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def no_space(path: Path) -> RunError:
    """The one-line error for a full disk (or quota) while writing ``path``."""
    return RunError(f"no space left on device while writing {path}; free space and rerun — the run resumes")


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.*.tmp`` files an interrupted write left in ``folder`` (call it holding the lock)."""
    leftovers = sorted(Path(folder).glob(".*.tmp"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to the disk (the step ``atomic_write`` does before renaming)."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Create ``path`` by ``write(temporary name)`` then a rename: readers see the old file or the whole new one.

    A full disk raises ``RunError`` (one line naming ``path``) and leaves no temporary file behind.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as error:
        if _disk_full(error):
            raise no_space(path) from None
        raise
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(error):
            raise no_space(path) from None
        raise



def write_json(path: Path, data) -> None:
    text = json.dumps(data, indent=2, sort_keys=True)
    atomic_write(path, lambda tmp: write_file(tmp, text.encode()))


def save_tensors(path: Path, data) -> None:
    buffer = io.BytesIO()  # serialised in memory so that disk errors surface as OSError, not torch's RuntimeError
    torch.save(data, buffer)
    atomic_write(path, lambda tmp: write_file(tmp, buffer.getvalue()))


def load_tensors(path: Path):
    if path.exists() and not _zip_intact(str(path), path.stat().st_mtime_ns, path.stat().st_size):
        raise RunError(f"{path} is corrupt or not a cartl_kit checkpoint (damaged archive); "
                       f"delete the run folder {path.parent} and train it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{path} is missing; the run is unfinished (train it again to resume)") from None
    except Exception as error:  # truncated, corrupt, or holding objects that are not plain tensors
        raise RunError(f"{path} is corrupt or not a cartl_kit checkpoint ({type(error).__name__}); "
                       f"delete the run folder {path.parent} and train it again") from None


# --- reading a run folder's JSON files ----------------------------------------------------------

def read_json(path: Path, *, missing=None):
    """``path``'s JSON (``missing`` when absent); a file that is not JSON raises RunError naming it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing is None:
            raise RunError(f"{path} is missing; restore it, or delete the run folder {path.parent} "
                           f"and train again") from None
        return missing
    try:
        return json.loads(text)
    except ValueError as error:  # JSONDecodeError
        raise RunError(f"{path} is not valid JSON ({_one_line(error)}); restore it, or delete the run folder "
                       f"{path.parent} and train again") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def read_config(folder: str | os.PathLike) -> Config:
    """The config in ``folder/config.json``, refused (RunError naming the file) unless it is the folder's own."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.exists():
        raise RunError(f"{folder} is not a run folder (no config.json)")
    try:
        config = from_dict(read_json(path))
    except RunError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise RunError(f"{path} is not a run config ({_one_line(error)}); restore it, or delete the run folder "
                       f"{folder} and train again") from None
    if not isinstance(config, (SourceConfig, TransferConfig)):
        raise RunError(f"{path} holds a {type(config).__name__}, not a run config; restore it")
    expected = f"{config.slug}-{config_hash(config)}"
    if Path(os.path.abspath(folder)).name != expected:
        raise RunError(f"{path} does not match its folder {folder} (it names the run {expected}): the config was "
                       f"edited or swapped; restore it, or delete the folder and train again")
    return config


def epoch_seconds(history: list[dict]) -> float:
    """Seconds a run's training epochs took, summed over its history (``seconds`` of each epoch record; feature
    caching before them and every evaluation are not timed there)."""
    return sum(float(record.get("seconds", 0.0)) for record in history)


def read_history(folder: Path) -> list[dict]:
    """``history.json``: one record per epoch, each with an integer ``epoch``."""
    path = folder / "history.json"
    history = read_json(path, missing=[])
    if not isinstance(history, list) or not all(isinstance(r, dict) and _is_int(r.get("epoch")) for r in history):
        raise RunError(f"{path} is not a list of epoch records (each a dict with an integer 'epoch'); restore it, "
                       f"or delete the run folder {folder} and train again")
    return history


def read_metrics(folder: Path) -> dict:
    """``metrics.json``, every evaluation's accuracies checked to be fractions in [0, 1] (RunError naming the file)."""
    path = folder / "metrics.json"
    metrics = read_json(path, missing={})
    if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
        raise RunError(f"{path} is not a dict of evaluations; delete it and evaluate again")
    for name, result in metrics.items():
        if problem := _metric_problem(name, result):
            raise RunError(f"{path}: evaluation {name!r} {problem}; the file was edited or damaged — delete that "
                           f"entry (or the file) and evaluate again")
    return metrics


def _metric_problem(name: str, result: dict) -> str | None:
    if name.startswith(CONVERGENCE_PREFIX):
        return None
    for key in sorted({"clean_acc", "robust_acc"} | {k for k in result if k.endswith("_acc")}):
        value = result.get(key)
        if not _is_real(value) or not 0 <= value <= 1:
            return f"has {key} = {value!r}, not a fraction in [0, 1]"
    if "n" in result and not (_is_int(result["n"]) and result["n"] >= 0):
        return f"has n = {result['n']!r}, not a count"
    return None


def _is_int(value) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def environment(device: torch.device) -> dict:
    """A run's ``env.json``: the machine (``machine()``), the library versions, the kit's git commit
    (``provenance.code_version``, when it is a checkout) and the device it trained on."""
    import numpy
    import torchvision

    from .provenance import code_version
    info = machine()
    info.update({"cartl_kit": __version__, "commit": code_version(), "torchvision": torchvision.__version__,
                 "numpy": numpy.__version__,
                 "device": str(device),
                 "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else info["cpu"]})
    return info


def machine() -> dict:
    """What a measurement ran on: UTC date, CPU model, cores, torch threads, torch and Python versions, GPU."""
    import datetime
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": "cpu"}
    if torch.cuda.is_available():
        info.update(device="cuda", gpu=torch.cuda.get_device_name(0))
    return info
