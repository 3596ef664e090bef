"""The sentence helpers the notebooks print (``cartl_kit.findings``: versus, trend, group_ranges, claim_most,
change, same_order): each states its numbers, and says only what they show."""

from __future__ import annotations

import pandas as pd
import pytest

from cartl_kit.findings import change, claim_most, group_ranges, same_order, trend, versus


def _table(*rows):
    return pd.DataFrame([dict(zip(("label", "k", "clean_acc", "robust_acc", "pgd_acc", "n"), row)) for row in rows])


def test_versus_states_each_difference_with_its_noise():
    table = _table(("vanilla", 1, 0.99, 0.474, 0.50, 500), ("NEFT", 2, 0.985, 0.49, 0.61, 500),
                   ("CARTL", 4, 0.98, 0.17, 0.60, 500))
    lines = versus(table, "vanilla", headline="ensemble", pgd="PGD-20")
    assert len(lines) == 2 and all(line.endswith(".") for line in lines)
    neft, cartl = lines
    assert neft.startswith("NEFT against vanilla: robust (ensemble) 49.0 % vs 47.4 % (+1.6 points, within noise")
    assert "robust (PGD-20) 61.0 % vs 50.0 % (+11.0 points, beyond noise" in neft
    assert "clean 98.5 % vs 99.0 % (-0.5 points, within noise" in neft
    assert "robust (ensemble) 17.0 % vs 47.4 % (-30.4 points, beyond noise" in cartl


def test_versus_without_pgd_or_sample_size_says_no_noise():
    table = pd.DataFrame([{"label": "a", "clean_acc": 0.9, "robust_acc": 0.5},
                          {"label": "b", "clean_acc": 0.8, "robust_acc": 0.6}])
    (line,) = versus(table, "a", headline="ensemble")
    assert line == "b against a: robust (ensemble) 60.0 % vs 50.0 % (+10.0 points); clean 80.0 % vs 90.0 % (-10.0 points)."


def test_versus_does_not_claim_noise_across_different_sample_sizes():
    table = _table(("a", 1, 0.9, 0.5, 0.5, 500), ("b", 2, 0.9, 0.6, 0.6, 100))
    assert "noise" not in versus(table, "a")[0]


@pytest.mark.parametrize("values, shape", [
    ((0.6, 0.5, 0.4), "it falls at every step"),
    ((0.4, 0.5, 0.6), "it rises at every step"),
    ((0.5, 0.5, 0.5), "it does not change"),
    ((0.5, 0.6, 0.4), "it is not monotonic (1 step(s) up, 1 down)"),
    ((0.5, 0.0, 0.0), "it never rises (1 step(s) down, 1 flat)"),
    ((0.5, 0.5, 0.6), "it never falls (1 step(s) up, 1 flat)"),
])
def test_trend_names_the_shape_it_sees(values, shape):
    table = _table(*[(f"k={k}", k, 0.99, v, v, 500) for k, v in zip((4, 1, 2), (values[2], values[0], values[1]))])
    text = trend(table, "k", name="robust accuracy (ensemble)")
    assert text.startswith(f"robust accuracy (ensemble) against k: 1 → {100 * values[0]:.1f} %, 2 → ")  # sorted by k
    assert shape in text
    assert f"from k = 1 to 4 it changes by {100 * (values[2] - values[0]):+.1f} points" in text


def test_trend_flags_a_change_within_noise_and_handles_one_row():
    small = _table(("k=1", 1, 0.99, 0.50, 0.5, 500), ("k=2", 2, 0.99, 0.48, 0.5, 500))
    assert "-2.0 points, within noise (2 s.e. ≈ 6.3)" in trend(small, "k")
    assert trend(small.iloc[:1], "k", name="clean") == "clean against k: 1 → 50.0 %."


def test_group_ranges_says_whether_the_grouping_separates_the_rows():
    table = _table(("train-update", 4, 0.99, 0.012, 0.05, 500), ("freeze-update", 4, 0.99, 0.02, 0.05, 500),
                   ("train-reuse", 4, 0.99, 0.47, 0.55, 500), ("freeze-reuse", 4, 0.99, 0.484, 0.55, 500))
    stats = {case: case.split("-")[1] for case in table["label"]}
    text = group_ranges(table, stats, name="robust accuracy (ensemble)", by="extractor statistics")
    assert text == ("robust accuracy (ensemble) by extractor statistics: update 1.2–2.0 %, reuse 47.0–48.4 %; "
                    "the ranges do not overlap (the closest values of two groups differ by 45.0 points, "
                    "beyond noise (2 s.e. ≈ 4.6)).")
    affine = {case: case.split("-")[0] for case in table["label"]}
    assert group_ranges(table, affine, by="affine").endswith("the ranges overlap.")
    assert "update 5.0 %" in group_ranges(table, stats, "pgd_acc")  # a group of equal values: one number
    close = _table(("a-x", 4, 0.9, 0.30, 0.3, 500), ("b-y", 4, 0.9, 0.31, 0.3, 500))
    assert group_ranges(close, {"a-x": "x", "b-y": "y"}, by="g").endswith(
        "do not overlap (the closest values of two groups differ by 1.0 points, within noise (2 s.e. ≈ 5.8)).")


def test_claim_most_reports_the_measured_leader_and_the_noise():
    table = _table(("vanilla", 1, 0.99, 0.474, 0.5, 500), ("NEFT", 2, 0.985, 0.49, 0.61, 500),
                   ("CARTL", 4, 0.98, 0.17, 0.60, 500))
    shown = claim_most("NEFT is the most robust", table, "NEFT")
    assert shown.startswith("Paper: NEFT is the most robust. Measured robust accuracy: NEFT (49.0 %) > vanilla (47.4 %)")
    assert "the claim shows here, but NEFT leads vanilla by less than the noise (2 s.e. ≈ 6.3)" in shown
    not_shown = claim_most("CARTL is the most robust", table, "CARTL")
    assert "does not show here: NEFT is highest (49.0 %), CARTL has 17.0 %" in not_shown
    clear = _table(("a", 1, 0.9, 0.8, 0.8, 500), ("b", 1, 0.9, 0.2, 0.2, 500))
    assert claim_most("a is the most robust", clear, "a").endswith("— the claim shows here.")


def test_change_and_same_order():
    assert change("absolute distance", "AT", 0.64, "FDM", 0.16) == "absolute distance: AT 0.640 → FDM 0.160 (×0.25)."
    table = pd.DataFrame([{"label": "AT", "distance": 0.64, "robust_acc": 0.47},
                          {"label": "FDM", "distance": 0.16, "robust_acc": 0.17},
                          {"label": "FDM2", "distance": 0.05, "robust_acc": 0.30}])
    text = same_order(table, "distance", "robust_acc", ascending_first=True)
    assert text == ("By distance (lowest first): FDM2, FDM, AT. By robust_acc (highest first): AT, FDM2, FDM. "
                    "The two orders differ.")
    assert same_order(table, "robust_acc", "robust_acc").endswith("The two orders are the same.")
    assert "though both put AT first" in same_order(table, "robust_acc", "distance")


def test_claim_checked_does_not_call_a_difference_inside_the_noise_a_finding():
    from cartl_kit.findings import claim_checked
    table = _table(("vanilla", 4, 0.99, 0.474, 0.5, 500), ("NEFT", 4, 0.985, 0.52, 0.6, 500),
                   ("CARTL", 4, 0.98, 0.60, 0.6, 500), ("LwF", 4, 0.98, 0.59, 0.6, 500))
    assert claim_checked("NEFT is more robust", table, "NEFT", "vanilla") == (
        "Paper: NEFT is more robust. Measured: NEFT 52.0 %, vanilla 47.4 % (+4.6 points, within noise (2 s.e. ≈ 6.3))"
        " — the direction shows here, but within noise.")
    assert claim_checked("CARTL beats vanilla", table, "CARTL", "vanilla").endswith("— the claim shows here.")
    assert claim_checked("vanilla beats CARTL", table, "vanilla", "CARTL").endswith("— the claim does not show here.")
    assert claim_checked("LwF beats CARTL", table, "LwF", "CARTL").endswith(
        "— the claim does not show here, though the opposite is within noise too.")
    assert claim_checked("CARTL beats itself", table, "CARTL", "CARTL").endswith(
        "(+0.0 points) — the claim does not show here (a tie).")
