"""Sentences generated from result tables, so prose about results is always true of the numbers beside it.

Every function takes the rows a command or notebook just measured (``experiments.run_row`` rows: ``label``,
``clean_acc``, ``robust_acc`` under the headline attack named in ``attack``, and optionally ``pgd_acc``
under the paper's PGD-k) and returns plain sentences. None of them states a trend that the table does not
show: an ordering is stated with its numbers, and a paper's claim is put beside the measured result.
"""

from __future__ import annotations

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


def claim_beside(claim: str, table, better: str, worse: str, *, column: str = "robust_acc",
                 label: str = "label") -> str:
    """The paper's claim "``better`` > ``worse`` in ``column``" beside what ``table`` measured.

    Example:
        >>> claim_beside("CARTL is more robust than vanilla transfer", table, "CARTL", "vanilla TL")
    """
    rows = {r[label]: r for r in _records(table)}
    a, b = rows[better][column], rows[worse][column]
    verdict = "shows here" if a > b else ("ties here" if abs(a - b) < 1e-9 else "does not show here")
    return (f"Paper: {claim}. Measured: {better} {_pct(a)}, {worse} {_pct(b)} — the claim {verdict}.")


def demo_findings(table, *, headline: str, pgd: str) -> list[str]:
    """The demo's findings: the orderings under both attacks, masking flags, and the paper's two claims."""
    lines = attack_findings(table, headline=headline, pgd=pgd)
    labels = {r["label"] for r in _records(table)}
    if {"NEFT", "vanilla TL"} <= labels:
        lines.append(claim_beside("NEFT inherits more robustness than vanilla fine-tuning", table, "NEFT", "vanilla TL"))
    cartl = next((name for name in labels if name.startswith("CARTL")), None)
    if cartl and "NEFT" in labels:
        lines.append(claim_beside("the FDM teacher adds robustness on top of NEFT (CARTL)", table, cartl, "NEFT"))
    return lines
