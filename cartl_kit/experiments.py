"""The kit's composite jobs, built on the runs store: ``demo``, ``sweep`` and ``pretrain``.

- ``demo(preset)`` — the main job: an adversarially trained (AT) teacher and an FDM teacher, then vanilla
  fine-tuning and NEFT from the AT teacher and CARTL (FDM teacher + NEFT) at the preset's k, each
  evaluated clean and under PGD; returns the table and writes an HTML report. It uses the shipped
  teachers of the preset when they exist; ``from_scratch=True`` trains everything.
- ``sweep(preset, ks=, methods=, betas=, lams=, bn_cases=)`` — a grid of transfers, skipping finished runs
  (``jobs=N``: as parallel processes; ``sweep_cells``: its jobs, for ``grid.commands``).
- ``pretrain(preset)`` — trains and evaluates the teachers that ship in ``cartl_kit/shipped_runs`` (``SHIPPED_TEACHERS``).

All three return pandas DataFrames (one row per run) and leave every model in a run folder.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .config import (FDM_METHODS, SOURCE_METHODS, EvalConfig, Preset, SourceConfig, TransferConfig, config_hash,
                     get_preset)
from .params import check_report_path
from .runs import (CONVERGENCE_PREFIX, SHIPPED_RUNS, Run, evaluate_run, find_run, is_shipped, load_run, run,
                   runs_root)

# The teachers that ship with the kit, per preset, as (method, k, λ): the grid the notebooks' sliders offer.
SHIPPED_TEACHERS: dict[str, tuple[tuple[str, int | None, float | None], ...]] = {
    "quick": (("at", None, None),
              ("fdm", 4, 0.003), ("fdm", 4, 0.01), ("fdm", 4, 0.03),
              ("fdm", 2, 0.01), ("fdm", 3, 0.01), ("fdm", 5, 0.01),
              ("fdm-rel", 4, 0.01)),  # the scale-invariant FDM (not the paper's), for notebook 03's masking study
    "fashion": (("at", None, None), ("fdm", 4, 0.01)),
}
FROM_SCRATCH_DIR = "from-scratch"  # where demo(from_scratch=True) keeps its runs, apart from students of shipped teachers


def say(message: str) -> None:
    from .progress import write
    write(message, file=sys.stderr)


def shipped_teacher_configs(preset: str | Preset = "quick", seed: int = 0) -> list[SourceConfig]:
    """The source configs of the teachers shipped for ``preset`` (empty when it ships none)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    return [preset.source(method, k=k, lam=lam, seed=seed) for method, k, lam in SHIPPED_TEACHERS.get(preset.name, ())]


def _row(finished: Run, result: dict, **extra) -> dict:
    config = finished.config
    row = {"run": finished.path.name, **extra}
    if isinstance(config, TransferConfig):
        row.update(method=config.method, teacher=config.teacher.method, k=config.k,
                   lam=config.teacher.lam, beta=config.beta, bn_case=config.bn_case, lwf_lam=config.lwf_lam)
    else:
        row.update(method=config.method, k=config.k, lam=config.lam)
    row.update(clean_acc=result["clean_acc"], robust_acc=result["robust_acc"], n=result["n"],
               attack=result.get("label", result.get("attack")), shipped=is_shipped(finished.path))
    return row


def evaluate_row(finished: Run, evaluation: EvalConfig, *, device=None, progress: bool = True, pgd: bool = False,
                 **extra) -> dict:
    """``finished``'s table row under ``evaluation`` (the headline ``robust_acc``, with the attack's name in
    ``attack``); with ``pgd``, also ``pgd_acc``: its robust accuracy under ``evaluation.as_pgd()`` (the
    paper's PGD-k), so a table can show where the weaker attack overstates robustness."""
    row = _row(finished, evaluate_run(finished, evaluation, device=device, progress=progress), **extra)
    report = finished.metrics.get(CONVERGENCE_PREFIX + evaluation.name)
    if report is not None:  # a convergence report exists: its verdict travels with the number
        row["checks"] = "converged" if report["converged"] else "; ".join(report["flags"]) or "not converged"
    if pgd and evaluation.method != "pgd":
        row["pgd_acc"] = evaluate_run(finished, evaluation.as_pgd(), device=device, progress=progress)["robust_acc"]
        row["pgd_attack"] = evaluation.as_pgd().label
    return row


def run_row(config, evaluation: EvalConfig, *, root=None, device=None, callback=None, progress: bool | None = None,
            shipped: bool = True, pgd: bool = False, **extra) -> dict:
    """Run (or load) ``config``, evaluate it, and return its table row (config fields, clean and robust accuracy).

    ``callback`` receives each epoch's record while a new run trains (e.g. ``LiveHistory.callback``); for a
    run that is loaded, it receives the recorded history, so live plots look the same either way.
    ``extra`` columns (e.g. ``label=``) are added to the row; ``pgd=True`` adds ``pgd_acc``, the robust
    accuracy under the paper's PGD-k beside the headline (see ``evaluate_row``). ``progress`` (default: ``widgets.watched()``)
    draws training and evaluation bars: in a terminal or an open notebook, not under papermill or nbval.

    Example:
        >>> row = run_row(preset.transfer(preset.source("at"), "tl", k=2), preset.evaluation, label="k=2")
    """
    if progress is None:
        from .widgets import watched
        progress = watched()
    found = find_run(config, root, shipped=shipped) is not None
    finished = run(config, root=root, device=device, progress=progress, callback=callback, shipped=shipped)
    if found and callback is not None:
        for record in finished.history:
            callback(record)
    return evaluate_row(finished, evaluation, device=device, progress=progress, pgd=pgd, **extra)


# --- demo ---------------------------------------------------------------------------------------

@dataclass
class DemoResult:
    """What ``demo`` returns: the students' table, the teachers' table, the report path, the seconds taken."""

    table: "object"  # pandas.DataFrame: label, method, teacher, k, lam, beta, clean_acc, robust_acc, run, ...
    teachers: "object"  # pandas.DataFrame: the two teachers on the source task
    report: Path | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # sentences generated from the tables (``cartl_kit.findings``)
    evaluation: EvalConfig | None = None  # the headline evaluation (its ``label`` names the attack)


def demo(preset: str | Preset = "quick", *, root=None, device=None, from_scratch: bool = False, seed: int = 0,
         report: str | os.PathLike | None = "reports/demo-{preset}.html", progress: bool = True,
         log: Callable[[str], None] | None = say) -> DemoResult:
    """Teachers (AT, FDM), three transfers (vanilla, NEFT, CARTL) at the preset's k, evaluated; a report.

    Runs that exist are loaded, so a second call takes seconds. With ``from_scratch`` the shipped
    teachers are ignored and all runs live in ``<root>/from-scratch/``.

    Example:
        >>> result = demo("quick")
        >>> result.table[["label", "clean_acc", "robust_acc"]]
    """
    import pandas as pd
    started = time.perf_counter()
    log = log or (lambda message: None)
    preset_ = get_preset(preset) if isinstance(preset, str) else preset
    path = None if report is None else check_report_path(report, preset=preset_.name)  # before anything trains
    if from_scratch:
        root = runs_root(root) / FROM_SCRATCH_DIR
    shipped = not from_scratch
    teachers = {"AT": preset_.source("at", seed=seed), "FDM": preset_.source("fdm", seed=seed)}
    k, beta, lam = preset_.k, preset_.beta, preset_.lam
    students = [("vanilla TL", preset_.transfer(teachers["AT"], "tl", k=k, seed=seed)),
                ("NEFT", preset_.transfer(teachers["AT"], "neft", k=k, beta=beta, seed=seed)),
                ("CARTL (FDM + NEFT)", preset_.transfer(teachers["FDM"], "neft", k=k, beta=beta, seed=seed))]
    evaluation = preset_.evaluation
    pgd = evaluation.method != "pgd"  # show the paper's PGD-k beside a stronger headline
    notes = [f"preset {preset_.name}: {preset_.arch}, source {preset_.source_dataset} -> target "
             f"{preset_.target_dataset}, k = {k}, λ = {lam:g}, β = {beta:g}; ε = {evaluation.attack.eps:.4g}; "
             f"robust % = {evaluation.label}" + (f"; {evaluation.as_pgd().label} % = the paper's attack, beside it"
                                                  if pgd else "")]
    steps = len(teachers) + len(students)
    teacher_rows, histories = [], {}
    for index, (name, config) in enumerate(teachers.items(), 1):
        found = find_run(config, root, shipped=shipped)
        what = ("shipped with the kit" if is_shipped(found) else "found") if found else "training"
        log(f"[{index}/{steps}] {name} teacher ({config.slug}): {what}")
        finished = run(config, root=root, device=device, progress=progress, shipped=shipped)
        teacher_rows.append(evaluate_row(finished, evaluation, device=device, progress=progress, pgd=pgd,
                                         label=f"{name} teacher", dataset=config.dataset))
        histories[f"{name} teacher"] = finished.history
        if is_shipped(finished.path):
            notes.append(f"{name} teacher loaded from the kit's shipped runs ({finished.path.name}); "
                         "train it yourself with --from-scratch")
    rows = []
    for index, (label, student) in enumerate(students, len(teachers) + 1):
        found = find_run(student, root, shipped=shipped)
        log(f"[{index}/{steps}] {label} ({student.slug}): {'found' if found else 'fine-tuning'}")
        rows.append(run_row(student, evaluation, root=root, device=device, progress=progress,
                            shipped=shipped, pgd=pgd, label=label))
    table = pd.DataFrame(rows)
    teacher_table = pd.DataFrame(teacher_rows)
    from .findings import attack_findings, demo_findings
    short, pgd_short = evaluation.short, evaluation.as_pgd().short
    teacher_flags = [line for line in attack_findings(teacher_table, headline=short, pgd=pgd_short) if "overstates" in line]
    findings = teacher_flags + demo_findings(table, headline=short, pgd=pgd_short)
    if path is not None:
        from .plots import history_figure, tradeoff_figure, write_report
        extra = ["pgd_acc"] if pgd else []
        shown = table[["label", "method", "teacher", "k", "lam", "beta", "clean_acc", "robust_acc", *extra, "n", "run"]]
        teacher_shown = teacher_table[["label", "dataset", "k", "lam", "clean_acc", "robust_acc", *extra, "n", "run"]]
        write_report(path, title=f"CARTL demo — preset {preset_.name}", notes=notes + findings,
                     tables={"Transfer to the target task": shown, "Teachers on the source task": teacher_shown},
                     figures=[tradeoff_figure(table, color="label"),
                              history_figure(histories, "train_adv_acc",
                                             title="Teachers: accuracy on their PGD examples per epoch")])
    return DemoResult(table=table, teachers=teacher_table, report=path, seconds=time.perf_counter() - started,
                      notes=notes, findings=findings, evaluation=evaluation)


# --- sweep --------------------------------------------------------------------------------------

def sweep_configs(preset: str | Preset = "quick", *, ks: Iterable[int] | None = None, methods: Iterable[str] = ("tl",),
                  betas: Iterable[float] | None = None, teacher: str = "at", lams: Iterable[float] | None = None,
                  bn_cases: Iterable[str] = ("vanilla",), seed: int = 0, source: str | None = None,
                  target: str | None = None, arch: str | None = None) -> list[TransferConfig]:
    """The transfer configs of a grid (validated before anything runs; duplicates dropped).

    ``betas`` apply to ``neft`` only; an FDM teacher (``teacher="fdm"``) is trained for each λ in
    ``lams`` with the same k as the student it feeds (CARTL's pairing). ``source``, ``target`` and
    ``arch`` replace the preset's datasets and architecture (e.g. the paper's CIFAR-10 -> SVHN with WRN-28-4).
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if teacher not in SOURCE_METHODS:
        raise ValueError(f"unknown teacher method {teacher!r}; choose one of {', '.join(SOURCE_METHODS)}")
    fdm = teacher in FDM_METHODS
    methods, bn_cases = _grid_axis("methods", methods), _grid_axis("bn_cases", bn_cases)
    ks = _grid_axis("ks", ks) if ks is not None else [preset.k]
    if betas is not None:  # given: they must be used (the grid would ignore them silently otherwise)
        betas = _grid_axis("betas", betas)
        if "neft" not in methods:
            raise ValueError(f"betas={betas!r} apply to method 'neft' only; add 'neft' to methods or leave betas out")
    if lams is not None:
        lams = _grid_axis("lams", lams)
        if not fdm:
            raise ValueError(f"lams={lams!r} are FDM teachers' weights; add teacher='fdm' or leave lams out")
    betas = [preset.beta] if betas is None else betas
    lams = [preset.lam] if lams is None else lams
    configs: dict[str, TransferConfig] = {}
    for k, method, bn_case, lam in itertools.product(ks, methods, bn_cases, lams if fdm else [None]):
        teacher_config = preset.source(teacher, k=k if fdm else None, lam=lam, seed=seed,
                                       dataset=source, arch=arch)
        for beta in betas if method == "neft" else [None]:
            config = preset.transfer(teacher_config, method, k=k, beta=beta, bn_case=bn_case, seed=seed,
                                     lwf_lam=preset.lam if method == "lwf" else None, dataset=target)
            configs.setdefault(config_hash(config), config)
    return list(configs.values())


def _grid_axis(name: str, values) -> list:
    """One axis of a grid as a list; ValueError when it is empty or not a list (a grid of nothing runs nothing)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a list, got {values!r}")
    values = list(values)
    if not values:
        raise ValueError(f"{name} is empty; give at least one value")
    return values


def sweep_cells(preset: str | Preset = "quick", *, pgd: bool = False, **grid) -> list:
    """The jobs of a sweep (``grid.Cell``): each transfer of the grid with the preset's evaluation (and, with
    ``pgd``, the paper's PGD-k), for ``grid.run_parallel`` or ``grid.commands``."""
    from .grid import Cell
    preset_ = get_preset(preset) if isinstance(preset, str) else preset
    evaluations = (preset_.evaluation, preset_.evaluation.as_pgd()) if pgd and preset_.evaluation.method != "pgd" \
        else (preset_.evaluation,)
    return [Cell(config, evaluations) for config in sweep_configs(preset_, **grid)]


def sweep(preset: str | Preset = "quick", *, root=None, device=None, progress: bool = True,
          log: Callable[[str], None] | None = say, pgd: bool = False, jobs: int = 1,
          devices: list[str] | None = None, **grid) -> "object":
    """Run (or load) and evaluate every transfer of a grid (see ``sweep_configs``); a DataFrame of results.

    ``robust_acc`` is under the preset's headline evaluation (named in ``attack``); ``pgd=True`` adds
    ``pgd_acc`` under the paper's PGD-k. ``jobs`` > 1 trains and evaluates the cells as that many parallel
    processes first (``grid.run_parallel``, on ``devices`` in turn), then loads them into the table.

    Example:
        >>> table = sweep("quick", ks=[1, 2, 3, 4], methods=["tl", "neft"], jobs=2)
    """
    import pandas as pd
    from .grid import check_jobs, run_parallel
    preset_ = get_preset(preset) if isinstance(preset, str) else preset
    cells = sweep_cells(preset_, pgd=pgd, **grid)
    configs = [cell.config for cell in cells]
    check_jobs(jobs, devices)
    log = log or (lambda message: None)
    if jobs > 1:
        run_parallel(cells, jobs=jobs, devices=devices, root=root, log=log)
    rows = []
    for index, config in enumerate(configs, 1):
        found = find_run(config, root)
        log(f"[{index}/{len(configs)}] {config.slug}: {'found, skipped' if found else 'fine-tuning'}")
        rows.append(run_row(config, preset_.evaluation, root=root, device=device, progress=progress, pgd=pgd))
    return pd.DataFrame(rows)


# --- the shipped teachers -----------------------------------------------------------------------

def pretrain(preset: str | Preset = "quick", *, root=SHIPPED_RUNS, device="cpu", progress: bool = True,
             log: Callable[[str], None] | None = say) -> "object":
    """Train and evaluate the teachers of ``SHIPPED_TEACHERS[preset]`` into ``root`` (default: the kit's
    ``cartl_kit/shipped_runs``). Finished ones are kept; a DataFrame of their clean and robust source accuracy is returned.

    This is the command that made the shipped files: ``python -m cartl_kit pretrain --preset quick``.
    """
    import pandas as pd
    preset_ = get_preset(preset) if isinstance(preset, str) else preset
    configs = shipped_teacher_configs(preset_)
    if not configs:
        raise ValueError(f"preset {preset_.name!r} ships no teachers; pretrain knows {', '.join(SHIPPED_TEACHERS)}")
    log = log or (lambda message: None)
    rows = []
    for index, config in enumerate(configs, 1):
        log(f"[{index}/{len(configs)}] {config.slug}")
        finished = run(config, root=root, device=device, progress=progress)
        rows.append(_row(finished, evaluate_run(finished, preset_.evaluation, device=device, progress=progress, save=True)))
        if preset_.evaluation.method != "pgd":  # the paper's PGD-k too, so tables can show both
            evaluate_run(finished, preset_.evaluation.as_pgd(), device=device, progress=progress, save=True)
    return pd.DataFrame(rows)


def remeasure(preset: str | Preset = "quick", *, root=SHIPPED_RUNS, device="cpu", progress: bool = True,
              log: Callable[[str], None] | None = say) -> "object":
    """Measure again every evaluation of the preset (its headline and its PGD-k) that the shipped teachers in
    ``root`` have recorded, and replace the records: after a change to how evaluations are computed.
    Nothing is trained, and no evaluation is added. Returns a DataFrame of the old and new robust accuracies.

    ``python -m cartl_kit pretrain --preset quick --remeasure``
    """
    import pandas as pd
    preset_ = get_preset(preset) if isinstance(preset, str) else preset
    log = log or (lambda message: None)
    rows = []
    for config in shipped_teacher_configs(preset_):
        path = find_run(config, root, shipped=False)
        if path is None:
            continue
        finished = load_run(path)
        for evaluation in {e.name: e for e in (preset_.evaluation, preset_.evaluation.as_pgd())}.values():
            if evaluation.name in finished.metrics:
                log(f"{config.slug}: {evaluation.label}")
                old = finished.metrics[evaluation.name]["robust_acc"]
                new = evaluate_run(finished, evaluation, device=device, progress=progress, save=True, cached=False)
                rows.append({"run": path.name, "evaluation": evaluation.short, "old_robust_acc": old,
                             "robust_acc": new["robust_acc"], "n": new["n"]})
    return pd.DataFrame(rows)
