"""Reproduce the paper's tables at a small scale, with seeds, and say which of its claims hold here.

``python -m cartl_kit reproduce --preset quick`` (and notebook ``07_reproduction``) runs, for every seed
of a ``Plan``, the analogue of each table of the paper (``CARTL_REFERENCE.md`` §11):

1. ``tradeoff`` — vanilla transfer for every k (accuracy rises with k, robustness falls);
2. ``batchnorm`` — the four BatchNorm cases at one or two k (the 2×2 table);
3. ``lam_beta`` — NEFT β × FDM λ at three k (CARTL's sweep);
4. ``ablation`` — AT→TL, AT→NEFT, AT+FDM→NEFT at the same three k;
5. ``baselines`` — LwF, vanilla and CARTL on the full target set and on a small per-class subset.

Every cell is a run of the runs store, so cells shared between tables (and with the notebooks) train once
and a second call only loads and re-renders. ``summarise`` turns the rows into mean ± standard deviation
over seeds, ``claims`` states each of the paper's claims with the measured numbers and a verdict ("holds",
"holds partly", "does not hold here") computed by fixed rules from those numbers, and ``write_markdown``
writes the report. ``recipes`` gives the ``sweep`` commands of the ``paper`` preset for the full scale,
with their compute in FLOPs and, where a GPU throughput was measured with ``bench/at_step.py``, GPU-hours.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .config import TransferConfig, get_preset
from .models import ARCHITECTURES
from .params import check_report_path

BN_CASES_2X2 = ("train-update", "train-reuse", "freeze-update", "vanilla")
BN_LABELS = {"train-update": "– | W,b", "train-reuse": "– | μ,σ,W,b", "freeze-update": "W,b | W,b",
             "vanilla": "W,b | μ,σ,W,b"}
TABLES = ("tradeoff", "batchnorm", "lam_beta", "ablation", "baselines")


@dataclass(frozen=True)
class Plan:
    """What the reproduction runs, per seed (see the module docstring for the five tables).

    ``lams`` are the FDM teachers' weights (the larger first), ``betas`` NEFT's bounds (the largest
    first); the ablation uses ``ablation_lam``/``ablation_beta`` for both NEFT rows, as the paper's
    AT+FDM→NEFT row is its λ = 0.005, β = 0.4 cell. The baselines compare at ``baseline_k`` with CARTL =
    FDM(λ = ablation_lam) + NEFT(β = ablation_beta); LwF fine-tunes ``lwf_k`` blocks with its BatchNorm
    layers updating (``train-update``), weight ``lwf_lam``.
    """

    preset: str = "quick"
    seeds: tuple[int, ...] = (0, 1)
    tradeoff_ks: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    bn_ks: tuple[int, ...] = (3, 4)
    grid_ks: tuple[int, ...] = (3, 4, 5)
    lams: tuple[float, ...] = (0.01, 0.003)
    betas: tuple[float, ...] = (1.0, 0.6, 0.4)
    ablation_lam: float = 0.003
    ablation_beta: float = 0.4
    baseline_k: int = 4
    lwf_k: int = 8
    lwf_lam: float = 0.01
    small_per_class: int = 20

    def __post_init__(self) -> None:
        preset = get_preset(self.preset)
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, at least one (two or more for a standard deviation), got {self.seeds}")
        num_blocks = ARCHITECTURES[preset.arch].num_blocks
        for name in ("tradeoff_ks", "bn_ks", "grid_ks"):
            bad = [k for k in getattr(self, name) if not 1 <= k <= num_blocks]
            if bad or not getattr(self, name):
                raise ValueError(f"{name} must list k in 1..{num_blocks} ({preset.arch} has L = {num_blocks}), got {getattr(self, name)}")
        for k in (self.baseline_k, self.lwf_k):
            if not 1 <= k <= num_blocks:
                raise ValueError(f"k must be in 1..{num_blocks} for {preset.arch}, got {k}")
        if len(self.lams) != 2 or len(self.betas) < 2:
            raise ValueError("lams needs two FDM weights (larger first) and betas at least two NEFT bounds (largest first)")
        if self.ablation_lam not in self.lams:
            raise ValueError(f"ablation_lam must be one of lams {self.lams}, got {self.ablation_lam}")
        if self.small_per_class < 1:
            raise ValueError(f"small_per_class must be >= 1, got {self.small_per_class}")


PLANS: dict[str, Plan] = {
    "quick": Plan(),
    # Seconds, for tests and for trying the command: 8x8 digits, one epoch, PGD-2 training.
    "smoke": Plan(preset="smoke", tradeoff_ks=(1, 4, 8), bn_ks=(4,), grid_ks=(3, 4), betas=(1.0, 0.4),
                  small_per_class=10),
    # The paper's scale (for the recipes; it needs a GPU and days).
    "paper": Plan(preset="paper", tradeoff_ks=tuple(range(1, 18)), bn_ks=(8,), grid_ks=(4, 6, 8), lams=(0.01, 0.005),
                  ablation_lam=0.005, baseline_k=8, lwf_k=17, small_per_class=500),
}


def get_plan(name: str) -> Plan:
    if name not in PLANS:
        raise ValueError(f"unknown reproduction plan {name!r}; choose one of {', '.join(PLANS)}")
    return PLANS[name]


@dataclass(frozen=True)
class Cell:
    """One entry of one table: its row and column labels and the transfer that fills it (for one seed)."""

    table: str
    row: str
    column: str
    config: TransferConfig


def cells(plan: Plan, seed: int) -> list[Cell]:
    """Every cell of the five tables for one seed (cells of different tables may share a run)."""
    preset = get_preset(plan.preset)
    at = preset.source("at", seed=seed)

    def fdm(k: int, lam: float):
        return preset.source("fdm", k=k, lam=lam, seed=seed)

    out = [Cell("tradeoff", f"k = {k}", "vanilla", preset.transfer(at, "tl", k=k, seed=seed)) for k in plan.tradeoff_ks]
    out += [Cell("batchnorm", f"k = {k}", case, preset.transfer(at, "tl", k=k, bn_case=case, seed=seed))
            for k in plan.bn_ks for case in BN_CASES_2X2]
    out += [Cell("lam_beta", f"k = {k}, λ = {lam:g}", f"β = {beta:g}",
                 preset.transfer(fdm(k, lam), "neft", k=k, beta=beta, seed=seed))
            for k in plan.grid_ks for lam in plan.lams for beta in plan.betas]
    for k in plan.grid_ks:
        out += [Cell("ablation", "AT → TL", f"k = {k}", preset.transfer(at, "tl", k=k, seed=seed)),
                Cell("ablation", "AT → NEFT", f"k = {k}", preset.transfer(at, "neft", k=k, beta=plan.ablation_beta, seed=seed)),
                Cell("ablation", "AT+FDM → NEFT", f"k = {k}",
                     preset.transfer(fdm(k, plan.ablation_lam), "neft", k=k, beta=plan.ablation_beta, seed=seed))]
    full, small = preset.target_dataset, f"{preset.target_dataset}@{plan.small_per_class}/class"
    for column, dataset in (("full", full), (f"{plan.small_per_class}/class", small)):
        out += [Cell("baselines", "LwF", column, preset.transfer(at, "lwf", k=plan.lwf_k, lwf_lam=plan.lwf_lam,
                                                                   bn_case="train-update", seed=seed, dataset=dataset)),
                Cell("baselines", "vanilla", column, preset.transfer(at, "tl", k=plan.baseline_k, seed=seed, dataset=dataset)),
                Cell("baselines", "CARTL", column,
                     preset.transfer(fdm(plan.baseline_k, plan.ablation_lam), "neft", k=plan.baseline_k,
                                     beta=plan.ablation_beta, seed=seed, dataset=dataset))]
    return out


# --- running ------------------------------------------------------------------------------------

@dataclass
class Reproduction:
    """What ``reproduce`` returns: one row per (cell, seed), the summary, the claims, the report path."""

    plan: Plan
    rows: "object"  # pandas.DataFrame: table, row, column, seed, run, clean_acc, robust_acc, trained
    summary: "object"  # pandas.DataFrame: table, row, column, clean/robust mean and std, seeds
    claims: list["Claim"]
    seconds: float
    trained: int
    loaded: int
    teachers_trained: int = 0
    teachers: int = 0
    report: Path | None = None
    command: str = ""
    machine: dict = field(default_factory=dict)


def reproduce(plan: str | Plan = "quick", *, root=None, device=None, progress: bool | None = None,
              report: str | None = "reports/reproduction-{preset}.md", shipped: bool = True,
              log: Callable[[str], None] | None = None, command: str | None = None,
              gpu_rates: dict | None = None) -> Reproduction:
    """Run (or load) every cell of every table for every seed, then summarise, judge the claims, report.

    Finished runs are loaded, never retrained; ``shipped=False`` ignores the teachers shipped with the kit
    (a cold start trains them too). ``progress`` (default ``widgets.watched()``) draws training bars in a
    terminal or an open notebook, not under papermill or nbval. Returns a ``Reproduction``; writes the
    Markdown report unless ``report`` is None; its full-scale recipes give GPU-hours for the architectures
    that ``gpu_rates`` (``measured_gpu_rates(path)``) holds.

    Example:
        >>> result = reproduce("quick")
        >>> [(c.claim, c.verdict) for c in result.claims]
    """
    import pandas as pd
    from .experiments import say, run_row
    from .store import find_run, machine

    plan = get_plan(plan) if isinstance(plan, str) else plan
    preset = get_preset(plan.preset)
    path = None if report is None else check_report_path(report, preset=plan.preset)  # before anything trains
    log = log or say
    started = time.perf_counter()
    todo = [(seed, cell) for seed in plan.seeds for cell in cells(plan, seed)]
    unique = list(dict.fromkeys(cell.config for _, cell in todo))  # cells shared between tables run once
    rows, done = [], {}
    trained = loaded = 0
    teachers = {config.teacher: find_run(config.teacher, root, shipped=shipped) is None for config in unique}
    for index, config in enumerate(unique, 1):
        found = find_run(config, root, shipped=shipped) is not None
        log(f"[{index}/{len(unique)}] seed {config.seed}: {config.slug}: {'found' if found else 'training'}")
        done[config] = run_row(config, preset.evaluation, root=root, device=device, progress=progress, shipped=shipped)
        trained, loaded = trained + (not found), loaded + found
    for seed, cell in todo:
        row = done[cell.config]
        rows.append({"table": cell.table, "row": cell.row, "column": cell.column, "seed": seed, "run": row["run"],
                     "clean_acc": row["clean_acc"], "robust_acc": row["robust_acc"], "n": row["n"]})
    frame = pd.DataFrame(rows)
    summary = summarise(frame)
    result = Reproduction(plan=plan, rows=frame, summary=summary, claims=claims(summary, plan),
                          seconds=time.perf_counter() - started, trained=trained, loaded=loaded,
                          teachers_trained=sum(teachers.values()), teachers=len(teachers),
                          command=command or "python -m cartl_kit reproduce --preset " + plan.preset,
                          machine=machine())
    if path is not None:
        result.report = write_markdown(result, path, gpu_rates=gpu_rates)
    return result


# --- summary and claims ---------------------------------------------------------------------------

def summarise(rows) -> "object":
    """Mean and standard deviation (over seeds, n-1 in the denominator; 0 for one seed) of every cell."""
    grouped = rows.groupby(["table", "row", "column"], sort=False)
    summary = grouped.agg(clean_mean=("clean_acc", "mean"), clean_std=("clean_acc", "std"),
                          robust_mean=("robust_acc", "mean"), robust_std=("robust_acc", "std"),
                          seeds=("seed", "nunique")).reset_index()
    return summary.fillna({"clean_std": 0.0, "robust_std": 0.0})


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f} %"


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims, what was measured, and the verdict."""

    table: str
    claim: str
    measured: str
    verdict: str  # "holds", "holds partly", "does not hold here", "not measured"
    clear: int  # comparisons in the claimed direction by more than the seeds' spread
    agreeing: int  # comparisons in the claimed direction (means)
    total: int

    def sentence(self) -> str:
        return f"{self.claim} — {self.measured}: **{self.verdict}**."


def _stat(summary, table: str, row: str, column: str, metric: str) -> Stat | None:
    hit = summary[(summary.table == table) & (summary.row == row) & (summary.column == column)]
    if hit.empty:
        return None
    return Stat(float(hit[f"{metric}_mean"].iloc[0]), float(hit[f"{metric}_std"].iloc[0]))


def judge(comparisons: list[tuple[Stat, Stat]]) -> tuple[str, int, int]:
    """Verdict for "a > b" over several (a, b) pairs.

    A pair is *clear* when a's mean exceeds b's by more than their spreads combined (√(s_a² + s_b²)) and
    *agreeing* when it exceeds it at all. "holds": every pair clear; "holds partly": at least half the pairs
    agree; otherwise "does not hold here".
    """
    if not comparisons:
        return "not measured", 0, 0
    clear = sum(a.mean - b.mean > math.hypot(a.std, b.std) for a, b in comparisons)
    agreeing = sum(a.mean > b.mean for a, b in comparisons)
    if clear == len(comparisons):
        verdict = "holds"
    elif 2 * agreeing >= len(comparisons):
        verdict = "holds partly"
    else:
        verdict = "does not hold here"
    return verdict, clear, agreeing


def _claim(table: str, claim: str, comparisons: list[tuple[Stat, Stat]], measured: str) -> Claim:
    comparisons = [(a, b) for a, b in comparisons if a is not None and b is not None]
    verdict, clear, agreeing = judge(comparisons)
    counted = (f"{agreeing} of {len(comparisons)} comparisons in the claimed direction, "
               f"{clear} by more than the seeds' spread")
    return Claim(table, claim, f"{measured}; {counted}", verdict, clear, agreeing, len(comparisons))


def at_chance(summary, num_classes: int, *, margin: float = 0.05):
    """The cells whose clean accuracy is within ``margin`` of chance (1 / classes): models that learned nothing,
    whose robust accuracy therefore means nothing, whatever a claim's comparison says."""
    return summary[summary.clean_mean <= 1 / num_classes + margin][["table", "row", "column", "clean_mean", "robust_mean"]]


def claims(summary, plan: Plan) -> list[Claim]:
    """The paper's claims, each judged on the summary by ``judge``. The rules are fixed in advance; no
    claim is dropped or reworded for its outcome."""
    s = lambda table, row, column, metric: _stat(summary, table, row, column, metric)  # noqa: E731
    out = []

    ks = list(plan.tradeoff_ks)
    clean = [s("tradeoff", f"k = {k}", "vanilla", "clean") for k in ks]
    robust = [s("tradeoff", f"k = {k}", "vanilla", "robust") for k in ks]
    out.append(_claim("tradeoff", "Accuracy rises with k (poster)", list(zip(clean[1:], clean[:-1])),
                      f"clean {clean[0]} at k = {ks[0]} → {clean[-1]} at k = {ks[-1]}"))
    out.append(_claim("tradeoff", "Robustness falls as k grows (poster)", list(zip(robust[:-1], robust[1:])),
                      f"robust {robust[0]} at k = {ks[0]} → {robust[-1]} at k = {ks[-1]}"))

    reuse, best, parts = [], [], []
    for k in plan.bn_ks:
        row = f"k = {k}"
        r = {case: s("batchnorm", row, case, "robust") for case in BN_CASES_2X2}
        reuse += [(r["train-reuse"], r["train-update"]), (r["vanilla"], r["freeze-update"])]
        best += [(r["vanilla"], r[case]) for case in BN_CASES_2X2[:3]]
        parts.append(f"k = {k}: " + ", ".join(f"{BN_LABELS[c]} {r[c]}" for c in BN_CASES_2X2))
    out.append(_claim("batchnorm", "Reusing the teacher's BatchNorm statistics in the extractor gives more robustness "
                      "than updating them (§11.1, every pair)", reuse, "robust: " + "; ".join(parts)))
    out.append(_claim("batchnorm", "Freezing the sub-model's BatchNorm affine parameters and reusing the statistics "
                      "(W,b | μ,σ,W,b, the kit's vanilla) is the most robust of the four cases (§11.1)", best,
                      "see the row above"))

    lo_beta, hi_beta = min(plan.betas), max(plan.betas)
    big_lam, small_lam = plan.lams
    beta_pairs, beta_text, flat, lam_rob, lam_acc, changes = [], [], [], [], [], []
    for k in plan.grid_ks:
        for lam in plan.lams:
            row = f"k = {k}, λ = {lam:g}"
            lo, hi = s("lam_beta", row, f"β = {lo_beta:g}", "robust"), s("lam_beta", row, f"β = {hi_beta:g}", "robust")
            beta_pairs.append((lo, hi))
            beta_text.append(f"{row}: {hi} → {lo}")
            c_lo, c_hi = s("lam_beta", row, f"β = {lo_beta:g}", "clean"), s("lam_beta", row, f"β = {hi_beta:g}", "clean")
            if c_lo and c_hi:  # "within one point": 0.01 - |difference| > 0
                flat.append((Stat(0.01 - abs(c_lo.mean - c_hi.mean), math.hypot(c_lo.std, c_hi.std)), Stat(0.0, 0.0)))
                changes.append(100 * (c_lo.mean - c_hi.mean))
        for beta in plan.betas:
            col = f"β = {beta:g}"
            lam_rob.append((s("lam_beta", f"k = {k}, λ = {small_lam:g}", col, "robust"),
                            s("lam_beta", f"k = {k}, λ = {big_lam:g}", col, "robust")))
            lam_acc.append((s("lam_beta", f"k = {k}, λ = {big_lam:g}", col, "clean"),
                            s("lam_beta", f"k = {k}, λ = {small_lam:g}", col, "clean")))
    out.append(_claim("lam_beta", f"A smaller NEFT bound β gives more robustness (§11.2, every row: β = {hi_beta:g} → "
                      f"{lo_beta:g})", beta_pairs, "robust " + "; ".join(beta_text)))
    out.append(_claim("lam_beta", f"Accuracy stays within about one point as β falls from {hi_beta:g} to {lo_beta:g} "
                      "(§11.2)", flat, "clean accuracy changes by " + ", ".join(f"{c:+.1f}" for c in changes) + " points"))
    out.append(_claim("lam_beta", f"A smaller FDM weight λ ({small_lam:g} against {big_lam:g}) helps robustness "
                      "(poster)", lam_rob, f"{len(lam_rob)} (k, β) cells compared"))
    out.append(_claim("lam_beta", "… but costs a little accuracy (poster)", lam_acc,
                      f"{len(lam_acc)} (k, β) cells compared"))

    neft_gain, fdm_gain, acc_gain, text = [], [], [], []
    for k in plan.grid_ks:
        col = f"k = {k}"
        tl, neft, cartl = (s("ablation", row, col, "robust") for row in ("AT → TL", "AT → NEFT", "AT+FDM → NEFT"))
        neft_gain.append((neft, tl))
        fdm_gain.append((cartl, neft))
        acc_gain.append((s("ablation", "AT+FDM → NEFT", col, "clean"), s("ablation", "AT → TL", col, "clean")))
        text.append(f"{col}: TL {tl}, NEFT {neft}, FDM+NEFT {cartl}")
    out.append(_claim("ablation", f"NEFT (β = {plan.ablation_beta:g}) adds robustness to vanilla transfer (§11.3)",
                      neft_gain, "robust " + "; ".join(text)))
    out.append(_claim("ablation", f"An FDM-trained source (λ = {plan.ablation_lam:g}) adds robustness on top of NEFT "
                      "(§11.3)", fdm_gain, "see the row above"))
    out.append(_claim("ablation", "CARTL (FDM + NEFT) is also more accurate than vanilla transfer (§11.3)", acc_gain,
                      ", ".join(f"k = {k}: {a} against {b}" for k, (a, b) in zip(plan.grid_ks, acc_gain))))

    small = f"{plan.small_per_class}/class"
    for column, where in (("full", "on the full target set"), (small, f"with {small} of target data")):
        b = {m: (s("baselines", m, column, "clean"), s("baselines", m, column, "robust")) for m in ("LwF", "vanilla", "CARTL")}
        text = ", ".join(f"{m} {b[m][0]} / {b[m][1]}" for m in b)
        out.append(_claim("baselines", f"CARTL is more robust than vanilla transfer and LwF {where} (§11.4"
                          + (", poster" if column != "full" else "") + ")",
                          [(b["CARTL"][1], b["vanilla"][1]), (b["CARTL"][1], b["LwF"][1])], "clean / robust: " + text))
        if column == "full":
            out.append(_claim("baselines", "LwF is less accurate and less robust than vanilla transfer (§11.4)",
                              [(b["vanilla"][0], b["LwF"][0]), (b["vanilla"][1], b["LwF"][1])], "see the row above"))
    return out


# --- the report ---------------------------------------------------------------------------------

# The paper's numbers (CARTL_REFERENCE.md §11: CIFAR, WRN-34-10 / WRN-28-4, PGD-100), clean / robust %, each
# written once: the tables' "The paper:" lines and the recipes' columns are built from these.
BN_ORDER = "(– | W,b), (– | μ,σ,W,b), (W,b | W,b), (W,b | μ,σ,W,b)"
PAPER_BN = {"CIFAR-100 → CIFAR-10, k = 8": "91.17 / 14.36, 90.86 / 14.89, 90.70 / 17.41, 90.84 / 18.54",
            "CIFAR-10 → SVHN, k = 6": "95.29 / 3.88, 95.24 / 9.22, 95.16 / 4.90, 94.86 / 11.52",
            "CIFAR-10 → SVHN, k = 5": "93.47 / 4.71, 92.92 / 12.45, 93.41 / 5.64, 92.10 / 14.16"}
PAPER_ABLATION = {"AT → TL": "83.22 / 25.23, 86.92 / 25.38, 90.82 / 18.54",
                  "AT → NEFT": "83.72 / 26.29, 86.87 / 27.95, 90.92 / 29.97",
                  "AT+FDM → NEFT": "85.51 / 28.47, 87.79 / 30.94, 91.30 / 29.34"}  # k = 4, 6, 8
PAPER_C10_SVHN = {"LwF": "94.32 / 4.68", "vanilla": "94.86 / 11.52", "CARTL": "94.76 / 21.65"}
PAPER = {
    "tradeoff": "No table: the poster states the trend (accuracy rises with k, robustness falls); §11.3's TL row "
                f"reads {PAPER_ABLATION['AT → TL']} at k = 4, 6, 8 on CIFAR-100 → CIFAR-10.",
    "batchnorm": f"cases in the order {BN_ORDER}: " + "; ".join(f"{pair}: {cells}" for pair, cells in PAPER_BN.items()) + ".",
    "lam_beta": "CIFAR-100 → CIFAR-10, β = 1.0 / 0.6 / 0.4: k = 4, λ = 0.01: 86.09 / 25.73, 86.08 / 27.17, 85.64 / 28.40; "
                "λ = 0.005: 85.41 / 25.75, 85.47 / 27.14, 85.51 / 28.47. k = 6, λ = 0.01: 87.78 / 25.58, 87.92 / 27.27, "
                "87.96 / 29.60; λ = 0.005: 87.66 / 25.97, 88.07 / 27.64, 87.79 / 30.94. k = 8, λ = 0.01: 91.85 / 16.36, "
                "91.63 / 19.22, 91.55 / 27.47; λ = 0.005: 91.71 / 17.62, 91.10 / 21.60, 91.30 / 29.34.",
    "ablation": "CIFAR-100 → CIFAR-10, k = 4 / 6 / 8: " + "; ".join(f"{row} {cells}" for row, cells in PAPER_ABLATION.items()) + ".",
    "baselines": "LwF / vanilla / CARTL: CIFAR-100 → SVHN 85.90 / 6.67, 92.83 / 17.64, 93.96 / 22.21; CIFAR-100 → GTSRB "
                 "70.34 / 15.85, 80.40 / 30.25, 83.07 / 47.34; CIFAR-10 → SVHN " + ", ".join(PAPER_C10_SVHN.values())
                 + "; GTSRB → SVHN 81.80 / 1.08, 93.91 / 6.08, 94.07 / 15.26. Small-data: a claim of the poster, no numbers.",
}
TITLES = {"tradeoff": "1. The trade-off in k (vanilla transfer from the AT teacher)",
          "batchnorm": "2. The four BatchNorm cases (sub-model frozen set | extractor frozen set)",
          "lam_beta": "3. CARTL's λ × β sweep (FDM teacher with λ, NEFT with β)",
          "ablation": "4. Component ablation",
          "baselines": "5. LwF, vanilla and CARTL, full and small target data"}


def pivot(summary, table: str):
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


def _markdown_table(frame) -> str:
    cell = lambda v: "" if isinstance(v, float) and math.isnan(v) else str(v).replace("|", "\\|")  # noqa: E731
    header = "| | " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|---" * (len(frame.columns) + 1) + "|"
    lines = [f"| {cell(index)} | " + " | ".join(cell(v) for v in row) + " |"
             for index, row in zip(frame.index, frame.itertuples(index=False))]
    return "\n".join([header, rule, *lines])


def _attack_words(evaluation) -> str:
    """The evaluation's attack in words, for the report's setting line."""
    eps = f"ε = {evaluation.attack.eps:.4g}"
    if evaluation.method == "ensemble":
        return (f"the {evaluation.label}, {eps}: the worst case per example, an example robust only if no attack "
                "breaks it")
    if evaluation.method == "autoattack":
        return f"{evaluation.label}, {eps}"
    return (f"{evaluation.label} ({eps}, step {evaluation.attack.step_size:.4g}, random start, "
            f"{'final' if evaluation.mode == 'final' else 'any'} iterate)")


def write_markdown(result: Reproduction, path: Path, *, gpu_rates: dict | None = None) -> Path:
    """The report: command, machine, date, run time; the five tables beside the paper's; the claims; the
    full-scale recipes. Written atomically (complete or absent)."""
    from .store import atomic_write
    plan, preset = result.plan, get_preset(result.plan.preset)
    m = result.machine
    lines = [f"# CARTL reproduction — preset `{plan.preset}`", "",
             "Produced by the command below; do not edit by hand (a rerun overwrites it).", "",
             f"- command: `{result.command}`",
             f"- machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('torch_threads')} torch threads"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"; torch {m.get('torch')}, Python {m.get('python')}",
             f"- date: {m.get('date')}",
             f"- run time: {result.seconds / 60:.1f} min ({result.trained} transfers trained, {result.loaded} loaded; "
             f"{result.teachers_trained} of {result.teachers} teachers trained)",
             f"- setting: {preset.arch}, source `{preset.source_dataset}` → target `{preset.target_dataset}`; "
             f"training PGD-{preset.train_attack.steps} ε = {preset.train_attack.eps:.4g}; robust accuracy under "
             f"{_attack_words(preset.evaluation)} on the target's test split; "
             f"seeds {', '.join(map(str, plan.seeds))}",
             "- cells: clean / robust accuracy in %, mean ± standard deviation over the seeds.", "",
             "## The paper's claims, judged here", "",
             "Rule: a comparison *agrees* when the means go the claimed way and is *clear* when the gap exceeds the "
             "seeds' spread combined (√(s₁² + s₂²)). **holds**: every comparison clear; **holds partly**: at least "
             "half agree; **does not hold here**: fewer. With few seeds the spread is a rough noise estimate.", ""]
    lines += [f"{i}. {claim.sentence()}" for i, claim in enumerate(result.claims, 1)]
    from .data import load_dataset
    chance = at_chance(result.summary, load_dataset(preset.target_dataset, split="test").num_classes)
    if len(chance):
        lines += ["", "Cells at chance accuracy (clean within 5 points of 1 / classes): these models learned nothing, so "
                  "their robust accuracy means nothing, and comparisons with them say nothing either: "
                  + "; ".join(f"{r.table} {r.row} | {r.column} ({100 * r.clean_mean:.1f} / {100 * r.robust_mean:.1f})"
                              for r in chance.itertuples()) + "."]
    for table in TABLES:
        lines += ["", f"## {TITLES[table]}", "", _markdown_table(pivot(result.summary, table)), "",
                  f"The paper: {PAPER[table]}"]
    lines += ["", "## Differences from the paper's setting", "",
              f"- Data and scale: `{preset.source_dataset}` → `{preset.target_dataset}` with {preset.arch} "
              f"(L = {ARCHITECTURES[preset.arch].num_blocks}) instead of CIFAR with WRN-34-10 (L = 17) or WRN-28-4; "
              f"{preset.source_optim.epochs} source and {preset.transfer_optim.epochs} transfer epochs instead of 100; "
              f"{preset.evaluation.short} instead of the paper's PGD-100 (foolbox, step ε/4). The k values are this architecture's "
              f"(the paper's k = 4 / 6 / 8 of 17 blocks correspond roughly to k = 2 / 3 / 4 of 8).",
              f"- The FDM teachers are trained for the k of the student they feed (CARTL's pairing), λ ∈ "
              f"{{{', '.join(f'{x:g}' for x in plan.lams)}}}; the ablation and the baselines use λ = "
              f"{plan.ablation_lam:g}, β = {plan.ablation_beta:g} (the paper's AT+FDM → NEFT row is λ = 0.005, β = 0.4).",
              f"- LwF fine-tunes k = {plan.lwf_k} blocks with BatchNorm updating (`train-update`), λ_d = {plan.lwf_lam:g}; "
              f"the small target set keeps {plan.small_per_class} images per class.",
              f"- Every transfer trains {preset.transfer_optim.epochs} epochs at batch {preset.transfer_optim.batch_size} "
              f"(the first a warm-up from lr 0), so on the small target set it takes "
              f"{preset.transfer_optim.epochs * _batches(plan, preset)} SGD steps, on the full one "
              f"{preset.transfer_optim.epochs * _batches(plan, preset, full=True)}.",
              "", "## Full scale: recipes for a GPU", "", recipes_markdown(gpu_rates), ""]
    text = "\n".join(lines)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return path


def _batches(plan: Plan, preset, *, full: bool = False) -> int:
    """Batches per epoch of the target's training split, full or at ``plan.small_per_class`` per class."""
    from .data import load_dataset
    name = preset.target_dataset if full else f"{preset.target_dataset}@{plan.small_per_class}/class"
    return math.ceil(len(load_dataset(name, split="train")) / preset.transfer_optim.batch_size)


def figures(result: Reproduction) -> list:
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


# --- full-scale recipes ---------------------------------------------------------------------------

# Image counts of the splits (train, test), for the compute estimates.
SPLIT_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "svhn": (73_257, 26_032),
               "gtsrb": (26_640, 12_630)}

# (paper table, source, target, arch, sweep flags, transfers, AT teachers, FDM teachers, the paper's numbers it fills)
RECIPES = [
    ("§11.1 BatchNorm, CIFAR-100 → CIFAR-10, k = 8", "cifar100", "cifar10", "wrn34_10",
     "-k 8 --method tl --bn-case train-update train-reuse freeze-update vanilla", 4, 1, 0,
     f"{PAPER_BN['CIFAR-100 → CIFAR-10, k = 8']} (the four cases in the order of the command)"),
    ("§11.1 BatchNorm, CIFAR-10 → SVHN, k = 5, 6 (WRN-28-4)", "cifar10", "svhn", "wrn28_4",
     "-k 5 6 --method tl --bn-case train-update train-reuse freeze-update vanilla", 8, 1, 0,
     f"k = 5: {PAPER_BN['CIFAR-10 → SVHN, k = 5']}; k = 6: {PAPER_BN['CIFAR-10 → SVHN, k = 6']}"),
    ("§11.2 λ × β, CIFAR-100 → CIFAR-10", "cifar100", "cifar10", "wrn34_10",
     "-k 4 6 8 --teacher fdm --lam 0.01 0.005 --method neft --beta 1.0 0.6 0.4", 18, 0, 6,
     f"the 18 cells of §11.2 (table 3 of this report), e.g. k = 4, 6, 8 at λ = 0.005, β = 0.4: "
     f"{PAPER_ABLATION['AT+FDM → NEFT']}"),
    ("§11.3 ablation (TL and NEFT rows; the FDM row is §11.2's λ = 0.005, β = 0.4)", "cifar100", "cifar10", "wrn34_10",
     "-k 4 6 8 --method tl neft --beta 0.4", 6, 1, 0,
     f"TL {PAPER_ABLATION['AT → TL']}; NEFT {PAPER_ABLATION['AT → NEFT']} (k = 4, 6, 8)"),
    ("§11.4 CIFAR-10 → SVHN, vanilla and LwF (WRN-28-4, k = 6)", "cifar10", "svhn", "wrn28_4",
     "-k 6 --method tl lwf", 2, 1, 0, f"vanilla {PAPER_C10_SVHN['vanilla']}, LwF {PAPER_C10_SVHN['LwF']}"),
    ("§11.4 CIFAR-10 → SVHN, CARTL", "cifar10", "svhn", "wrn28_4",
     "-k 6 --teacher fdm --lam 0.005 --method neft --beta 0.4", 1, 0, 1, PAPER_C10_SVHN["CARTL"]),
]


def measured_gpu_rates(path: str | os.PathLike = "bench/results/at_step.json") -> dict[str, tuple[float, str]]:
    """arch → (FLOP/s of the kit's fastest adversarial-training step, where and when) from the result file of
    ``bench/at_step.py`` at ``path``, if it was measured on a GPU; empty otherwise (or when it is missing)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    machine = data.get("machine", {})
    if machine.get("device") != "cuda":
        return {}
    rates: dict[str, tuple[float, str]] = {}
    for row in data.get("rows", []):
        if str(row.get("candidate", "")).startswith("kit"):
            rate = row["tflop_per_s"] * 1e12
            if rate > rates.get(row["arch"], (0.0, ""))[0]:
                rates[row["arch"]] = (rate, f"{machine.get('gpu')}, {machine.get('date')}")
    return rates


@functools.lru_cache(maxsize=None)
def _forward_flops_32(arch: str) -> int:
    """Forward FLOPs of ``arch`` on one 3x32x32 image (10 classes)."""
    from .models import create_model, forward_flops
    model = create_model(arch, num_classes=10).eval()
    return forward_flops(model, lambda: model(torch.zeros(1, 3, 32, 32)))


def recipe_flops(source: str, target: str, arch: str, transfers: int, at_teachers: int, fdm_teachers: int) -> float:
    """Analytic FLOPs of one recipe at the paper preset's schedule (100 epochs, PGD-7 training, PGD-100 on the
    full test set): teachers 17F per training image-epoch (PGD-7 + update), FDM one more forward and backward;
    transfers 3F (the extractor's part is less; this is an upper estimate); evaluation 201F per test image
    (100 forward + input-gradient passes and the final forward). F is the forward FLOPs at 32x32."""
    preset = get_preset("paper")
    forward = _forward_flops_32(arch)
    (n_src, _), (n_tgt, n_test) = SPLIT_SIZES[source], SPLIT_SIZES[target]
    src_epochs, tgt_epochs = preset.source_optim.epochs, preset.transfer_optim.epochs
    teachers = at_teachers * 17 * forward * n_src * src_epochs + fdm_teachers * 20 * forward * n_src * src_epochs
    tuning = transfers * 3 * forward * n_tgt * tgt_epochs
    evaluation = transfers * 201 * forward * n_test
    return teachers + tuning + evaluation


def recipes_markdown(rates: dict[str, tuple[float, str]] | None = None) -> str:
    """The ``sweep`` commands of the paper preset for each table, with their compute; GPU-hours where ``rates``
    (``measured_gpu_rates``: arch → FLOP/s and where it was measured) has the architecture."""
    lines = ["Each command runs one seed (`--seed 1`, `--seed 2` for more); finished runs are skipped, so shared "
             "teachers train once. Compute is analytic (see `reproduce.recipe_flops`); GPU-hours divide it by the "
             "FLOP rate that `bench/at_step.py` measured for the kit's bf16 adversarial-training step on a GPU, "
             "when such a measurement is in `bench/results/at_step.json`.", "",
             "| paper table | command | the paper's numbers it fills (clean / robust %) | compute (PFLOP) | GPU-hours |",
             "|---|---|---|---|---|"]
    rates = rates or {}
    for title, source, target, arch, flags, transfers, at, fdm, paper in RECIPES:
        command = (f"python -m cartl_kit sweep --preset paper --source {source} --target {target} --arch {arch} {flags}")
        flops = recipe_flops(source, target, arch, transfers, at, fdm)
        rate = rates.get(arch)
        hours = (f"{flops / rate[0] / 3600:.0f} (at {rate[0] / 1e12:.0f} TFLOP/s, {rate[1]})" if rate
                 else "not measured: no GPU benchmark of this architecture yet")
        lines.append(f"| {title} | `{command}` | {paper} | {flops / 1e15:,.0f} | {hours} |")
    return "\n".join(lines)


__all__ = ["Cell", "Claim", "PLANS", "Plan", "Reproduction", "at_chance", "cells", "claims", "figures", "get_plan", "judge",
           "measured_gpu_rates", "recipes_markdown", "reproduce", "summarise", "write_markdown"]
