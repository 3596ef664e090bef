"""Where a set of runs came from: the kit's commit that made each, when, and how long their training took.

A report assembled from a runs store may rest on runs made at different times: a reproduction that was
stopped and resumed (finished runs load, unfinished ones resume from their last epoch), or a shared runs
folder filled by several machines. The invocation that renders the report then trains little or nothing, so
its own run time says nothing about the work behind the numbers. ``summarise(paths)`` reads what every run
records in ``env.json`` and ``history.json`` — the UTC date its training started (in the process that
finished it), the kit's git commit
(``code_version``; runs made before the kit recorded it have none), whether it resumed from a checkpoint —
and the seconds of its training epochs, and ``describe`` says it in one sentence for the report.
"""

from __future__ import annotations

import functools
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

UNRECORDED = "not recorded"


@functools.lru_cache(maxsize=1)
def code_version() -> str | None:
    """The short git commit of the kit's source tree, with ``+`` when tracked files under ``cartl_kit/`` differ
    from it; None when the kit is not a git checkout (an installed wheel) or git is missing.

    Example:
        >>> code_version()  # doctest: +SKIP
        'be49534'
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short=7", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "cartl_kit")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+" if changed else "") if commit else None


@dataclass(frozen=True)
class Provenance:
    """What a set of finished runs records about its making (see the module docstring)."""

    runs: int
    shipped: int  # of them shipped with the kit (made when the kit was built, not by this store)
    first: str | None  # the earliest and latest start date of the others (env.json), "YYYY-MM-DD HH:MM UTC"
    last: str | None
    train_seconds: float  # the others' training epochs, summed
    resumed: int  # the others that resumed from a checkpoint
    commits: dict[str, int] = field(default_factory=dict)  # commit (or UNRECORDED) -> runs, the others only


def summarise(paths: Iterable[str | Path]) -> Provenance:
    """The provenance of the finished runs in ``paths`` (each counted once)."""
    from .store import epoch_seconds, is_shipped, read_history, read_json
    unique = list(dict.fromkeys(Path(p) for p in paths))
    made = [p for p in unique if not is_shipped(p)]
    dates: list[str] = []
    seconds, resumed, commits = 0.0, 0, Counter[str]()
    for path in made:
        env = read_json(path / "env.json", missing={}) or {}
        if env.get("date"):
            dates.append(str(env["date"]))
        commits[str(env.get("commit") or UNRECORDED)] += 1
        resumed += bool(env.get("resumed_after_epoch"))
        seconds += epoch_seconds(read_history(path))
    return Provenance(runs=len(unique), shipped=len(unique) - len(made), first=min(dates, default=None),
                      last=max(dates, default=None), train_seconds=seconds, resumed=resumed, commits=dict(commits))


def describe(p: Provenance, what: str) -> str:
    """One line: ``"138 transfers made here, started between ... and ..., by kit commit be49534; ..."``."""
    made = p.runs - p.shipped
    what = what.removesuffix("s") if p.runs == 1 else what
    if not made:
        return f"{p.runs} {what}, all shipped with the kit" if p.runs > 1 else f"1 {what}, shipped with the kit"
    span = p.first if p.first == p.last else f"between {p.first} and {p.last}"
    text = (f"{p.runs} {what}" + (f": {p.shipped} shipped with the kit, {made}" if p.shipped else "")
            + f" made here, started {span}, {_commits(p.commits)}; their training epochs took "
            f"{_duration(p.train_seconds)} (evaluation not timed)")
    if p.resumed:
        text += f"; {p.resumed} resumed from a checkpoint"
    if any(commit.endswith("+") for commit in p.commits):
        text += " (+: with uncommitted changes under cartl_kit/)"
    return text


def _commits(commits: dict[str, int]) -> str:
    """``kit commit be49534``, ``kit commits be49534 (100), f8a3964 (38)``, ``the kit's commit not recorded (5)``."""
    if len(commits) == 1:
        commit = next(iter(commits))
        return "the kit's commit not recorded" if commit == UNRECORDED else f"by kit commit {commit}"
    return "by kit commits " + ", ".join(f"{commit} ({n})" for commit, n in commits.items())


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


__all__ = ["UNRECORDED", "Provenance", "code_version", "describe", "summarise"]
