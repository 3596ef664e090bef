"""Checks of the values people type at the kit's edges: CLI flags, notebook parameters, API numbers.

Every check returns the value (canonical where that matters) or raises ``ValueError`` with one line that
names the parameter, the value given and what to give instead, so that a bad value fails before anything
is trained or written. ``check_notebook_params`` is what each notebook calls right after its
``parameters`` cell (papermill's ``-p`` turns ``abc`` into a string, which Python would count as true).
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

SEED_MAX = 2**32 - 1  # NumPy's global seed (``seed_everything``) takes 0 .. 2**32 - 1


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) in ``low..high``; else ValueError naming ``name``.

    >>> check_int("epochs", 3, low=1)
    3
    """
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    number = int(value) if integral else 0
    if not integral or (low is not None and number < low) or (high is not None and number > high):
        bounds = (f"in {low}..{high}" if high is not None else f">= {low}") if low is not None else ""
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}".replace("  ", " "))
    return number


def check_float(name: str, value, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    """``value`` if it is a finite number (not a bool) in ``[low, high]`` (``(low, high]`` with ``low_open``).

    >>> check_float("gamma", 0.2, low=0, low_open=True)
    0.2
    """
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = [f"{'>' if low_open else '>='} {low:g}"] if low is not None else []
        bounds += [f"<= {high:g}"] if high is not None else []
        raise ValueError(f"{name} must be a finite number {' and '.join(bounds)}, got {value!r}".replace("  ", " "))
    return float(value)


def check_bool(name: str, value) -> bool:
    """``value`` if it is True or False (a string such as ``"abc"`` or ``"False"`` is refused)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_seed(value, *, name: str = "seed") -> int:
    """A seed for ``seed_everything``: an integer in 0 .. 2**32 - 1."""
    return check_int(name, value, low=0, high=SEED_MAX)


def check_device(value, *, name: str = "device") -> str | None:
    """``value`` if it names a device this machine has: ``cpu``, ``cuda`` or ``cuda:<i>`` with a GPU, ``mps``
    on Apple silicon; None means the default (CUDA when present)."""
    if value is None:
        return None
    import torch
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a device; use cpu or cuda") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name} {value!r}: this machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{name} {value!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name} {value!r}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"{name} {value!r} is not a device the kit trains on; use cpu or cuda")
    return value


def check_runs_dir(value, *, name: str = "runs_dir") -> Path:
    """A runs folder that exists as a writable folder or can be made (the runs store's ``check_root``), named
    ``name`` in the message; None is refused here (a notebook or flag that gives one means a folder)."""
    from .runs import check_root
    if value is None:
        raise ValueError(f"{name} must be a folder path such as 'runs', got None")
    try:
        return check_root(value)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def _folder_problem(path: Path) -> str | None:
    """Why ``path`` can be neither used nor made as a folder (None: it can)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return "is a file" if existing == path else f"lies under the file {str(existing)!r}"
    if not os.access(existing if existing.exists() else Path.cwd(), os.W_OK | os.X_OK):
        return f"is not writable (no write permission on {str(existing)!r})"
    return None


def check_report_path(template, *, preset: str, name: str = "report") -> Path:
    """The report file ``template`` names once ``{preset}`` is filled in; refused when it is '', malformed,
    a folder, or in a folder that cannot be made.

    >>> check_report_path("reports/demo-{preset}.html", preset="quick")
    PosixPath('reports/demo-quick.html')
    """
    if not isinstance(template, (str, os.PathLike)) or not os.fspath(template).strip():
        raise ValueError(f"{name} must be a file path such as 'reports/demo-{{preset}}.html', got {template!r}")
    try:
        path = Path(str(template).format(preset=preset))
    except (KeyError, IndexError, ValueError, AttributeError):
        raise ValueError(f"{name} {str(template)!r} is not a valid template: the only field it may hold is "
                         "{preset}; write a literal brace as {{ or }}") from None
    if str(template).endswith(("/", os.sep)) or path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a folder; give a file name such as {str(path / 'report.html')!r}")
    problem = _folder_problem(path.parent)
    if problem:
        raise ValueError(f"{name} {str(path)!r}: its folder {str(path.parent)!r} {problem}; give a path in a folder")
    return path


# --- notebook parameters ------------------------------------------------------------------------

def _int_list(name: str, value) -> None:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of integers such as [1, 2, 4], got {value!r}")
    for item in value:
        check_int(f"each of {name}", item, low=1)


def _float_list(low_open: bool):
    def check(name: str, value) -> None:
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"{name} must be a non-empty list of numbers such as [0.4, 0.6], got {value!r}")
        for item in value:
            check_float(f"each of {name}", item, low=0, low_open=low_open)
    return check


def _alpha_list(name: str, value) -> None:
    _float_list(False)(name, value)
    for item in value:
        check_float(f"each of {name}", item, low=0, high=1)


def _text(name: str, value) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")


NOTEBOOK_PARAMETERS = {
    "QUICK": check_bool, "FROM_SCRATCH": check_bool, "AFT": check_bool,
    "RUNS_DIR": lambda name, value: check_runs_dir(value, name=name),
    "SEED": lambda name, value: check_seed(value, name=name),
    "N_EVAL": lambda name, value: value is None or check_int(name, value, low=1),
    "K": lambda name, value: check_int(name, value, low=1),
    "LWF_K": lambda name, value: check_int(name, value, low=1),
    "STEPS": lambda name, value: check_int(name, value, low=0),
    "EPOCHS": lambda name, value: check_int(name, value, low=1),
    "N_SEEDS": lambda name, value: check_int(name, value, low=1),
    "PER_CLASS": lambda name, value: check_int(name, value, low=1),
    "EPS": lambda name, value: check_float(name, value, low=0, high=1, low_open=True),
    "LAMBDA": lambda name, value: check_float(name, value, low=0),
    "LWF_LAMBDA": lambda name, value: check_float(name, value, low=0),
    "BETA": lambda name, value: check_float(name, value, low=0, low_open=True),
    "ALPHA": lambda name, value: check_float(name, value, low=0, high=1),
    "K_VALUES": _int_list, "LAMBDAS": _float_list(False), "BETAS": _float_list(True), "ALPHAS": _alpha_list,
    "PLAN": _text, "REPORT": _text, "BN_CASE": _text, "METHOD": _text,
}


def check_notebook_params(**params) -> None:
    """Check a notebook's parameters (as papermill may have replaced them) by name; ValueError on the first bad one.

    Example:
        >>> check_notebook_params(QUICK=QUICK, SEED=SEED, RUNS_DIR=RUNS_DIR, K=K)
    """
    for name, value in params.items():
        if name not in NOTEBOOK_PARAMETERS:
            raise ValueError(f"unknown notebook parameter {name}; the kit checks {', '.join(NOTEBOOK_PARAMETERS)}")
        NOTEBOOK_PARAMETERS[name](f"notebook parameter {name}", value)
