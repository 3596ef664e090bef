"""A grid of runs as independent jobs: in parallel on one machine, or as commands for a cluster's scheduler.

``sweep`` and ``reproduce`` are grids: every cell is one run (a transfer, or a teacher) plus its evaluations,
and cells share nothing but the runs store. So a grid can be cut into jobs:

- ``run_parallel(cells, jobs=N, devices=[...])`` runs each cell as its own process (``python -m cartl_kit
  cell ...``), N at a time, each on a device from the list in turn (or on a share of the CPU threads), the
  missing teachers first and their students after them;
- ``commands(cells)`` gives the same jobs as self-contained shell commands, teachers first, for a SLURM job
  array, GNU parallel or any batch system.

The runs store is the meeting point: a run another job already finished is loaded, and a run's folder lock
(``store.locked``) makes two jobs that reach the same run at once train it once (the second waits, then
loads it). The parent loads every result from the store afterwards, as a grid run in one process would.

Example:
    >>> cells = [Cell(config, (preset.evaluation,)) for config in sweep_configs(preset, ks=[1, 2])]
    >>> run_parallel(cells, jobs=2, root="runs")
    >>> print("\\n".join(commands(cells, root="runs")))
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .config import EvalConfig, TransferConfig, from_dict, to_dict
from .store import Config, find_run, runs_root

LOG_TAIL_LINES = 15  # lines of a failed job's output shown


@dataclass(frozen=True)
class Cell:
    """One job of a grid: a run's config and the evaluations recorded for it once it is trained."""

    config: Config
    evaluations: tuple[EvalConfig, ...] = ()


def check_jobs(jobs: int, devices: Sequence[str] | None = None) -> None:
    """``jobs`` is an integer >= 1; each of ``devices`` is a device this machine has (``params.check_device``)."""
    from .params import check_device
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be an integer >= 1 (parallel processes), got {jobs!r}")
    for device in devices or ():
        check_device(device, name="--devices")


def waves(cells: Iterable[Cell], *, root=None, shipped: bool = True) -> tuple[list[Cell], list[Cell]]:
    """The jobs in dependency order: the teachers that no store holds yet (each once, unevaluated), then every
    cell. Cells already finished stay in (their job finds and loads them at once)."""
    cells = list(dict.fromkeys(cells))
    teachers = [c.config.teacher for c in cells if isinstance(c.config, TransferConfig)]
    missing = [t for t in dict.fromkeys(teachers) if find_run(t, root, shipped=shipped) is None]
    return [Cell(t) for t in missing], cells


def cell_argv(cell: Cell, *, root=None, device: str | None = None, shipped: bool = True,
              python: str = "python") -> list[str]:
    """The command line that runs (or loads) one cell and records its evaluations: ``python -m cartl_kit cell``."""
    argv = [python, "-m", "cartl_kit", "cell", "--config", json.dumps(to_dict(cell.config), separators=(",", ":"))]
    for evaluation in cell.evaluations:
        argv += ["--evaluation", json.dumps(to_dict(evaluation), separators=(",", ":"))]
    if root is not None:
        argv += ["--runs-dir", str(Path(root).resolve())]
    if device is not None:
        argv += ["--device", device]
    if not shipped:
        argv.append("--no-shipped")
    return argv


def commands(cells: Iterable[Cell], *, root=None, device: str | None = None, shipped: bool = True) -> list[str]:
    """One self-contained shell command per job, the missing teachers first, a comment line before each group."""
    teachers, rest = waves(cells, root=root, shipped=shipped)
    groups = [(teachers, "teachers: run these first"), (rest, "cells: after the teachers")] if teachers \
        else [(rest, "cells")]
    lines = []
    for jobs, what in groups:
        lines.append(f"# {len(jobs)} {what}")
        lines += [shlex.join(cell_argv(cell, root=root, device=device, shipped=shipped)) for cell in jobs]
    return lines


def run_cell(cell: Cell, *, root=None, device=None, shipped: bool = True, progress: bool = False) -> dict:
    """Run (or load) ``cell.config`` and record each of its evaluations in the run's ``metrics.json``."""
    from .runs import evaluate_run, run
    finished = run(cell.config, root=root, device=device, progress=progress, shipped=shipped)
    results = {e.name: evaluate_run(finished, e, device=device, progress=progress) for e in cell.evaluations}
    return {"run": str(finished.path), "evaluations": results}


def parse_cell(config: str, evaluations: Sequence[str] = ()) -> Cell:
    """A ``Cell`` from the JSON texts of ``python -m cartl_kit cell --config ... --evaluation ...``."""
    def load(text: str, flag: str):
        try:
            return from_dict(json.loads(text))
        except json.JSONDecodeError as error:
            raise ValueError(f"{flag} is not JSON ({error.msg} at character {error.pos}); give a run's "
                             f"config.json content, as `--print-commands` writes it") from None
    built = load(config, "--config")
    if isinstance(built, EvalConfig):
        raise ValueError("--config must be a source or transfer config, not an evaluation (that is --evaluation)")
    found = tuple(load(text, "--evaluation") for text in evaluations)
    if not all(isinstance(e, EvalConfig) for e in found):
        raise ValueError("--evaluation must be an evaluation config (kind \"eval\")")
    return Cell(built, found)


def _threads(jobs: int) -> str:
    """Each job's CPU threads: the user's OMP_NUM_THREADS if set, else an equal share of the cores."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))


def run_parallel(cells: Iterable[Cell], *, jobs: int, devices: Sequence[str] | None = None, root=None,
                 shipped: bool = True, log: Callable[[str], None] | None = None) -> None:
    """Run every cell as its own process, ``jobs`` at a time, the missing teachers first (see ``waves``).

    Job i of a wave runs on ``devices[i % len(devices)]`` (default: the kit's default device, and
    ``OMP_NUM_THREADS`` = cores / jobs unless set). A job's output goes to a log that is shown when it
    fails; the other jobs go on, and a RuntimeError listing the failed cells is raised at the end.
    """
    check_jobs(jobs, devices)
    log = log or (lambda message: None)
    runs_root(root).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=_threads(jobs), PYTHONUNBUFFERED="1")
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cartl-jobs-") as logs:
        for wave in waves(cells, root=root, shipped=shipped):
            if not wave:
                continue
            failed += _run_wave(wave, jobs=jobs, devices=list(devices or []), root=root, shipped=shipped,
                                env=env, logs=Path(logs), log=log)
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) failed: {', '.join(failed)} (their output is above)")


def _run_wave(wave: list[Cell], *, jobs: int, devices: list[str], root, shipped: bool, env: dict, logs: Path,
              log: Callable[[str], None]) -> list[str]:
    pending = list(enumerate(wave))
    running: dict[subprocess.Popen, tuple[int, Cell, Path, float]] = {}
    failed = []
    started, ended = time.perf_counter(), 0
    try:
        while pending or running:
            while pending and len(running) < jobs:
                index, cell = pending.pop(0)
                device = devices[index % len(devices)] if devices else None
                path = logs / f"{index}.log"
                with path.open("w") as out:
                    process = subprocess.Popen(cell_argv(cell, root=root, device=device, shipped=shipped,
                                                         python=sys.executable),
                                               stdout=out, stderr=subprocess.STDOUT, env=env)
                running[process] = (index, cell, path, time.perf_counter())
                log(f"started {cell.config.slug}" + (f" on {device}" if device else ""))
            time.sleep(0.2)
            for process in [p for p in running if p.poll() is not None]:
                index, cell, path, start = running.pop(process)
                seconds = time.perf_counter() - start
                ended += 1
                progress = f" [{ended}/{len(wave)}{_time_left(time.perf_counter() - started, ended, len(wave))}]"
                if process.returncode == 0:
                    log(f"done in {seconds:.0f} s: {cell.config.slug}{progress}")
                else:
                    tail = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                    log(f"FAILED (exit {process.returncode}) after {seconds:.0f} s: {cell.config.slug}{progress}\n"
                        + "\n".join("    " + line for line in tail))
                    failed.append(cell.config.slug)
    finally:
        for process in running:  # interrupted: stop the jobs still running (their runs resume next time)
            process.terminate()
        for process in running:
            process.wait()
    return failed


def _time_left(elapsed: float, ended: int, total: int) -> str:
    """``", about 42 min left"`` at the wave's pace so far (wall time per finished job); empty when none is left."""
    left = total - ended
    if not left or not ended:
        return ""
    seconds = elapsed / ended * left
    return f", about {seconds / 3600:.1f} h left" if seconds >= 5400 else f", about {max(1, round(seconds / 60))} min left"


__all__ = ["Cell", "cell_argv", "check_jobs", "commands", "parse_cell", "run_cell", "run_parallel", "waves"]
