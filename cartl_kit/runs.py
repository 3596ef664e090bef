"""The runs store: every trained model is a folder named by its config (DESIGN.md "Data flow").

``runs/<slug>-<hash>/`` holds ``config.json``, ``history.json`` (one record per epoch), ``env.json``
(package versions and device), ``metrics.json`` (evaluations, keyed by attack) and ``model.pt`` (the
final weights, NEFT baked in: a plain state dict). ``model.pt`` is written last, so a folder without it
is unfinished; while training, ``checkpoint.pt`` (model, optimiser, epoch, history, random states) is
replaced atomically after every epoch, so an interrupted run resumes from its last finished epoch.
Running a config whose folder is complete loads it instead of training. Checkpoints are read with
``torch.load(weights_only=True)``: no arbitrary objects are unpickled.

Every write to a run folder holds its lock (``flock`` on ``<run>/.lock``): two processes training one
config train it once, and evaluations recorded at the same time all land in ``metrics.json``. What is
read back is checked: ``config.json`` must hash to its folder's name, ``model.pt`` must be an intact
archive for the run to count as finished, accuracies in ``metrics.json`` must be fractions, and a file
that fails raises ``RunError`` naming it (``load_runs`` warns and skips that folder). Temporary files a
killed write left are removed the next time the folder is written; a full disk is one line.
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
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .config import EvalConfig, SourceConfig, TransferConfig, config_hash, from_dict, to_dict
from .data import ImageData, dataset_stats, load_dataset, make_loader, sample
from .cache import CachedFeatures, FromSplit, extract, feature_cache_blocker
from .evaluate import robust_accuracy
from .models import ARCHITECTURES, WideResNet, create_model, set_half_residual
from .neft import apply_neft, remove_neft
from .train import adversarial_step, default_device, fdm_step, fit, lwf_step, natural_step
from .transfer import make_student

RUNS_ENV_VAR = "CARTL_RUNS"
SHIPPED_RUNS = Path(__file__).resolve().parent.parent / "data" / "runs"  # finished runs that ship with the kit
MODEL_FILE, CHECKPOINT_FILE, LOCK_FILE = "model.pt", "checkpoint.pt", ".lock"
NAME_MAX, PATH_MAX = 255, 4096  # Linux's limits on one path component and a whole path, in bytes
RUN_NAME_ROOM = 200  # bytes a run folder and its file names add below the runs root
CONVERGENCE_PREFIX = "convergence-"  # metrics.json key of a convergence report: the prefix + the evaluation's name

Config = SourceConfig | TransferConfig


class RunError(ValueError):
    """A run folder is missing, unfinished, corrupt, or does not match its config."""


@dataclass
class Run:
    """A finished run: its folder, config, model (eval mode), per-epoch history and evaluations."""

    path: Path
    config: Config
    model: WideResNet
    history: list[dict]
    metrics: dict


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


_atomic_write = atomic_write  # the name plots.py and reproduce.py import


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def environment(device: torch.device) -> dict:
    """A run's ``env.json``: the machine (``machine()``), the library versions and the device it trained on."""
    import numpy
    import torchvision
    info = machine()
    info.update({"cartl_kit": __version__, "torchvision": torchvision.__version__, "numpy": numpy.__version__,
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


# --- building models for configs ----------------------------------------------------------------

def _data(name: str, split: str) -> ImageData:
    return load_dataset(name, split=split)


def build_source_model(config: SourceConfig, data: ImageData) -> WideResNet:
    mean, std = dataset_stats(config.dataset)
    return create_model(config.arch, num_classes=data.num_classes, in_channels=data.channels, mean=mean, std=std)


def build_student(config: TransferConfig, teacher: WideResNet, data: ImageData) -> WideResNet:
    if data.channels != teacher.in_channels:
        raise ValueError(f"target {config.dataset} has {data.channels} channel(s) but the teacher takes "
                         f"{teacher.in_channels}; pick a target with matching channels")
    student = make_student(teacher, k=config.k, num_classes=data.num_classes, bn_case=config.bn_case,
                           half_residual=config.half_residual)
    if config.method == "neft":
        apply_neft(student, k=config.k, beta=config.beta, power_iterations=config.power_iterations)
    return student


def _source_of(config: Config) -> SourceConfig:
    return config if isinstance(config, SourceConfig) else config.teacher


def plain_model(config: Config, *, num_classes: int, in_channels: int) -> WideResNet:
    """The architecture a finished run's ``model.pt`` loads into (NEFT baked in, BN frozen or not)."""
    source = _source_of(config)
    mean, std = dataset_stats(source.dataset, channels=in_channels)
    model = create_model(source.arch, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
    if isinstance(config, TransferConfig) and config.half_residual:
        set_half_residual(model, k=config.k)
    return model


# --- training -----------------------------------------------------------------------------------

def _step_for(config: Config, teacher: WideResNet | None):
    if isinstance(config, SourceConfig):
        attack = dict(eps=config.attack.eps, step_size=config.attack.step_size, steps=config.attack.steps,
                      random_start=config.attack.random_start)
        if config.method == "fdm":
            return fdm_step(k=config.k, lam=config.lam, **attack)
        return adversarial_step(**attack)
    if config.method == "lwf":
        return lwf_step(teacher, lam=config.lwf_lam)
    return natural_step


def _train(config: Config, *, root, device, progress: bool, callback, teacher: WideResNet | None = None,
           cache_features: bool = True, channels_last: bool = False) -> Path:
    """Train ``config`` into its folder (call it holding the folder's lock), resuming from ``checkpoint.pt``.

    A transfer run whose frozen extractor's output cannot change (see ``cache.feature_cache_blocker``)
    trains its last k blocks on features computed once, unless ``cache_features=False``.
    """
    path = run_path(config, root)
    remove_temporaries(path)  # left by a process killed while writing
    train_data = _data(config.dataset, "train")
    torch.manual_seed(config.seed)  # model init, NEFT's power-iteration start, PGD's random starts
    if isinstance(config, SourceConfig):
        model = build_source_model(config, train_data)
    else:
        model = build_student(config, teacher, train_data)
    model.to(device)
    loader = make_loader(train_data, batch_size=config.optim.batch_size, augment=config.augment, device=device,
                         seed=config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = config.optim
    optimizer = torch.optim.SGD(params, lr=optim.base_lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    history: list[dict] = []
    start = 1
    if (path / CHECKPOINT_FILE).exists():
        if (path / "config.json").exists():
            read_config(path)  # a swapped config.json is refused, not trained on
        else:
            write_json(path / "config.json", to_dict(config))
        state = load_tensors(path / CHECKPOINT_FILE)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"])
        history, start = state["history"], state["epoch"] + 1
    else:
        write_json(path / "config.json", to_dict(config))

    def save_epoch(record: dict) -> None:
        history.append(record)
        save_tensors(path / CHECKPOINT_FILE, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                              "loader": loader.state_dict(), "rng": torch.get_rng_state(),
                                              "history": history, "epoch": record["epoch"]})
        if callback is not None:
            callback(record)

    trained, batches = model, loader
    if start <= optim.epochs and cache_features and isinstance(config, TransferConfig):
        if feature_cache_blocker(model, k=config.k, loader=loader, needs_images=config.method == "lwf") is None:
            features = extract(model, loader, k=config.k)
            if channels_last and features.dim() == 4:  # batches indexed from it stay channels-last
                features = features.contiguous(memory_format=torch.channels_last)
            trained, batches = FromSplit(model, k=config.k), CachedFeatures(loader, features)
    if start <= optim.epochs:
        fit(trained, batches, _step_for(config, teacher), epochs=optim.epochs, base_lr=optim.base_lr,
            momentum=optim.momentum, weight_decay=optim.weight_decay, warmup_epochs=optim.warmup_epochs,
            milestones=optim.milestones, gamma=optim.gamma, device=device, callback=save_epoch,
            progress=progress, start_epoch=start, optimizer=optimizer, channels_last=channels_last)
    model.to(memory_format=torch.contiguous_format)
    remove_neft(model)
    write_json(path / "history.json", history)
    write_json(path / "env.json", environment(device))
    save_tensors(path / MODEL_FILE, {k: v.cpu() for k, v in model.state_dict().items()})
    (path / CHECKPOINT_FILE).unlink(missing_ok=True)
    return path


def run(config: Config, *, root=None, device: torch.device | str | None = None, progress: bool = True,
        callback: Callable[[dict], None] | None = None, train_teacher: bool = True, shipped: bool = True,
        cache_features: bool = True, channels_last: bool = False) -> Run:
    """Load the finished run of ``config``, or train it (resuming if interrupted) and then load it.

    For a transfer config the teacher's run is found (or, with ``train_teacher``, trained) first.
    ``shipped=False`` ignores the runs shipped in ``data/runs`` (everything is found in or trained into ``root``).
    ``cache_features=False`` turns off the transfer fast path (``cartl_kit.cache``), which trains on cached
    extractor features where that gives the same result up to rounding. ``channels_last=True`` trains in
    the channels-last memory format (faster convolutions on many CPUs and GPUs; the same run up to
    floating-point rounding, so not bit-identical to one trained without it).

    Example:
        >>> teacher = run(get_preset("quick").source("at"))
    """
    device = torch.device(device) if device is not None else default_device()
    path = find_run(config, root, shipped=shipped)
    if path is None:
        check_root(root)
        teacher = None
        if isinstance(config, TransferConfig):
            if find_run(config.teacher, root, shipped=shipped) is None and not train_teacher:
                raise RunError(f"the teacher run {config.teacher.slug}-{config_hash(config.teacher)} does not exist "
                               f"in {runs_root(root)}; train it first (`python -m cartl_kit source`)")
            teacher = run(config.teacher, root=root, device=device, progress=progress, shipped=shipped).model
        path = run_path(config, root)
        with locked(path):
            if not is_finished(path):  # else another process finished it while this one waited for the lock
                try:
                    _train(config, root=root, device=device, progress=progress, callback=callback, teacher=teacher,
                           cache_features=cache_features, channels_last=channels_last)
                except BaseException:
                    discard_unstarted(path)
                    raise
    return load_run(path)


def discard_unstarted(folder: Path) -> None:
    """Empty a run folder that holds no checkpoint and no model (only its config): there is nothing to resume.

    Call it holding the lock; ``locked`` then removes the emptied folder on release.
    """
    if not (folder / CHECKPOINT_FILE).exists() and not (folder / MODEL_FILE).exists():
        remove_temporaries(folder)
        (folder / "config.json").unlink(missing_ok=True)


def load_run(path: str | os.PathLike) -> Run:
    """A finished run's model (eval mode, CPU), config, history and metrics."""
    path = Path(path)
    config = read_config(path)
    state = load_tensors(path / MODEL_FILE)
    try:
        # Head size and channel count come from the weights themselves: loading a model reads no data.
        head = state[f"blocks.{ARCHITECTURES[_source_of(config).arch].num_blocks - 1}.weight"]  # (classes, features)
        model = plain_model(config, num_classes=head.shape[0], in_channels=state["normalize.mean"].shape[1])
        model.load_state_dict(state)
    except (KeyError, IndexError, AttributeError) as error:
        raise RunError(f"{path / MODEL_FILE} does not match the architecture of its config "
                       f"({config.slug}): missing or malformed {error}") from None
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise RunError(f"{path / MODEL_FILE} does not match the architecture of its config "
                       f"({config.slug}): {first}") from None
    history, metrics = read_history(path), read_metrics(path)
    return Run(path=path, config=config, model=model.eval(), history=history, metrics=metrics)


def is_shipped(path: str | os.PathLike) -> bool:
    return Path(path).resolve().is_relative_to(SHIPPED_RUNS)


def evaluate(finished: Run, evaluation: EvalConfig, *, device=None, progress: bool = True,
             save: bool | None = None, cached: bool = True) -> dict:
    """Clean and robust accuracy of a run on its test split, cached in its ``metrics.json``.

    ``save`` (default: unless the run is a shipped one, which stays read-only) writes the result to
    ``metrics.json``; ``cached=False`` evaluates again even when a result is recorded.
    """
    if cached and evaluation.name in finished.metrics:
        return finished.metrics[evaluation.name]
    device = torch.device(device) if device is not None else default_device()
    test = _data(finished.config.dataset, "test")
    if evaluation.max_examples is not None:  # a seeded random subset: the test splits are ordered by class
        test = sample(test, evaluation.max_examples)
    test = make_loader(test, batch_size=256, device=device)
    result = measure(finished.model.to(device).eval(), test, evaluation, device=device, progress=progress)
    finished.model.cpu()
    if save is None:
        save = not is_shipped(finished.path)
    if not save:
        return result
    return record_metric(finished, evaluation.name, result)


def record_metric(finished: Run, name: str, result: dict) -> dict:
    """Add ``result`` under ``name`` to the run's ``metrics.json`` and to ``finished.metrics``; returns it.

    The file is read again, updated and replaced under the folder's lock, so evaluations recorded at the
    same time by other processes are kept (and appear in ``finished.metrics``).
    """
    with locked(finished.path):
        remove_temporaries(finished.path)
        metrics = read_metrics(finished.path)
        metrics[name] = result
        write_json(finished.path / "metrics.json", metrics)
    finished.metrics.clear()
    finished.metrics.update(metrics)
    return result


def measure(model, loader, evaluation: EvalConfig, *, device=None, progress: bool = True, seed: int = 0) -> dict:
    """Clean and robust accuracy of ``model`` (eval mode) over ``loader`` under ``evaluation``'s method, as the
    dict ``metrics.json`` stores: ``clean_acc``, ``robust_acc``, ``n``, ``method``, ``label`` (the attack's
    name) and the method's details (for the ensemble, the accuracy left after each attack and which attack
    broke each example). Random starts are seeded with ``seed``.
    """
    attack = evaluation.attack
    generator = torch.Generator(device=device).manual_seed(seed)
    if evaluation.method == "ensemble":
        from .ensemble import ensemble_accuracy
        result = ensemble_accuracy(model, loader, eps=attack.eps, config=evaluation.ensemble, device=device,
                                   generator=generator, progress=progress).as_dict()
    elif evaluation.method == "autoattack":
        from .autoattack import autoattack_accuracy
        images, labels = map(torch.cat, zip(*[(x, y) for x, y in loader]))
        result = autoattack_accuracy(model, images.to(device), labels.to(device), eps=attack.eps, seed=seed)
    else:
        result = robust_accuracy(model, loader, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
                                 random_start=attack.random_start, device=device, mode=evaluation.mode,
                                 generator=generator, progress=progress).as_dict()
    return {**result, "method": evaluation.method, "label": evaluation.label}


def convergence(finished: Run, evaluation: EvalConfig, *, device=None, quick: bool = True, n: int | None = None,
                save: bool | None = None) -> tuple[dict, str]:
    """The convergence and sanity report (``convergence.convergence_report``) of a run's headline evaluation.

    It attacks a seeded random sample of the run's test split (``n``; default ``evaluation.max_examples``,
    else 100 with ``quick`` and 500 without) with the grid of attacks, ``evaluation``'s ensemble and the same
    ensemble doubled, and records the result in ``metrics.json`` under ``"convergence-" + evaluation.name``
    (unless the run is shipped, or ``save=False``), where every table that shows the run finds its flags.
    Returns the report as a dict and as text.
    """
    from .convergence import convergence_report, format_report
    device = torch.device(device) if device is not None else default_device()
    test = _data(finished.config.dataset, "test")
    size = n or evaluation.max_examples or (100 if quick else 500)
    test = sample(test, min(size, len(test)))
    images = (test.images.float() / 255 if test.images.dtype == torch.uint8 else test.images).to(device)
    model = finished.model.to(device).eval()
    report = convergence_report(model, images, test.labels.to(device), eps=evaluation.attack.eps,
                                config=evaluation.ensemble, quick=quick)
    finished.model.cpu()
    data = report.as_dict()
    if save is None:
        save = not is_shipped(finished.path)
    if save:
        record_metric(finished, CONVERGENCE_PREFIX + evaluation.name, data)
    return data, format_report(report)


def load_runs(root: str | os.PathLike | None = None, *, include_shipped: bool = True):
    """A pandas DataFrame with one row per (finished run, evaluation): flattened config fields and metrics.

    A folder that cannot be read (damaged model, config or metrics) is skipped with a warning naming it.
    """
    import pandas as pd
    rows = []
    bases = [runs_root(root)] + ([SHIPPED_RUNS] if include_shipped else [])
    for base in bases:
        for path in sorted(base.glob("*/" + MODEL_FILE)) if base.is_dir() else []:
            try:
                rows += _table_rows(path.parent, shipped=base == SHIPPED_RUNS)
            except RunError as error:
                warnings.warn(f"skipping {path.parent}: {error}", stacklevel=2)
    return pd.DataFrame(rows)


def _table_rows(folder: Path, *, shipped: bool) -> list[dict]:
    import pandas as pd
    if not is_finished(folder):
        raise RunError(f"{folder / MODEL_FILE} is truncated or damaged, so the run is not finished; "
                       f"delete it and train again")
    config, metrics = read_config(folder), read_metrics(folder)
    read_history(folder)  # a folder load_run refuses is not tabulated either
    flat = pd.json_normalize(to_dict(config), sep=".").iloc[0].to_dict()
    flat.update({"run": folder.name, "path": str(folder), "shipped": shipped})
    rows = []
    for name, result in (metrics or {"": {}}).items():
        if name.startswith(CONVERGENCE_PREFIX):
            continue
        shown = {key: value for key, value in result.items() if key not in ("broken_by", "config", "after")}
        rows.append({**flat, "evaluation": name or None, **shown})
    return rows
