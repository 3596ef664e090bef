"""Reproduce the paper's tables at a small scale, with seeds, and say which of its claims hold here.

``python -m cartl_kit reproduce --preset quick`` (and notebook ``07_reproduction``) runs, for every seed
of a ``Plan``, the analogue of each table of the paper (``CARTL_REFERENCE.md`` §11): the trade-off in k, the
four BatchNorm cases, CARTL's λ × β sweep, the component ablation, and LwF / vanilla / CARTL on full and small
target data. Every cell is a run of the runs store, so cells shared between tables (and with the notebooks)
train once and a second call only loads and re-renders.

This module holds the run loop (``reproduce``) and ``summarise`` (mean ± standard deviation over seeds). The
parts live beside it and are re-exported here, so callers import from ``cartl_kit.reproduce``:

- ``plan``: ``Plan``, ``PLANS``, ``get_plan``, ``cells`` — what runs;
- ``claims``: ``claims``, ``judge`` — the paper's claims with the measured numbers and a verdict by fixed rules;
- ``report``: ``write_markdown``, ``pivot``, ``figures``, ``PAPER`` — the report beside the paper's numbers
  (stored once, as numbers, in ``paper_results``);
- ``recipes``: ``recipes_markdown``, ``recipe_flops`` — the ``sweep`` commands of the full scale and their compute.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .claims import Claim, Stat, at_chance, claims, judge
from .config import config_hash, get_preset
from .grid import Cell as GridCell, check_jobs, run_parallel
from .params import check_report_path
from .provenance import Provenance, summarise as provenance_of
from .plan import BN_CASES_2X2, BN_LABELS, PLANS, TABLES, Cell, Plan, cells, get_plan, seed_pairs
from .recipes import RECIPES, SPLIT_SIZES, measured_gpu_rates, recipe_flops, recipes_markdown
from .report import PAPER, TITLES, figures, pivot, write_markdown

if TYPE_CHECKING:
    import pandas as pd
    import torch


@dataclass
class Reproduction:
    """What ``reproduce`` returns: one row per (cell, seed), the summary, the claims, the report path."""

    plan: Plan
    rows: pd.DataFrame  # table, row, column, seed (the teacher's), transfer_seed, run, clean_acc, robust_acc, n
    summary: pd.DataFrame  # table, row, column, clean/robust mean and std, seeds
    claims: list[Claim]
    seconds: float
    trained: int
    loaded: int
    teachers_trained: int = 0
    teachers: int = 0
    report: Path | None = None
    command: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # runs not in the store, or not evaluated (``train=False``)
    provenance: dict[str, Provenance] = field(default_factory=dict)  # "transfers", "teachers": when and by what code
    teachers_table: pd.DataFrame | None = None  # teacher, seed, run, clean_acc, robust_acc, pgd_acc (``teacher_rows``)
    students_table: pd.DataFrame | None = None  # student, seed, transfer_seed, run, clean/robust/pgd acc (``student_rows``)


def reproduce(plan: str | Plan = "quick", *, root: str | os.PathLike[str] | None = None,
              device: str | torch.device | None = None, progress: bool | None = None,
              report: str | None = "reports/reproduction-{preset}.md", shipped: bool = True,
              log: Callable[[str], None] | None = None, command: str | None = None,
              gpu_rates: dict[str, tuple[float, str]] | None = None, jobs: int = 1,
              devices: list[str] | None = None, train: bool = True) -> Reproduction:
    """Run (or load) every cell of every table for every seed, then summarise, judge the claims, report.

    Finished runs are loaded, never retrained; ``shipped=False`` ignores the teachers shipped with the kit
    (a cold start trains them too). ``progress`` (default ``widgets.watched()``) draws training bars in a
    terminal or an open notebook, not under papermill or nbval. Returns a ``Reproduction``; writes the
    Markdown report unless ``report`` is None; its full-scale recipes give GPU-hours for the architectures
    that ``gpu_rates`` (``measured_gpu_rates(path)``) holds. ``jobs`` > 1 runs the cells as that many parallel
    processes first (``grid.run_parallel``, teachers first, on ``devices`` in turn), then loads them.
    ``train=False`` trains and evaluates nothing: the report is rendered from what the store holds, and the
    runs it lacks (or that lack the evaluation) are listed in ``missing`` and in the report.

    Example:
        >>> result = reproduce("quick")
        >>> [(c.claim, c.verdict) for c in result.claims]
    """
    import pandas as pd

    from .experiments import run_row, say
    from .store import find_run, machine

    plan = get_plan(plan) if isinstance(plan, str) else plan
    preset = get_preset(plan.preset)
    path = None if report is None else check_report_path(report, preset=plan.preset)  # before anything trains
    check_jobs(jobs, devices)
    log = log or say
    started = time.perf_counter()
    todo = [(pair, cell) for pair in seed_pairs(plan) for cell in cells(plan, *pair)]
    unique = list(dict.fromkeys(cell.config for _, cell in todo))  # cells shared between tables run once
    if jobs > 1 and train:
        run_parallel(reproduce_cells(plan), jobs=jobs, devices=devices, root=root, shipped=shipped, log=log)
    missing = [] if train else [config for config in unique if not _evaluated(config, preset.evaluation, root, shipped)]
    rows, done = [], {}
    trained = loaded = 0
    teachers = {config.teacher: find_run(config.teacher, root, shipped=shipped) is None for config in unique}
    for index, config in enumerate(unique, 1):
        if config in missing:
            continue
        found = find_run(config, root, shipped=shipped) is not None
        log(f"[{index}/{len(unique)}] seed {config.seed}: {config.slug}: {'found' if found else 'training'}")
        done[config] = run_row(config, preset.evaluation, root=root, device=device, progress=progress, shipped=shipped)
        trained, loaded = trained + (not found), loaded + found
    for (seed, transfer_seed), cell in todo:
        if cell.config not in done:
            continue
        row = done[cell.config]
        rows.append({"table": cell.table, "row": cell.row, "column": cell.column, "seed": seed,
                     "transfer_seed": transfer_seed, "run": row["run"], "clean_acc": row["clean_acc"],
                     "robust_acc": row["robust_acc"], "n": row["n"]})
    used = list(dict.fromkeys(c.teacher for c in done))  # the teachers of the evaluated transfers
    folders = lambda configs: [p for p in (find_run(c, root, shipped=shipped) for c in configs) if p]  # noqa: E731
    provenance = {"transfers": provenance_of(folders(done)), "teachers": provenance_of(folders(used))}
    teacher_table = teacher_rows(used, preset.evaluation, root=root, device=device, progress=progress,
                                 shipped=shipped, train=train, log=log)
    students = [c for c in dict.fromkeys(cell.config for _, cell in todo if cell.table in PGD_TABLES) if c in done]
    student_table = student_rows(students, preset.evaluation, root=root, device=device, progress=progress,
                                 shipped=shipped, train=train, log=log)
    frame = pd.DataFrame(rows, columns=["table", "row", "column", "seed", "transfer_seed", "run", "clean_acc",
                                        "robust_acc", "n"])
    summary = summarise(frame)
    from .data import load_dataset
    classes = load_dataset(preset.target_dataset, split="test").num_classes
    result = Reproduction(plan=plan, rows=frame, summary=summary, claims=claims(summary, plan, num_classes=classes),
                          seconds=time.perf_counter() - started, trained=trained, loaded=loaded,
                          teachers_trained=sum(teachers.values()) if train else 0, teachers=len(teachers),
                          command=command or "python -m cartl_kit reproduce --preset " + plan.preset,
                          machine=machine(), missing=[f"{c.slug}-{config_hash(c)}" for c in missing],
                          provenance=provenance, teachers_table=teacher_table, students_table=student_table)
    if path is not None:
        result.report = write_markdown(result, path, gpu_rates=gpu_rates)
    return result


def teacher_label(config) -> str:
    """A teacher's row in the report: ``AT``, ``FDM k = 4, λ = 0.01``."""
    return config.method.upper() + (f" k = {config.k}, λ = {config.lam:g}" if config.k is not None else "")


def under_both_attacks(configs, evaluation, describe: Callable[[Any], dict], *, root=None, device=None,
                       progress: bool | None = None, shipped: bool = True, train: bool = True,
                       log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Each finished run of ``configs`` under the headline ``evaluation`` and the paper's PGD-k beside it, one row
    per run: ``describe(config)``'s columns, then run, clean_acc, robust_acc, pgd_acc. Where PGD-k says much more
    than the ensemble, the run's gradients mislead the weaker attack. ``train=False`` evaluates nothing and leaves
    out the runs lacking either record."""
    import pandas as pd

    from .experiments import run_row
    pgd = evaluation.as_pgd()
    rows = []
    for config in configs:
        evaluated = all(_evaluated(config, e, root, shipped) for e in (evaluation, pgd))
        if not evaluated and not train:
            continue
        if not evaluated and log is not None:
            log(f"{config.kind} {config.slug}: evaluating (the ensemble and PGD-{pgd.attack.steps})")
        row = run_row(config, evaluation, root=root, device=device, progress=progress, shipped=shipped, pgd=True)
        rows.append({**describe(config), "run": row["run"], "clean_acc": row["clean_acc"],
                     "robust_acc": row["robust_acc"], "pgd_acc": row["pgd_acc"]})
    columns = [*describe(configs[0]), "run", "clean_acc", "robust_acc", "pgd_acc"] if len(configs) else []
    return pd.DataFrame(rows, columns=columns)


def teacher_rows(teachers, evaluation, **kwargs) -> pd.DataFrame:
    """Every teacher under both attacks (``under_both_attacks``): teacher, seed, run, clean/robust/pgd acc."""
    return under_both_attacks(list(teachers), evaluation,
                              lambda c: {"teacher": teacher_label(c), "seed": c.seed}, **kwargs)


PGD_TABLES = ("lam_beta", "ablation")  # their students (FDM teachers of each λ, and AT ones) also go under PGD-k


def student_label(config) -> str:
    """A student's row in the report: ``AT → TL, k = 4``, ``FDM k = 4, λ = 0.01 → NEFT β = 0.4, k = 4``."""
    method = f"NEFT β = {config.beta:g}" if config.method == "neft" else config.method.upper()
    return f"{teacher_label(config.teacher)} → {method}, k = {config.k}"


def student_rows(students, evaluation, **kwargs) -> pd.DataFrame:
    """Every run of ``students`` under both attacks (``under_both_attacks``): student, seed (the teacher's),
    transfer_seed, run, clean/robust/pgd acc. Does a student of a teacher that PGD-k overstates inherit the
    masking, or robustness?"""
    return under_both_attacks(list(students), evaluation, lambda c: {
        "student": student_label(c), "seed": c.teacher.seed, "transfer_seed": c.seed}, **kwargs)


def _evaluated(config, evaluation, root, shipped: bool) -> bool:
    """Whether the store holds ``config``'s finished run with ``evaluation`` recorded."""
    from .store import find_run, read_metrics
    path = find_run(config, root, shipped=shipped)
    return path is not None and evaluation.name in read_metrics(path)


def reproduce_cells(plan: str | Plan = "quick") -> list[GridCell]:
    """The jobs of a reproduction (``grid.Cell``): every run of every table and seed once, with the preset's
    evaluation, for ``grid.run_parallel`` or ``grid.commands``."""
    plan = get_plan(plan) if isinstance(plan, str) else plan
    evaluation = get_preset(plan.preset).evaluation
    configs = dict.fromkeys(cell.config for pair in seed_pairs(plan) for cell in cells(plan, *pair))
    return [GridCell(config, (evaluation,)) for config in configs]


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (over runs, n-1 in the denominator; 0 for one run) of every cell, the number of
    runs (``seeds``), and each run's value keyed by (teacher seed, transfer seed) (``clean_runs``, ``robust_runs``:
    what the claims pair)."""
    if "transfer_seed" not in rows:
        rows = rows.assign(transfer_seed=rows["seed"])
    grouped = rows.groupby(["table", "row", "column"], sort=False)
    summary = grouped.agg(clean_mean=("clean_acc", "mean"), clean_std=("clean_acc", "std"),
                          robust_mean=("robust_acc", "mean"), robust_std=("robust_acc", "std"),
                          seeds=("robust_acc", "count")).reset_index()
    for metric in ("clean", "robust"):
        summary[f"{metric}_runs"] = [
            {(int(s), int(t)): float(v) for s, t, v in zip(part["seed"], part["transfer_seed"], part[f"{metric}_acc"])}
            for _, part in grouped]
    return summary.fillna({"clean_std": 0.0, "robust_std": 0.0})


def spread_sources(rows: pd.DataFrame) -> pd.DataFrame:
    """Where each table's robust-accuracy spread comes from: per table, the mean over its cells of the standard
    deviation of the teacher seeds' means (``teacher_sd``) and of the transfer seeds within one teacher
    (``transfer_sd``), in points, over cells with at least two of each."""
    import pandas as pd
    out = []
    for (table, _, _), part in rows.groupby(["table", "row", "column"], sort=False):
        by_teacher = part.groupby("seed")["robust_acc"]
        if by_teacher.ngroups < 2 or by_teacher.size().min() < 2:
            continue
        out.append({"table": table, "teacher_sd": 100 * by_teacher.mean().std(),
                    "transfer_sd": 100 * (by_teacher.var().mean() ** 0.5)})
    if not out:
        return pd.DataFrame(columns=["table", "teacher_sd", "transfer_sd", "cells"])
    frame = pd.DataFrame(out)
    return frame.groupby("table", sort=False).agg(teacher_sd=("teacher_sd", "mean"), transfer_sd=("transfer_sd", "mean"),
                                                  cells=("teacher_sd", "size")).reset_index()


__all__ = ["BN_CASES_2X2", "BN_LABELS", "Cell", "Claim", "PAPER", "PLANS", "Plan", "RECIPES", "Reproduction",
           "SPLIT_SIZES", "Stat", "TABLES", "TITLES", "at_chance", "cells", "claims", "figures", "get_plan", "judge",
           "measured_gpu_rates", "pivot", "recipe_flops", "recipes_markdown", "reproduce", "reproduce_cells", "seed_pairs",
           "spread_sources", "student_label", "student_rows", "summarise", "teacher_label", "teacher_rows",
           "under_both_attacks", "write_markdown"]
