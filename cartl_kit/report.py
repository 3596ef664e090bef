"""The reproduction's report: its five tables beside the paper's numbers, the claims, the setting, the recipes.

``write_markdown(result, path)`` writes the Markdown report of a ``reproduce.Reproduction`` (and its numbers as
JSON beside it); ``pivot`` lays one table of the summary out as the paper does, ``PAPER`` states the paper's
numbers for each table (built from ``paper_results``, never typed here), ``teachers_markdown`` puts every teacher
under both attacks, and the students of tables 3 and 4 (``students_markdown``), and ``figures`` draws the trade-off in k and every cell's clean against robust accuracy. The
full-scale recipes come from ``recipes.recipes_markdown`` with the GPU rates the caller gives.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from .claims import at_chance
from .config import EvalConfig, Preset, get_preset
from .models import ARCHITECTURES
from .paper_results import ABLATION, BASELINES, BN_ABLATION, BN_CASE_LABELS, LAM_BETA, row_text
from .plan import BN_LABELS, TABLES, Plan, small_column, small_data
from .provenance import describe
from .recipes import recipes_markdown

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from .reproduce import Reproduction

# The settings of §11.1 shown beside the BatchNorm table (its CIFAR-10 → GTSRB row is stored, not shown).
REPORTED_BN_SETTINGS = ("CIFAR-100 → CIFAR-10, k = 8", "CIFAR-10 → SVHN, k = 6", "CIFAR-10 → SVHN, k = 5")


def _lam_beta_text() -> str:
    betas = list(next(iter(LAM_BETA.cells.values())))
    rows: dict[int, list[str]] = {}
    for (k, lam), cells in LAM_BETA.cells.items():
        rows.setdefault(k, []).append(f"λ = {lam:g}: {row_text(cells)}")
    return (f"CIFAR-100 → CIFAR-10, β = {' / '.join(f'{b:.1f}' for b in betas)}: "
            + ". ".join(f"k = {k}, " + "; ".join(parts) for k, parts in rows.items()) + ".")


# The paper's numbers beside each table (clean / robust %; CARTL_REFERENCE.md §11: CIFAR, WRN-34-10 / WRN-28-4,
# PGD-100), all read from ``paper_results``.
PAPER = {
    "tradeoff": "No table: the poster states the trend (accuracy rises with k, robustness falls); §11.3's TL row "
                f"reads {row_text(ABLATION['AT → TL'])} at k = {', '.join(map(str, ABLATION['AT → TL']))} on "
                "CIFAR-100 → CIFAR-10.",
    "batchnorm": f"cases in the order {', '.join(f'({label})' for label in BN_CASE_LABELS.values())}: "
                 + "; ".join(f"{setting}: {row_text(BN_ABLATION[setting])}" for setting in REPORTED_BN_SETTINGS) + ".",
    "lam_beta": _lam_beta_text(),
    "ablation": f"CIFAR-100 → CIFAR-10, k = {' / '.join(map(str, ABLATION['AT → TL']))}: "
                + "; ".join(f"{row} {row_text(cells)}" for row, cells in ABLATION.cells.items()) + ".",
    "baselines": f"{' / '.join(next(iter(BASELINES.cells.values())))}: "
                 + "; ".join(f"{pair} {row_text(cells)}" for pair, cells in BASELINES.cells.items())
                 + ". Small-data: a claim of the poster, no numbers.",
}
TITLES = {"tradeoff": "1. The trade-off in k (vanilla transfer from the AT teacher)",
          "batchnorm": "2. The four BatchNorm cases (sub-model frozen set | extractor frozen set)",
          "lam_beta": "3. CARTL's λ × β sweep (FDM teacher with λ, NEFT with β)",
          "ablation": "4. Component ablation",
          "baselines": "5. LwF, vanilla and CARTL, full and small target data"}


def pivot(summary: pd.DataFrame, table: str) -> pd.DataFrame:
    """One table of the summary as row × column cells of "clean / robust" (mean ± std, percent)."""
    import pandas as pd
    part = summary[summary.table == table]
    cell = lambda r: (f"{100 * r.clean_mean:.1f} ± {100 * r.clean_std:.1f} / "  # noqa: E731
                      f"{100 * r.robust_mean:.1f} ± {100 * r.robust_std:.1f}")
    frame = pd.DataFrame({"row": part.row, "column": part.column, "cell": [cell(r) for r in part.itertuples()]})
    shown = frame.pivot(index="row", columns="column", values="cell")
    shown = shown.loc[list(dict.fromkeys(part.row)), list(dict.fromkeys(part.column))]
    if table == "batchnorm":
        shown = shown.rename(columns=BN_LABELS)
    shown.index.name = None
    shown.columns.name = None
    return shown


def _markdown_table(frame: pd.DataFrame) -> str:
    cell = lambda v: "" if isinstance(v, float) and math.isnan(v) else str(v).replace("|", "\\|")  # noqa: E731
    header = "| | " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|---" * (len(frame.columns) + 1) + "|"
    lines = [f"| {cell(index)} | " + " | ".join(cell(v) for v in row) + " |"
             for index, row in zip(frame.index, frame.itertuples(index=False))]
    return "\n".join([header, rule, *lines])


def _attack_words(evaluation: EvalConfig) -> str:
    """The evaluation's attack in words, for the report's setting line."""
    eps = f"ε = {evaluation.attack.eps:.4g}"
    if evaluation.method == "ensemble":
        return (f"the {evaluation.label}, {eps}: the worst case per example, an example robust only if no attack "
                "breaks it")
    if evaluation.method == "autoattack":
        return f"{evaluation.label}, {eps}"
    return (f"{evaluation.label} ({eps}, step {evaluation.attack.step_size:.4g}, random start, "
            f"{'final' if evaluation.mode == 'final' else 'any'} iterate)")


def numbers_path(path: Path) -> Path:
    """Where a report's numbers go beside it: ``reports/reproduction-quick.md`` -> ``reproduction-quick.json``."""
    return path.with_suffix(".json") if path.suffix != ".json" else path.with_suffix(".numbers.json")


def report_numbers(result: Reproduction) -> dict:
    """What the report says, as data: the plan, the attack, the claims with their verdicts, every cell's mean and
    spread, the runs' provenance, what is missing (read by ``tools/readme_results.py`` for the README)."""
    import dataclasses
    import json
    preset = get_preset(result.plan.preset)
    return {"preset": result.plan.preset, "command": result.command, "machine": result.machine,
            "seconds": round(result.seconds, 1), "plan": dataclasses.asdict(result.plan),
            "attack": preset.evaluation.label, "eps": preset.evaluation.attack.eps,
            "pgd_attack": preset.evaluation.as_pgd().label, "masking_gap": MASKING_GAP,
            "claims": [dataclasses.asdict(claim) for claim in result.claims],
            "summary": json.loads(result.summary.to_json(orient="records")),
            "provenance": {what: dataclasses.asdict(p) for what, p in result.provenance.items()},
            "teachers": [] if result.teachers_table is None else json.loads(result.teachers_table.to_json(orient="records")),
            "students": [] if result.students_table is None else json.loads(result.students_table.to_json(orient="records")),
            "missing": result.missing}


def write_markdown(result: Reproduction, path: Path, *, gpu_rates: dict[str, tuple[float, str]] | None = None) -> Path:
    """The report: command, machine, date, run time; the five tables beside the paper's; the claims; the
    full-scale recipes. Written atomically (complete or absent), with its numbers as JSON beside it
    (``numbers_path``, ``report_numbers``)."""
    from .store import atomic_write, write_json
    plan, preset = result.plan, get_preset(result.plan.preset)
    m = result.machine
    lines = [f"# CARTL reproduction — preset `{plan.preset}`", "",
             "Produced by the command below; do not edit by hand (a rerun overwrites it).", "",
             f"- command: `{result.command}`",
             f"- machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('torch_threads')} torch threads"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"; torch {m.get('torch')}, Python {m.get('python')}",
             f"- date: {m.get('date')}",
             f"- this invocation: {result.seconds / 60:.1f} min ({result.trained} transfers trained, {result.loaded} "
             f"loaded; {result.teachers_trained} of {result.teachers} teachers trained)",
             *[f"- {describe(p, what)}" for what, p in result.provenance.items()],
             f"- setting: {preset.arch}, source `{preset.source_dataset}` → target `{preset.target_dataset}`; "
             f"training PGD-{preset.train_attack.steps} ε = {preset.train_attack.eps:.4g}; robust accuracy under "
             f"{_attack_words(preset.evaluation)} on the target's test split; "
             f"teacher seeds {', '.join(map(str, plan.seeds))} × transfer seeds "
             f"{', '.join(map(str, plan.transfer_seeds))}",
             "- cells: clean / robust accuracy in %, mean ± standard deviation over the runs (every teacher seed "
             "with every transfer seed).", "",
             "## The paper's claims, judged here", "",
             "Rule, fixed before the runs: a comparison of two cells pairs their runs that share the teacher seed and "
             "the transfer seed; it *agrees* when the mean paired difference goes the claimed way and is *clear* when "
             "it exceeds two standard errors of the paired differences (2·sd/√n). A cell with one run is compared "
             "unpaired: clear when the gap exceeds the seeds' spread combined (√(s₁² + s₂²)). **holds**: every "
             "comparison clear; **holds partly**: at least half agree; **does not hold here**: fewer. A claim that "
             "agrees but is not clear says how many paired runs would make it clear at the spread seen.", ""]
    lines += [f"{i}. {claim.sentence()}" for i, claim in enumerate(result.claims, 1)]
    if result.missing:
        lines += ["", f"**Incomplete:** rendered from the runs store without training; {len(result.missing)} "
                  "run(s) are missing or not evaluated, so their cells are empty and the claims that need them are "
                  "judged on the rest or \"not measured\": " + ", ".join(f"`{m}`" for m in result.missing) + "."]
    from .data import load_dataset
    chance = at_chance(result.summary, load_dataset(preset.target_dataset, split="test").num_classes)
    if len(chance):
        lines += ["", "Cells at chance accuracy (clean within 5 points of 1 / classes) are failed experiments: these "
                  "models learned nothing, so their robust accuracy means nothing, and no claim above counts them: "
                  + "; ".join(f"{r.table} {r.row} | {r.column} ({100 * r.clean_mean:.1f} / {100 * r.robust_mean:.1f})"
                              for r in chance.itertuples()) + "."]
    from .reproduce import spread_sources
    sources = spread_sources(result.rows) if len(result.rows) else None
    if sources is not None and len(sources):
        lines += ["", "Where the spread of robust accuracy comes from (mean over each table's cells, in points): the "
                  "standard deviation of the teacher seeds' means, and of the transfer seeds around one teacher:", "",
                  "| table | teacher seeds | transfer seeds | cells |", "|---|---|---|---|"]
        lines += [f"| {r.table} | {r.teacher_sd:.1f} | {r.transfer_sd:.1f} | {r.cells} |" for r in sources.itertuples()]
    for table in TABLES:
        lines += ["", f"## {TITLES[table]}", "", _markdown_table(pivot(result.summary, table)), "",
                  f"The paper: {PAPER[table]}"]
    lines += teachers_markdown(result, preset)
    lines += ["", "## Differences from the paper's setting", "",
              f"- Data and scale: `{preset.source_dataset}` → `{preset.target_dataset}` with {preset.arch} "
              f"(L = {ARCHITECTURES[preset.arch].num_blocks}) instead of CIFAR with WRN-34-10 (L = 17) or WRN-28-4; "
              f"{preset.source_optim.epochs} source and {preset.transfer_optim.epochs} transfer epochs instead of 100; "
              f"{preset.evaluation.short} instead of the paper's PGD-100 (foolbox, step ε/4). The k values are this architecture's "
              f"(the paper's k = 4 / 6 / 8 of 17 blocks correspond roughly to k = 2 / 3 / 4 of 8).",
              f"- The FDM teachers are trained for the k of the student they feed (CARTL's pairing), λ ∈ "
              f"{{{', '.join(f'{x:g}' for x in plan.lams)}}}; the ablation and the baselines use λ = "
              f"{plan.ablation_lam:g}, β = {plan.ablation_beta:g} (the paper's AT+FDM → NEFT row is λ = 0.005, β = 0.4).",
              f"- LwF fine-tunes k = {plan.lwf_k} blocks with BatchNorm updating (`train-update`), λ_d = {plan.lwf_lam:g}.",
              f"- Every transfer trains {preset.transfer_optim.epochs} epochs at batch {preset.transfer_optim.batch_size} "
              f"on the full target set ({preset.transfer_optim.epochs * _batches(preset, None)} SGD steps). The small-data "
              "columns keep a seeded stratified share of it and train 1 / share as many epochs, the schedule stretched "
              "with them: " + "; ".join(f"{small_column(f)}: {small_data(_template(preset), f).optim.epochs} epochs, "
                                        f"{small_data(_template(preset), f).optim.epochs * _batches(preset, f)} steps"
                                        for f in plan.small_fractions) + ".",
              "", "## Full scale: recipes for a GPU", "", recipes_markdown(gpu_rates), ""]
    text = "\n".join(lines)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(numbers_path(path), report_numbers(result))
    atomic_write(path, write)
    return path


MASKING_GAP = 0.05  # PGD-k above the ensemble by more than this (5 points): the teacher's gradients mislead PGD-k


def _pct(values) -> str:
    """A column's mean ± standard deviation in percent (0 spread for one value)."""
    return f"{100 * values.mean():.1f} ± {100 * (values.std() if len(values) > 1 else 0.0):.1f}"


def overstates(pgd_acc: float, robust_acc: float, gap: float = MASKING_GAP) -> bool:
    """Whether PGD-k's robust accuracy exceeds the ensemble's by more than ``gap``, judged on the number a
    report shows (points, one decimal), so that a shown "+5.0" is never called over 5 points."""
    return round(100 * (pgd_acc - robust_acc), 1) > 100 * gap


def teachers_markdown(result: Reproduction, preset: Preset) -> list[str]:
    """Section 6: every teacher under the ensemble and the paper's PGD-k, over seeds, and the seeds where PGD-k
    overstates it by more than ``MASKING_GAP``."""
    table = result.teachers_table
    if table is None or not len(table):
        return []
    pgd = preset.evaluation.as_pgd().label
    lines = ["", f"## 6. The teachers under the ensemble and under {pgd}", "",
             f"Clean / robust accuracy in %, mean ± standard deviation over the teacher seeds. The last column is how "
             f"many points {pgd} (the kind of attack the paper reports) overstates each seed's robust accuracy "
             "against the ensemble (the headline), on the same test images.", "",
             f"| teacher | seeds | clean | ensemble | {pgd} | {pgd} − ensemble, per seed |", "|---|---|---|---|---|---|"]
    masked = []
    for teacher, part in table.groupby("teacher", sort=False):
        gaps = [(int(r.seed), r.pgd_acc - r.robust_acc, overstates(r.pgd_acc, r.robust_acc)) for r in part.itertuples()]
        masked += [f"{teacher}, seed {seed} ({100 * gap:+.1f})" for seed, gap, over in gaps if over]
        lines.append(f"| {teacher} | {len(part)} | {_pct(part.clean_acc)} | {_pct(part.robust_acc)} | "
                     f"{_pct(part.pgd_acc)} | " + ", ".join(f"s{seed} {100 * gap:+.1f}" for seed, gap, _ in gaps) + " |")
    lines += ["", f"Teachers that {pgd} overstates by more than {100 * MASKING_GAP:g} points (a sign of gradient "
              "masking, or of too weak an attack): " + ("; ".join(masked) if masked else "none") + "."]
    return lines + students_markdown(result.students_table, pgd)


def students_markdown(table, pgd: str) -> list[str]:
    """Section 6's second part: the students of tables 3 and 4 under both attacks, and how many runs of each
    ``pgd`` overstates by more than ``MASKING_GAP`` (do the students of masked teachers inherit the masking?)."""
    if table is None or not len(table):
        return []
    lines = ["", f"### Their students (tables 3 and 4) under the ensemble and under {pgd}", "",
             f"Every run of each student (teacher seed × transfer seed), mean ± standard deviation; the last column "
             f"counts the runs that {pgd} overstates by more than {100 * MASKING_GAP:g} points.", "",
             f"| student | runs | clean | ensemble | {pgd} | {pgd} − ensemble | runs overstated |",
             "|---|---|---|---|---|---|---|"]
    for student, part in table.groupby("student", sort=False):
        over = [r for r in part.itertuples() if overstates(r.pgd_acc, r.robust_acc)]
        named = "all" if len(over) == len(part) else ", ".join(f"s{int(r.seed)}/t{int(r.transfer_seed)}" for r in over)
        lines.append(f"| {student} | {len(part)} | {_pct(part.clean_acc)} | {_pct(part.robust_acc)} | "
                     f"{_pct(part.pgd_acc)} | {100 * (part.pgd_acc - part.robust_acc).mean():+.1f} | "
                     f"{len(over)}" + (f" ({named})" if named else "") + " |")
    return lines


def _template(preset: Preset):
    return preset.transfer(preset.source("at"), "tl", k=1)


def _batches(preset: Preset, fraction: float | None) -> int:
    """Batches per epoch of the target's training split, full (None) or its ``fraction``."""
    from .data import load_dataset
    name = preset.target_dataset if fraction is None else small_data(_template(preset), fraction).dataset
    return math.ceil(len(load_dataset(name, split="train")) / preset.transfer_optim.batch_size)


def figures(result: Reproduction) -> list[go.Figure]:
    """Plotly figures of the reproduction: the trade-off in k with error bars, and every cell's clean
    against robust accuracy, one colour per table."""
    import plotly.graph_objects as go
    summary = result.summary
    part = summary[summary.table == "tradeoff"]
    ks = list(result.plan.tradeoff_ks)  # the rows, in plan order
    tradeoff = go.Figure()
    for metric, name in (("clean", "clean accuracy"), ("robust", "robust accuracy")):
        tradeoff.add_trace(go.Scatter(x=ks, y=100 * part[f"{metric}_mean"], name=name, mode="lines+markers",
                                      error_y=dict(type="data", array=100 * part[f"{metric}_std"])))
    tradeoff.update_layout(title="Vanilla transfer: accuracy against the number of fine-tuned blocks k (mean ± std)",
                           xaxis_title="k (fine-tuned blocks)", yaxis_title="%")
    scatter = go.Figure()
    for table in TABLES:
        part = summary[summary.table == table]
        scatter.add_trace(go.Scatter(x=100 * part.robust_mean, y=100 * part.clean_mean, mode="markers", name=table,
                                     text=[f"{r} | {c}" for r, c in zip(part.row, part.column)],
                                     error_x=dict(type="data", array=100 * part.robust_std),
                                     error_y=dict(type="data", array=100 * part.clean_std)))
    scatter.update_layout(title="Every cell: clean against robust accuracy (mean ± std over seeds)",
                          xaxis_title="robust accuracy %", yaxis_title="clean accuracy %")
    return [tradeoff, scatter]


__all__ = ["MASKING_GAP", "PAPER", "REPORTED_BN_SETTINGS", "TITLES", "figures", "numbers_path", "overstates", "pivot",
           "report_numbers", "students_markdown", "teachers_markdown", "write_markdown"]
