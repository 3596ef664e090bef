"""Sentences generated from result tables, so prose about results is always true of the numbers beside it.

Every function takes the rows a command or notebook just measured (``experiments.run_row`` rows: ``label``,
``clean_acc``, ``robust_acc`` under the headline attack named in ``attack``, and optionally ``pgd_acc``
under the paper's PGD-k) and returns plain sentences. None of them states a trend that the table does not
show: an ordering is stated with its numbers, and a paper's claim is put beside the measured result.
"""

from __future__ import annotations

import numbers

MASKING_GAP = 0.05  # PGD-k above the headline by more than this (a fraction): flagged as a masking signature


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _records(table) -> list[dict]:
    return table.to_dict("records") if hasattr(table, "to_dict") else list(table)


def ordering(table, column: str = "robust_acc", *, label: str = "label") -> str:
    """``A (61.0 %) > B (48.2 %) > C (17.0 %)``: the rows ordered by ``column``, highest first ("=" for ties)."""
    rows = sorted(_records(table), key=lambda r: -r[column])
    text = f"{rows[0][label]} ({_pct(rows[0][column])})"
    for before, row in zip(rows, rows[1:]):
        text += f" {'=' if abs(before[column] - row[column]) < 1e-9 else '>'} {row[label]} ({_pct(row[column])})"
    return text


def masked(row: dict, gap: float = MASKING_GAP) -> bool:
    """True when the row's PGD-k robust accuracy exceeds its headline by more than ``gap``."""
    return "pgd_acc" in row and row["pgd_acc"] - row["robust_acc"] > gap


def attack_findings(table, *, headline: str = "the ensemble", pgd: str = "PGD-20", label: str = "label") -> list[str]:
    """What the headline attack and the paper's PGD-k say about the same rows, and where they disagree."""
    rows = _records(table)
    lines = [f"Robust accuracy under {headline}: {ordering(rows, label=label)}."]
    if not rows or "pgd_acc" not in rows[0]:
        return lines
    lines.append(f"Under {pgd} alone: {ordering(rows, 'pgd_acc', label=label)}.")
    by_headline = [r[label] for r in sorted(rows, key=lambda r: -r["robust_acc"])]
    by_pgd = [r[label] for r in sorted(rows, key=lambda r: -r["pgd_acc"])]
    if by_headline[0] != by_pgd[0]:
        lines.append(f"The two attacks disagree on which is most robust: {pgd} says {by_pgd[0]}, {headline} says "
                     f"{by_headline[0]}. A number from a weak attack can reverse a conclusion.")
    for row in rows:
        if masked(row):
            lines.append(f"{pgd} overstates the robust accuracy of {row[label]} by "
                         f"{100 * (row['pgd_acc'] - row['robust_acc']):.1f} points ({_pct(row['pgd_acc'])} against "
                         f"{_pct(row['robust_acc'])}): small-step PGD does not find its adversarial examples, "
                         "a signature of gradient masking (check with `python -m cartl_kit evaluate RUN --convergence`).")
    return lines


def demo_findings(table, *, headline: str, pgd: str) -> list[str]:
    """The demo's findings: the orderings under both attacks, masking flags, and the paper's two claims."""
    lines = attack_findings(table, headline=headline, pgd=pgd)
    labels = {r["label"] for r in _records(table)}
    if {"NEFT", "vanilla TL"} <= labels:
        lines.append(claim_checked("NEFT inherits more robustness than vanilla fine-tuning", table, "NEFT", "vanilla TL",
                                   name=f"robust accuracy under {headline}"))
    cartl = next((name for name in labels if name.startswith("CARTL")), None)
    if cartl and "NEFT" in labels:
        lines.append(claim_checked("the FDM teacher adds robustness on top of NEFT (CARTL)", table, cartl, "NEFT",
                                   name=f"robust accuracy under {headline}"))
    return lines


# --- helpers for the notebooks: comparisons, trends and groups, each stated with its numbers and its noise ---

def _se_points(a: float, b: float, n: int | None) -> float | None:
    """A rough standard error of the difference ``a - b`` of two accuracies on ``n`` test images, in points."""
    if not n:
        return None
    return 100 * ((a * (1 - a) + b * (1 - b)) / n) ** 0.5


def _noise(a: float, b: float, n: int | None) -> str:
    """``, beyond noise (2 s.e. ≈ 4.4)`` or ``, within noise (...)`` for the difference of two accuracies measured
    on ``n`` test images (empty when ``n`` is unknown)."""
    se = _se_points(a, b, n)
    if se is None or abs(a - b) < 1e-12:
        return ""
    return f", {'beyond' if abs(100 * (a - b)) > 2 * se else 'within'} noise (2 s.e. ≈ {2 * se:.1f})"


def _n(row: dict) -> int | None:
    n = row.get("n")
    try:
        return int(n) if n == n and n is not None else None  # NaN-safe
    except (TypeError, ValueError):
        return None


def versus(table, baseline: str, *, headline: str = "the ensemble", pgd: str = "PGD-20",
           label: str = "label") -> list[str]:
    """Every row against the row labelled ``baseline``: the difference in robust accuracy (under ``headline``,
    and under ``pgd`` when the rows carry ``pgd_acc``) and in clean accuracy, each in points with whether it
    exceeds two rough standard errors of the difference on the rows' ``n`` test images.

    Example:
        >>> versus(table, "vanilla TL", headline="ensemble")
        ['NEFT against vanilla TL: robust (ensemble) 52.0 % vs 47.4 % (+4.6 points, within noise (2 s.e. ≈ 6.3)); ...']
    """
    rows = _records(table)
    base = next(r for r in rows if r[label] == baseline)
    columns = [("robust_acc", f"robust ({headline})")]
    if "pgd_acc" in base:
        columns.append(("pgd_acc", f"robust ({pgd})"))
    columns.append(("clean_acc", "clean"))
    lines = []
    for row in rows:
        if row[label] == baseline:
            continue
        n = _n(row) if _n(row) == _n(base) else None
        parts = [f"{name} {_pct(row[c])} vs {_pct(base[c])} ({100 * (row[c] - base[c]):+.1f} points"
                 f"{_noise(row[c], base[c], n)})" for c, name in columns if c in row]
        lines.append(f"{row[label]} against {baseline}: " + "; ".join(parts) + ".")
    return lines


def trend(table, x: str, column: str = "robust_acc", *, name: str = "robust accuracy", x_name: str | None = None) -> str:
    """How ``column`` moves as ``x`` grows: every value, then whether it falls at every step, rises at every
    step or goes both ways, and the change from the first to the last value with its noise.

    Example:
        >>> trend(table, "k", name="robust accuracy (ensemble)")
        'robust accuracy (ensemble) against k: 1 → 60.0 %, 2 → 55.1 %, 4 → 47.2 %: it falls at every step; ...'
    """
    rows = sorted(_records(table), key=lambda r: r[x])
    x_name = x_name or x
    def fmt(value) -> str:
        return f"{value:g}" if isinstance(value, numbers.Real) else str(value)

    values = ", ".join(f"{fmt(r[x])} → {_pct(r[column])}" for r in rows)
    text = f"{name} against {x_name}: {values}"
    if len(rows) < 2:
        return text + "."
    steps = [b[column] - a[column] for a, b in zip(rows, rows[1:])]
    if all(s < -1e-9 for s in steps):
        shape = "it falls at every step"
    elif all(s > 1e-9 for s in steps):
        shape = "it rises at every step"
    elif all(abs(s) < 1e-9 for s in steps):
        shape = "it does not change"
    else:
        up = sum(s > 1e-9 for s in steps)
        down = sum(s < -1e-9 for s in steps)
        flat = len(steps) - up - down
        counts = f"{up} step(s) up, {down} down" + (f", {flat} flat" if flat else "")
        if not up:
            shape = f"it never rises ({down} step(s) down, {flat} flat)"
        elif not down:
            shape = f"it never falls ({up} step(s) up, {flat} flat)"
        else:
            shape = f"it is not monotonic ({counts})"
    first, last = rows[0], rows[-1]
    n = _n(first) if _n(first) == _n(last) else None
    return (f"{text}: {shape}; from {x_name} = {fmt(first[x])} to {fmt(last[x])} it changes by "
            f"{100 * (last[column] - first[column]):+.1f} points{_noise(last[column], first[column], n)}.")


def group_ranges(table, groups: dict, column: str = "robust_acc", *, name: str = "robust accuracy",
                 by: str = "group", label: str = "label") -> str:
    """``column`` per group of rows (``groups`` maps a row's label to its group): each group's range, and
    whether the ranges overlap (if not, the grouping alone separates the rows).

    Example:
        >>> group_ranges(table, {"train-update": "update", "freeze-reuse": "reuse", ...}, by="extractor statistics")
        'robust accuracy by extractor statistics: update 1.2–2.0 %, reuse 47.0–48.4 %; the ranges do not overlap
        (the closest values of two groups differ by 45.0 points, beyond noise (2 s.e. ≈ 4.6)).'
    """
    values: dict[str, list[float]] = {}
    sizes = set()
    for row in _records(table):
        if row[label] in groups:
            values.setdefault(groups[row[label]], []).append(row[column])
            sizes.add(_n(row))
    spans = {g: (min(v), max(v)) for g, v in values.items()}
    parts = [f"{g} {_pct(lo)}" if abs(hi - lo) < 1e-9 else f"{g} {100 * lo:.1f}–{_pct(hi)}" for g, (lo, hi) in spans.items()]
    ordered = sorted(spans.values())
    gaps = [(b[0] - a[1], a[1], b[0]) for a, b in zip(ordered, ordered[1:])]
    if not gaps or any(gap <= 0 for gap, _, _ in gaps):
        return f"{name} by {by}: " + ", ".join(parts) + ("; the ranges overlap." if gaps else ".")
    gap, below, above = min(gaps)
    n = sizes.pop() if len(sizes) == 1 else None
    return (f"{name} by {by}: " + ", ".join(parts) + f"; the ranges do not overlap (the closest values of two groups "
            f"differ by {100 * gap:.1f} points{_noise(above, below, n)}).")


def claim_most(claim: str, table, expected: str, *, column: str = "robust_acc", name: str = "robust accuracy",
               label: str = "label") -> str:
    """The paper's claim "``expected`` has the highest ``column``" beside the measured ordering."""
    rows = sorted(_records(table), key=lambda r: -r[column])
    top = rows[0]
    mine = next(r for r in rows if r[label] == expected)
    if mine is top or abs(mine[column] - top[column]) < 1e-9:
        verdict = "shows here"
        runner = next((r for r in rows if r is not mine), None)
        n = _n(mine) if runner is not None and _n(mine) == _n(runner) else None
        if runner is not None and "within" in _noise(mine[column], runner[column], n):
            verdict += f", but {expected} leads {runner[label]} by less than the noise{_noise(mine[column], runner[column], n)[len(', within noise'):]}"
    else:
        verdict = f"does not show here: {top[label]} is highest ({_pct(top[column])}), {expected} has {_pct(mine[column])}"
    return f"Paper: {claim}. Measured {name}: {ordering(rows, column, label=label)} — the claim {verdict}."


def change(what: str, before_name: str, before: float, after_name: str, after: float, *, digits: int = 3) -> str:
    """``what``: ``before_name`` 0.640 → ``after_name`` 0.160 (×0.25): a measured change stated with its ratio."""
    ratio = f" (×{after / before:.2f})" if before else ""
    return f"{what}: {before_name} {before:.{digits}f} → {after_name} {after:.{digits}f}{ratio}."


def same_order(table, first: str, second: str, *, first_name: str | None = None, second_name: str | None = None,
               ascending_first: bool = False, ascending_second: bool = False, label: str = "label") -> str:
    """Whether ordering the rows by ``first`` and by ``second`` gives the same order (each highest first unless
    ``ascending_*``), with both orders stated."""
    rows = _records(table)
    def order(column, ascending):
        return [r[label] for r in sorted(rows, key=lambda r: r[column] if ascending else -r[column])]
    a, b = order(first, ascending_first), order(second, ascending_second)
    a_name = (first_name or first) + (" (lowest first)" if ascending_first else " (highest first)")
    b_name = (second_name or second) + (" (lowest first)" if ascending_second else " (highest first)")
    verdict = "the two orders are the same" if a == b else (
        "the two orders differ" + ("" if a[0] != b[0] else f", though both put {a[0]} first"))
    return f"By {a_name}: {', '.join(a)}. By {b_name}: {', '.join(b)}. {verdict[0].upper() + verdict[1:]}."


def claim_checked(claim: str, table, better: str, worse: str, *, column: str = "robust_acc",
                  label: str = "label", name: str | None = None, chance: float | None = None,
                  margin: float = 0.05) -> str:
    """The paper's claim "``better`` > ``worse`` in ``column``" beside the measured numbers, with the
    difference's noise: a claim that holds only by less than two rough standard errors
    is said to show "within noise", not to hold. With ``chance`` (1 / classes), a row whose clean accuracy
    is within ``margin`` of it is a run that learned nothing: the claim is then not judged on it.

    Example:
        >>> claim_checked("CARTL is more robust than vanilla transfer", table, "CARTL", "vanilla")
        'Paper: CARTL is more robust than vanilla transfer. Measured: CARTL 52.0 %, vanilla 47.4 % (+4.6 points,
        within noise (2 s.e. ≈ 6.3)) — the direction shows here, but within noise.'
    """
    rows = {r[label]: r for r in _records(table)}
    a, b = rows[better], rows[worse]
    failed = [] if chance is None else [key for key, row in ((better, a), (worse, b))
                                        if row["clean_acc"] <= chance + margin]
    if chance is not None and failed:
        return (f"Paper: {claim}. Not judged here: " + " and ".join(
            f"{key} is at chance ({_pct(rows[key]['clean_acc'])} clean, chance {_pct(chance)})" for key in failed)
            + ": a run that learned nothing is a failed experiment, not evidence either way.")
    n = _n(a) if _n(a) == _n(b) else None
    noise = _noise(a[column], b[column], n)
    diff = a[column] - b[column]
    if abs(diff) < 1e-9:
        verdict = "the claim does not show here (a tie)"
    elif "within noise" in noise:
        verdict = ("the direction shows here, but within noise" if diff > 0
                   else "the claim does not show here, though the opposite is within noise too")
    else:
        verdict = "the claim shows here" if diff > 0 else "the claim does not show here"
    measured = f"Measured {name}" if name else "Measured"  # name: which quantity, e.g. the attack behind it
    return (f"Paper: {claim}. {measured}: {better} {_pct(a[column])}, {worse} {_pct(b[column])} "
            f"({100 * diff:+.1f} points{noise}) — {verdict}.")


def front_dominance(front: list[dict], other: list[dict], *, name: str, other_name: str, n: int | None = None) -> str:
    """Does one (clean, robust) front dominate the other? Each front is a list of rows with ``clean_acc`` and
    ``robust_acc``; a point is dominated when a point of the other front is at least as clean and as robust.
    The sentence counts the dominated points both ways and gives the verdict; with ``n`` (test images) it says
    whether any robust gap behind the verdict exceeds two standard errors, or every one is within noise.

    Example:
        >>> front_dominance(lpft_front, neft_front, name="LP-FT's α front", other_name="NEFT's β front", n=100)
    """
    def covering(p: dict, by: list[dict]) -> list[dict]:
        return [q for q in by if q["clean_acc"] >= p["clean_acc"] and q["robust_acc"] >= p["robust_acc"]]

    if not front or not other:
        return f"Not judged: {name if not front else other_name} has no point."
    ours, theirs = sum(bool(covering(p, front)) for p in other), sum(bool(covering(p, other)) for p in front)
    winner, loser = (front, other) if ours == len(other) and theirs < len(front) else \
        (other, front) if theirs == len(front) and ours < len(other) else (None, None)
    verdict = ("neither front dominates the other" if winner is None else
               f"on these numbers {name if winner is front else other_name} dominates "
               f"{other_name if winner is front else name}")
    sentence = (f"{ours} of {other_name}'s {len(other)} points are dominated by a point of {name} (at least as clean "
                f"and as robust), and {theirs} of {name}'s {len(front)} by {other_name}: {verdict}")
    if n and winner is not None and loser is not None:
        gaps = [(max(q["robust_acc"] for q in covering(p, winner)) - p["robust_acc"], p) for p in loser
                if covering(p, winner)]
        beyond = [gap for gap, p in gaps if 100 * gap > 2 * (_se_points(p["robust_acc"] + gap, p["robust_acc"], n) or 0)]
        sentence += (f"; {len(beyond)} of its robust gaps exceed 2 s.e. on {n} test images" if beyond else
                     f", but every robust gap behind it is within noise (2 s.e.) on {n} test images, so this run "
                     "does not settle it")
    return sentence + "."


def upper_bound(row: dict, others: list[dict], *, seconds: float | None = None, baseline: dict | None = None,
                baseline_seconds: float | None = None, threads: tuple | None = None, headline: str = "the ensemble",
                label: str = "label") -> str:
    """A labelled upper bound (e.g. adversarial fine-tuning) beside the most robust of ``others`` (the arms in the
    regime it bounds), robust accuracy under ``headline``, with the difference's noise; with ``seconds`` and ``baseline_seconds``, what it cost against
    ``baseline`` (training epochs' seconds, as ``Run.train_seconds`` measures them). ``threads`` (the two runs'
    ``Run.threads``): when they differ the seconds are given with them and no ratio, as they do not compare.

    Example:
        >>> upper_bound(aft_row, front + neft, seconds=212.0, baseline=tl_row, baseline_seconds=18.0, headline="ensemble")
        'AFT (k = 4): robust (ensemble) 80.0 % (clean 95.0 %); the most robust of the other 9, NEFT β = 0.4, ...'
    """
    robust = f"robust ({headline}) {_pct(row['robust_acc'])} (clean {_pct(row['clean_acc'])})"
    if not others:
        return f"{row[label]}: {robust}; nothing to compare."
    best = max(others, key=lambda r: r["robust_acc"])
    n = _n(row) if _n(row) == _n(best) else None
    gap = 100 * (row["robust_acc"] - best["robust_acc"])
    where = ("above it" if gap > 0 else "not above it") + _noise(row["robust_acc"], best["robust_acc"], n)
    sentence = (f"{row[label]}: {robust}; the most robust of "
                f"the other {len(others)}, {best[label]}, {_pct(best['robust_acc'])} (clean {_pct(best['clean_acc'])}): "
                f"{gap:+.1f} points, {where}")
    if seconds is not None and baseline is not None and baseline_seconds:
        if threads is not None and threads[0] != threads[1]:
            sentence += (f". Its training epochs took {seconds:.0f} s with {threads[0]} torch thread(s), "
                         f"{baseline[label]}'s {baseline_seconds:.0f} s with {threads[1]}: not comparable, no ratio "
                         "(train both with the same threads, e.g. from an empty RUNS_DIR)")
        else:
            sentence += (f". Its training epochs took {seconds:.0f} s, {baseline[label]}'s {baseline_seconds:.0f} s: "
                         f"{seconds / baseline_seconds:.1f}× the cost (each run's own timing, in its history)")
    return sentence + "."
