"""The paper's claims, judged on the reproduction's summary (mean and spread over seeds of every cell).

Each claim is a list of comparisons "a > b" between cells of one table, judged by one fixed rule (``judge``).
Where both cells hold runs of the same (teacher seed, transfer seed) pairs, a comparison is *paired*: the
differences a − b of runs that share both seeds, *clear* when their mean exceeds two standard errors
(2·sd/√n), *agreeing* when it is positive; otherwise (one run per cell, or no common seeds) it is unpaired:
*clear* when a's mean exceeds b's by more than the seeds' spread combined, *agreeing* when it exceeds it at all.
One function per table (``tradeoff_claims`` … ``baseline_claims``) states that table's claims; ``claims``
gives all of them in the report's order. The rules are fixed in advance: no claim is dropped or reworded for
its outcome. (The notebooks' single-run comparisons use ``findings.claim_checked``, whose noise is the test
set's binomial error; here the noise is the spread over seeds.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .plan import BN_CASES_2X2, BN_LABELS, Plan, small_column

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Stat:
    """One cell's accuracy over seeds (fractions): mean, standard deviation, and each run's value keyed by
    (teacher seed, transfer seed) (``runs``: what a paired comparison pairs; empty when unknown)."""

    mean: float
    std: float
    runs: tuple[tuple[tuple[int, int], float], ...] = ()

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f} %"


Pair = tuple[Stat | None, Stat | None]  # (a, b) for "a > b"; None where a cell was not measured


def shown(stat: Stat | None) -> str:
    """A cell's statistic for a sentence: ``"97.2 ± 0.3 %"``, or ``"–"`` where the cell was not measured."""
    return "–" if stat is None else str(stat)


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
    against: tuple[str, ...] = ()  # the comparisons that went against the claim, named (where they have names)

    def sentence(self) -> str:
        against = f"; against the claim: {'; '.join(self.against)}" if self.against else ""
        return f"{self.claim} — {self.measured}{against}: **{self.verdict}**."


def cell_stat(summary: pd.DataFrame, table: str, row: str, column: str, metric: str) -> Stat | None:
    """``metric`` ("clean" or "robust") of one cell of the summary; None when the cell is absent."""
    hit = summary[(summary.table == table) & (summary.row == row) & (summary.column == column)]
    if hit.empty:
        return None
    runs = hit[f"{metric}_runs"].iloc[0] if f"{metric}_runs" in hit else {}
    return Stat(float(hit[f"{metric}_mean"].iloc[0]), float(hit[f"{metric}_std"].iloc[0]),
                tuple(sorted((tuple(k), float(v)) for k, v in (runs or {}).items())))


def paired(a: Stat, b: Stat) -> list[float]:
    """The differences a − b of the runs that share both seeds (empty unless at least two pairs share them)."""
    other = dict(b.runs)
    diffs = [value - other[key] for key, value in a.runs if key in other]
    return diffs if len(diffs) >= 2 else []


def _paired_verdict(diffs: list[float]) -> tuple[bool, bool, int | None]:
    """(clear, agreeing, pairs a clear verdict would need) for paired differences."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    clear = mean > 2 * sd / math.sqrt(n) if sd > 0 else mean > 0
    needed = math.floor((2 * sd / mean) ** 2) + 1 if mean > 0 and not clear else None  # 2·sd/√N < mean
    return clear, mean > 0, needed


def compare(a: Stat, b: Stat) -> tuple[bool, bool]:
    """(clear, agreeing) for "a > b": paired over the runs sharing both seeds, else unpaired (see ``judge``)."""
    diffs = paired(a, b)
    if diffs:
        is_clear, agrees, _ = _paired_verdict(diffs)
        return is_clear, agrees
    return a.mean - b.mean > math.hypot(a.std, b.std), a.mean > b.mean


def judge(comparisons: Sequence[tuple[Stat, Stat]]) -> tuple[str, int, int]:
    """Verdict for "a > b" over several (a, b) pairs.

    A pair is *clear* when a's mean exceeds b's by more than their spreads combined (√(s_a² + s_b²)) and
    *agreeing* when it exceeds it at all. "holds": every pair clear; "holds partly": at least half the pairs
    agree; otherwise "does not hold here".

    Example:
        >>> judge([(Stat(0.6, 0.01), Stat(0.5, 0.01))])
        ('holds', 1, 1)
    """
    if not comparisons:
        return "not measured", 0, 0
    clear = agreeing = 0
    for a, b in comparisons:
        is_clear, agrees = compare(a, b)
        clear, agreeing = clear + is_clear, agreeing + agrees
    if clear == len(comparisons):
        verdict = "holds"
    elif 2 * agreeing >= len(comparisons):
        verdict = "holds partly"
    else:
        verdict = "does not hold here"
    return verdict, clear, agreeing


def judged(table: str, claim: str, comparisons: Sequence[Pair], measured: str,
           labels: Sequence[str] | None = None) -> Claim:
    """The ``Claim`` "a > b for every pair", judged on the pairs whose two cells were measured. ``labels`` name
    the comparisons (e.g. "CARTL > vanilla at 50 %"), so that a claim names those that went against it: a
    "holds partly" can rest on one half of a claim while the other half fails."""
    if labels is not None and len(labels) != len(comparisons):
        raise ValueError(f"{len(labels)} labels for {len(comparisons)} comparisons")
    named = list(zip(comparisons, labels if labels is not None else [""] * len(comparisons)))
    measured_named = [((a, b), label) for (a, b), label in named if a is not None and b is not None]
    measured_pairs = [pair for pair, _ in measured_named]
    against = tuple(label for (a, b), label in measured_named if label and not compare(a, b)[1])
    verdict, clear, agreeing = judge(measured_pairs)
    differences = [paired(a, b) for a, b in measured_pairs]
    if measured_pairs and all(differences):
        needed = [n for n in (_paired_verdict(d)[2] for d in differences) if n is not None]
        counted = (f"{agreeing} of {len(measured_pairs)} comparisons in the claimed direction, {clear} clear "
                   f"(paired over {min(map(len, differences))} runs sharing teacher and transfer seeds, mean "
                   f"difference beyond 2 s.e.)")
        if needed:
            counted += f"; the others that agree would need about {max(needed)} paired runs to be clear"
    else:
        counted = (f"{agreeing} of {len(measured_pairs)} comparisons in the claimed direction, "
                   f"{clear} by more than the seeds' spread")
    if len(measured_pairs) < len(comparisons):
        counted += (f"; {len(comparisons) - len(measured_pairs)} left out (a cell not measured, or at chance "
                    "accuracy: a failed experiment is no evidence)")
    return Claim(table, claim, f"{measured}; {counted}", verdict, clear, agreeing, len(measured_pairs), against)


def at_chance(summary: pd.DataFrame, num_classes: int, *, margin: float = 0.05) -> pd.DataFrame:
    """The cells whose clean accuracy is within ``margin`` of chance (1 / classes): models that learned nothing,
    whose robust accuracy therefore means nothing, whatever a claim's comparison says."""
    chance = summary[summary.clean_mean <= 1 / num_classes + margin]
    return chance[["table", "row", "column", "clean_mean", "robust_mean"]]


def tradeoff_claims(summary: pd.DataFrame, plan: Plan) -> list[Claim]:
    """Accuracy rises and robustness falls as k grows (the poster's trend), on every step of ``tradeoff_ks``."""
    ks = list(plan.tradeoff_ks)
    clean = [cell_stat(summary, "tradeoff", f"k = {k}", "vanilla", "clean") for k in ks]
    robust = [cell_stat(summary, "tradeoff", f"k = {k}", "vanilla", "robust") for k in ks]
    steps = [f"k = {a} → {b}" for a, b in zip(ks[:-1], ks[1:])]
    return [judged("tradeoff", "Accuracy rises with k (poster)", list(zip(clean[1:], clean[:-1])),
                   f"clean {shown(clean[0])} at k = {ks[0]} → {shown(clean[-1])} at k = {ks[-1]}", steps),
            judged("tradeoff", "Robustness falls as k grows (poster)", list(zip(robust[:-1], robust[1:])),
                   f"robust {shown(robust[0])} at k = {ks[0]} → {shown(robust[-1])} at k = {ks[-1]}", steps)]


def batchnorm_claims(summary: pd.DataFrame, plan: Plan) -> list[Claim]:
    """Reusing the extractor's statistics helps, and the vanilla case is the most robust (§11.1)."""
    reuse: list[Pair] = []
    best: list[Pair] = []
    reuse_labels: list[str] = []
    best_labels: list[str] = []
    parts = []
    for k in plan.bn_ks:
        r = {case: cell_stat(summary, "batchnorm", f"k = {k}", case, "robust") for case in BN_CASES_2X2}
        reuse += [(r["train-reuse"], r["train-update"]), (r["vanilla"], r["freeze-update"])]
        reuse_labels += [f"{BN_LABELS[a]} > {BN_LABELS[b]} at k = {k}"
                         for a, b in (("train-reuse", "train-update"), ("vanilla", "freeze-update"))]
        best += [(r["vanilla"], r[case]) for case in BN_CASES_2X2[:3]]
        best_labels += [f"{BN_LABELS['vanilla']} > {BN_LABELS[case]} at k = {k}" for case in BN_CASES_2X2[:3]]
        parts.append(f"k = {k}: " + ", ".join(f"{BN_LABELS[c]} {shown(r[c])}" for c in BN_CASES_2X2))
    return [judged("batchnorm", "Reusing the teacher's BatchNorm statistics in the extractor gives more robustness "
                   "than updating them (§11.1, every pair)", reuse, "robust: " + "; ".join(parts), reuse_labels),
            judged("batchnorm", "Freezing the sub-model's BatchNorm affine parameters and reusing the statistics "
                   "(W,b | μ,σ,W,b, the kit's vanilla) is the most robust of the four cases (§11.1)", best,
                   "see the row above", best_labels)]


def lam_beta_claims(summary: pd.DataFrame, plan: Plan) -> list[Claim]:
    """A smaller β gives robustness at about the same accuracy; a smaller λ gives robustness for a little
    accuracy (§11.2 and the poster)."""
    def s(row: str, column: str, metric: str) -> Stat | None:
        return cell_stat(summary, "lam_beta", row, column, metric)

    lo_beta, hi_beta = min(plan.betas), max(plan.betas)
    big_lam, small_lam = plan.lams
    beta_pairs: list[Pair] = []
    flat: list[Pair] = []
    lam_rob: list[Pair] = []
    lam_acc: list[Pair] = []
    beta_text: list[str] = []
    changes: list[float] = []
    beta_labels: list[str] = []
    flat_labels: list[str] = []
    lam_labels: list[str] = []
    for k in plan.grid_ks:
        for lam in plan.lams:
            row = f"k = {k}, λ = {lam:g}"
            lo, hi = s(row, f"β = {lo_beta:g}", "robust"), s(row, f"β = {hi_beta:g}", "robust")
            beta_pairs.append((lo, hi))
            beta_labels.append(f"β = {lo_beta:g} > β = {hi_beta:g} at {row}")
            beta_text.append(f"{row}: {shown(hi)} → {shown(lo)}")
            c_lo, c_hi = s(row, f"β = {lo_beta:g}", "clean"), s(row, f"β = {hi_beta:g}", "clean")
            if c_lo and c_hi:  # "within one point": 0.01 - |difference| > 0
                flat.append((Stat(0.01 - abs(c_lo.mean - c_hi.mean), math.hypot(c_lo.std, c_hi.std)), Stat(0.0, 0.0)))
                flat_labels.append(f"at {row}")
                changes.append(100 * (c_lo.mean - c_hi.mean))
        small_row, big_row = f"k = {k}, λ = {small_lam:g}", f"k = {k}, λ = {big_lam:g}"
        for beta in plan.betas:
            col = f"β = {beta:g}"
            lam_rob.append((s(small_row, col, "robust"), s(big_row, col, "robust")))
            lam_acc.append((s(big_row, col, "clean"), s(small_row, col, "clean")))
            lam_labels.append(f"at k = {k}, {col}")
    return [judged("lam_beta", f"A smaller NEFT bound β gives more robustness (§11.2, every row: β = {hi_beta:g} → "
                   f"{lo_beta:g})", beta_pairs, "robust " + "; ".join(beta_text), beta_labels),
            judged("lam_beta", f"Accuracy stays within about one point as β falls from {hi_beta:g} to {lo_beta:g} "
                   "(§11.2)", flat,
                   "clean accuracy changes by " + (", ".join(f"{c:+.1f}" for c in changes) or "–") + " points",
                   flat_labels),
            judged("lam_beta", f"A smaller FDM weight λ ({small_lam:g} against {big_lam:g}) helps robustness "
                   "(poster)", lam_rob, f"{len(lam_rob)} (k, β) cells compared", lam_labels),
            judged("lam_beta", "… but costs a little accuracy (poster)", lam_acc,
                   f"{len(lam_acc)} (k, β) cells compared", lam_labels)]


def ablation_claims(summary: pd.DataFrame, plan: Plan) -> list[Claim]:
    """NEFT adds robustness to vanilla transfer, FDM adds more, and CARTL is also more accurate (§11.3)."""
    neft_gain: list[Pair] = []
    fdm_gain: list[Pair] = []
    acc_gain: list[Pair] = []
    text = []
    for k in plan.grid_ks:
        col = f"k = {k}"
        tl, neft, cartl = (cell_stat(summary, "ablation", row, col, "robust")
                           for row in ("AT → TL", "AT → NEFT", "AT+FDM → NEFT"))
        neft_gain.append((neft, tl))
        fdm_gain.append((cartl, neft))
        acc_gain.append((cell_stat(summary, "ablation", "AT+FDM → NEFT", col, "clean"),
                         cell_stat(summary, "ablation", "AT → TL", col, "clean")))
        text.append(f"{col}: TL {shown(tl)}, NEFT {shown(neft)}, FDM+NEFT {shown(cartl)}")
    at = [f"at k = {k}" for k in plan.grid_ks]
    return [judged("ablation", f"NEFT (β = {plan.ablation_beta:g}) adds robustness to vanilla transfer (§11.3)",
                   neft_gain, "robust " + "; ".join(text), [f"NEFT > TL {a}" for a in at]),
            judged("ablation", f"An FDM-trained source (λ = {plan.ablation_lam:g}) adds robustness on top of NEFT "
                   "(§11.3)", fdm_gain, "see the row above", [f"FDM+NEFT > NEFT {a}" for a in at]),
            judged("ablation", "CARTL (FDM + NEFT) is also more accurate than vanilla transfer (§11.3)", acc_gain,
                   ", ".join(f"k = {k}: {shown(a)} against {shown(b)}" for k, (a, b) in zip(plan.grid_ks, acc_gain)),
                   [f"CARTL's clean > TL's {a}" for a in at])]


def baseline_claims(summary: pd.DataFrame, plan: Plan) -> list[Claim]:
    """CARTL is more robust than vanilla transfer and LwF, on full and small target data; LwF is below vanilla
    on both counts (§11.4 and the poster)."""
    def cells(column: str) -> dict[str, tuple[Stat | None, Stat | None]]:
        return {m: (cell_stat(summary, "baselines", m, column, "clean"), cell_stat(summary, "baselines", m, column, "robust"))
                for m in ("LwF", "vanilla", "CARTL")}

    def text(b: dict) -> str:
        return ", ".join(f"{m} {shown(b[m][0])} / {shown(b[m][1])}" for m in b)

    full = cells("full")
    out = [judged("baselines", "CARTL is more robust than vanilla transfer and LwF on the full target set (§11.4)",
                  [(full["CARTL"][1], full["vanilla"][1]), (full["CARTL"][1], full["LwF"][1])],
                  "clean / robust: " + text(full), ["CARTL > vanilla", "CARTL > LwF"]),
           judged("baselines", "LwF is less accurate and less robust than vanilla transfer (§11.4)",
                  [(full["vanilla"][0], full["LwF"][0]), (full["vanilla"][1], full["LwF"][1])], "see the row above",
                  ["vanilla's clean > LwF's", "vanilla's robust > LwF's"])]
    if plan.small_fractions:
        columns = [small_column(f) for f in plan.small_fractions]
        small = {column: cells(column) for column in columns}
        out.append(judged("baselines", f"CARTL is more robust than vanilla transfer and LwF with less target data "
                          f"({', '.join(columns)} of it, the same number of SGD steps; poster)",
                          [(small[c]["CARTL"][1], small[c][m][1]) for c in columns for m in ("vanilla", "LwF")],
                          "clean / robust: " + "; ".join(f"{c}: {text(small[c])}" for c in columns),
                          [f"CARTL > {m} at {c}" for c in columns for m in ("vanilla", "LwF")]))
    return out


def claims(summary: pd.DataFrame, plan: Plan, *, num_classes: int | None = None) -> list[Claim]:
    """The paper's claims, table by table, each judged on the summary by ``judge``. With ``num_classes``, the cells
    at chance accuracy (``at_chance``) are failed experiments: left out of every comparison, and counted as such."""
    if num_classes is not None and len(summary):
        chance = at_chance(summary, num_classes)
        failed = set(zip(chance.table, chance.row, chance.column))
        summary = summary[[key not in failed for key in zip(summary.table, summary.row, summary.column)]]
    return [*tradeoff_claims(summary, plan), *batchnorm_claims(summary, plan), *lam_beta_claims(summary, plan),
            *ablation_claims(summary, plan), *baseline_claims(summary, plan)]


__all__ = ["Claim", "Stat", "ablation_claims", "at_chance", "baseline_claims", "batchnorm_claims", "cell_stat", "compare",
           "shown", "claims", "judge", "judged", "lam_beta_claims", "paired", "tradeoff_claims"]
