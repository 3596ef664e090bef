"""The reproduction: the verdict rules, the plan, shared cells, the claims on known numbers, and the smoke
version of ``python -m cartl_kit reproduce`` end to end (the quick one takes hours: not in tests)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from cartl_kit import reproduce as rp
from cartl_kit.claims import judged
from cartl_kit.config import config_hash


def S(mean, std=0.0):
    return rp.Stat(mean, std)


def test_judge_rules():
    assert rp.judge([(S(0.6, 0.01), S(0.5, 0.01))] * 3) == ("holds", 3, 3)
    # in the claimed direction, but within the seeds' spread: not "holds"
    assert rp.judge([(S(0.6, 0.01), S(0.5, 0.01)), (S(0.51, 0.02), S(0.5, 0.02))]) == ("holds partly", 1, 2)
    assert rp.judge([(S(0.6), S(0.5)), (S(0.4), S(0.5))]) == ("holds partly", 1, 1)
    assert rp.judge([(S(0.6), S(0.5)), (S(0.4), S(0.5)), (S(0.3), S(0.5))]) == ("does not hold here", 1, 1)
    assert rp.judge([]) == ("not measured", 0, 0)


def test_plan_refuses_impossible_settings():
    with pytest.raises(ValueError, match=r"tradeoff_ks must list k in 1..8"):
        rp.Plan(tradeoff_ks=(0, 9))
    with pytest.raises(ValueError, match="seeds must be distinct"):
        rp.Plan(seeds=(0, 0))
    with pytest.raises(ValueError, match="ablation_lam must be one of lams"):
        rp.Plan(ablation_lam=0.5)
    with pytest.raises(ValueError, match="unknown reproduction plan 'huge'; choose one of quick, smoke, fashion, paper"):
        rp.get_plan("huge")


def test_tables_share_their_runs():
    plan = rp.get_plan("quick")
    cells = rp.cells(plan, seed=1)
    by_table = {}
    for cell in cells:
        by_table.setdefault(cell.table, {})[(cell.row, cell.column)] = config_hash(cell.config)
    assert by_table["ablation"][("AT → TL", "k = 4")] == by_table["tradeoff"][("k = 4", "vanilla")]
    assert by_table["batchnorm"][("k = 4", "vanilla")] == by_table["tradeoff"][("k = 4", "vanilla")]
    assert by_table["ablation"][("AT+FDM → NEFT", "k = 4")] == by_table["lam_beta"][("k = 4, λ = 0.003", "β = 0.4")]
    assert by_table["baselines"][("CARTL", "full")] == by_table["lam_beta"][("k = 4, λ = 0.003", "β = 0.4")]
    assert all(cell.config.seed == 1 and cell.config.teacher.seed == 1 for cell in cells)
    unique = {config_hash(c.config) for c in cells}
    teachers = {config_hash(c.config.teacher) for c in cells}
    assert (len(cells), len(unique), len(teachers)) == (5 + 4 + 4 + 3 + 3 + 3 * 3, 23, 3)


def _summary(plan, clean, robust):
    """A summary whose every cell is given by clean(cell)/robust(cell), with a small spread."""
    rows = []
    for cell in rp.cells(plan, seed=0):
        rows.append(dict(table=cell.table, row=cell.row, column=cell.column, clean_mean=clean(cell),
                         clean_std=0.001, robust_mean=robust(cell), robust_std=0.001, seeds=2))
    return pd.DataFrame(rows).drop_duplicates(["table", "row", "column"])


def _paper_like(cell):
    """Numbers shaped like the paper's findings."""
    c = cell.config
    neft = c.method == "neft"
    fdm = c.teacher.method == "fdm"
    clean = 0.80 + 0.02 * c.k - (0.2 if c.method == "lwf" else 0) + 0.01 * fdm
    robust = 0.60 - 0.05 * c.k + 0.2 * (1 - (c.beta or 1.0)) * neft + 0.05 * fdm + 0.02 * neft
    robust += {"train-update": -0.03, "train-reuse": 0.0, "freeze-update": -0.02, "vanilla": 0.01}[c.bn_case]
    if fdm:
        robust += 0.01 if c.teacher.lam == 0.003 else 0.0
        clean += 0.0 if c.teacher.lam == 0.003 else 0.003
    if c.method == "lwf":
        robust -= 0.3
    return clean, robust


def test_claims_hold_on_numbers_shaped_like_the_papers_and_fail_on_reversed_ones():
    plan = rp.get_plan("quick")
    like = _summary(plan, lambda c: _paper_like(c)[0], lambda c: _paper_like(c)[1])
    verdicts = {c.claim: c.verdict for c in rp.claims(like, plan)}
    assert len(verdicts) == 14
    assert set(verdicts.values()) == {"holds"}, verdicts
    reversed_ = _summary(plan, lambda c: 1 - _paper_like(c)[0], lambda c: 1 - _paper_like(c)[1])
    flipped = {c.claim: c.verdict for c in rp.claims(reversed_, plan)}
    assert flipped["Accuracy rises with k (poster)"] == "does not hold here"
    assert flipped["Robustness falls as k grows (poster)"] == "does not hold here"
    assert sum(v == "does not hold here" for v in flipped.values()) >= 11


def test_a_claim_names_the_comparisons_that_went_against_it():
    """A "holds partly" can rest on one half of a claim: CARTL above LwF (which collapses) but below vanilla at
    every small-data fraction. The claim names the comparisons that failed, in its sentence and in its numbers."""
    plan = rp.get_plan("quick")

    def robust(cell):
        value = _paper_like(cell)[1]
        below_vanilla = cell.table == "baselines" and cell.row == "CARTL" and cell.column != "full"
        return value - 0.3 if below_vanilla else value

    found = {c.claim: c for c in rp.claims(_summary(plan, lambda c: _paper_like(c)[0], robust), plan)}
    small = next(c for name, c in found.items() if name.startswith("CARTL is more robust than vanilla transfer and LwF "
                                                                      "with less target data"))
    assert small.verdict == "holds partly"
    assert small.against == ("CARTL > vanilla at 50 %", "CARTL > vanilla at 20 %", "CARTL > vanilla at 10 %")
    assert "; against the claim: CARTL > vanilla at 50 %; CARTL > vanilla at 20 %" in small.sentence()
    like = rp.claims(_summary(plan, lambda c: _paper_like(c)[0], lambda c: _paper_like(c)[1]), plan)
    assert all(c.against == () and "against the claim" not in c.sentence() for c in like)
    with pytest.raises(ValueError, match="1 labels for 2 comparisons"):
        judged("t", "c", [(S(0.6), S(0.5)), (S(0.6), S(0.5))], "", ["one"])


def test_smoke_reproduction_end_to_end(tmp_path):
    report = tmp_path / "reproduction.md"
    args = [sys.executable, "-m", "cartl_kit", "reproduce", "--preset", "smoke", "--runs-dir", str(tmp_path / "runs"),
            "--report", str(report)]
    empty = subprocess.run(args + ["--report-only"], capture_output=True, text=True, timeout=300)
    assert empty.returncode == 0, empty.stderr[-3000:]
    missing = len(rp.reproduce_cells("smoke"))
    assert f"left out of the report: {missing} runs" in empty.stdout and "0 of 10 teachers trained" in empty.stdout
    assert f"**Incomplete:** rendered from the runs store without training; {missing} run(s)" in report.read_text()
    assert "None" not in report.read_text(), "a cell not measured reads '–'"
    assert "## 6. The teachers" not in report.read_text()  # no teacher evaluated yet
    assert not any((tmp_path / "runs").glob("*/model.pt")), "--report-only trains nothing"
    first = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "transfers trained, 0 loaded; 10 of 10 teachers trained" in first.stdout
    text = report.read_text()
    for title in rp.TITLES.values():
        assert f"## {title}" in text
    assert "command: `python -m cartl_kit reproduce --preset smoke" in text and "this invocation:" in text
    made = re.findall(r"^- \d+ (?:transfers|teachers) made here, started .*$", text, flags=re.M)
    assert len(made) == 2 and all(re.search(r"by kit commit \w+|the kit's commit not recorded", m) for m in made)
    verdicts = re.findall(r"^\d+\. .* \*\*(holds|holds partly|does not hold here|not measured)\*\*\.$", text, flags=re.M)
    assert len(verdicts) == 14
    assert "python -m cartl_kit sweep --preset paper" in text
    second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and re.search(r"^0 transfers trained, \d+ loaded; 0 of 10", second.stdout, flags=re.M)  # reuses all
    rendered = subprocess.run(args + ["--report-only"], capture_output=True, text=True, timeout=300)
    assert rendered.returncode == 0 and "left out" not in rendered.stdout and "Incomplete" not in report.read_text()
    assert re.findall(r"^\d+\. .*$", report.read_text(), flags=re.M) == re.findall(r"^\d+\. .*$", text, flags=re.M)
    teachers = re.search(r"^## 6\. The teachers .*?(?=^## )", text, flags=re.M | re.S)
    assert teachers and len(re.findall(r"^\| (AT|FDM k = \d, λ = [\d.]+) \| 2 \|", teachers.group(0), flags=re.M)) == 5
    students = re.findall(r"^\| ((?:AT|FDM k = \d, λ = [\d.]+) → (?:TL|NEFT β = [\d.]+), k = \d) \| 2 \|",
                          teachers.group(0), flags=re.M)
    assert len(students) == len(set(students)) == 2 * 2 * 2 + 2 * 2, students  # λ × β at k = 3, 4; AT → TL, NEFT
    assert teachers.group(0) in report.read_text()  # rendered without evaluating, from the records
    # rendered again without training, the report still says when and by which code its runs were made
    assert re.findall(r"^- \d+ (?:transfers|teachers) made here, .*$", report.read_text(), flags=re.M) == made


def test_reproduce_refuses_a_wrong_preset_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cartl_kit", "reproduce", "--preset", "paper"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "invalid choice: 'paper'" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_recipes_give_a_paper_sweep_per_table_and_their_compute():
    text = rp.recipes_markdown()
    assert text.count("python -m cartl_kit sweep --preset paper") == len(rp.RECIPES)
    # WRN-34-10 at 32x32 by hand: per group of 5 units 2.15-2.25 G multiply-adds, 6.658 G in all, so F = 13.32 GFLOP;
    # one AT teacher = 17F per image, 50k images, 100 epochs
    assert rp.recipe_flops("cifar100", "cifar10", "wrn34_10", 0, 1, 0) == pytest.approx(17 * 13.32e9 * 50_000 * 100, rel=0.01)


def test_recipes_take_gpu_rates_only_from_a_gpu_benchmark_they_are_given(tmp_path):
    row = {"arch": "wrn34_10", "candidate": "kit bf16", "tflop_per_s": 100.0}
    gpu, cpu = tmp_path / "gpu.json", tmp_path / "cpu.json"
    gpu.write_text(json.dumps({"machine": {"device": "cuda", "gpu": "H200", "date": "today"}, "rows": [row]}))
    cpu.write_text(json.dumps({"machine": {"device": "cpu"}, "rows": [row]}))
    rates = rp.measured_gpu_rates(gpu)
    assert rates == {"wrn34_10": (100e12, "H200, today")}
    assert rp.measured_gpu_rates(cpu) == {} and rp.measured_gpu_rates(tmp_path / "missing.json") == {}
    title, source, target, arch, _, transfers, at, fdm, _ = next(r for r in rp.RECIPES if r[3] == "wrn34_10")
    hours = rp.recipe_flops(source, target, arch, transfers, at, fdm) / 100e12 / 3600
    row = next(line for line in rp.recipes_markdown(rates).splitlines() if line.startswith(f"| {title} |"))
    assert row.endswith(f"| {hours:.0f} (at 100 TFLOP/s, H200, today) |")
    assert "(at 100 TFLOP/s" not in rp.recipes_markdown()


def test_cells_at_chance_are_named():
    summary = pd.DataFrame([dict(table="baselines", row="CARTL", column="20/class", clean_mean=0.20, clean_std=0.0,
                                 robust_mean=0.199, robust_std=0.0, seeds=2),
                            dict(table="baselines", row="vanilla", column="20/class", clean_mean=0.70, clean_std=0.0,
                                 robust_mean=0.44, robust_std=0.0, seeds=2)])
    assert list(rp.at_chance(summary, 5).row) == ["CARTL"]
    assert rp.at_chance(summary, 2).row.tolist() == ["CARTL"]  # 0.2 is below chance (0.5) for two classes too
    assert rp.at_chance(summary, 100).empty


def test_every_recipe_is_a_valid_sweep_of_the_paper_preset():
    """Each recipe's command parses, and its grid builds (configs only: nothing trains or downloads)."""
    import shlex

    from cartl_kit.__main__ import parser
    from cartl_kit.experiments import sweep_configs

    for title, source, target, arch, flags, transfers, at, fdm, _ in rp.RECIPES:
        argv = shlex.split(f"sweep --preset paper --source {source} --target {target} --arch {arch} {flags}")
        args = parser().parse_args(argv)
        configs = sweep_configs(args.preset, ks=args.k, methods=args.method, betas=args.beta, teacher=args.teacher,
                                lams=args.lam, bn_cases=args.bn_case, source=args.source, target=args.target,
                                arch=args.arch)
        assert len(configs) == transfers, title
        assert {c.dataset for c in configs} == {target} and {c.teacher.dataset for c in configs} == {source}
        assert {c.teacher.arch for c in configs} == {arch}
        assert len({c.teacher for c in configs}) == at + fdm, title


def test_small_data_cells_keep_the_paper_fractions_and_the_full_sets_sgd_steps():
    import math

    from cartl_kit.data import load_dataset
    from cartl_kit.plan import PLANS, cells
    baselines = [c for c in cells(PLANS["quick"], 0) if c.table == "baselines"]
    assert sorted({c.column for c in baselines}) == ["10 %", "20 %", "50 %", "full"]
    steps = {}
    for cell in baselines:
        optim = cell.config.optim
        steps[cell.row, cell.column] = optim.epochs * math.ceil(len(load_dataset(cell.config.dataset, split="train"))
                                                                / optim.batch_size)
    for (row, column), budget in steps.items():
        assert abs(budget - steps[row, "full"]) <= 0.1 * steps[row, "full"], (row, column, budget)
    with pytest.raises(ValueError, match="small_fractions"):
        rp.Plan(small_fractions=(1.5,))


def test_small_data_of_a_target_that_is_already_a_subset_shrinks_that_subset():
    import dataclasses

    from cartl_kit.config import get_preset
    from cartl_kit.plan import small_data
    preset = get_preset("smoke")
    full = preset.transfer(preset.source("at"), "tl")
    for target, fraction, expected in [("digits[5-9]", 0.5, "digits[5-9]@50%"),
                                       ("digits[5-9]@40%", 0.5, "digits[5-9]@20%"),
                                       ("digits[5-9]@100/class", 0.2, "digits[5-9]@20/class")]:
        small = small_data(dataclasses.replace(full, dataset=target), fraction)
        assert small.dataset == expected
        assert small.optim.epochs > full.optim.epochs  # the same steps on fewer images: more epochs


def test_a_cell_at_chance_is_no_evidence_for_a_claim():
    from cartl_kit.plan import PLANS
    plan = PLANS["smoke"]

    def row(r, column, clean, robust):
        return dict(table="baselines", row=r, column=column, clean_mean=clean, clean_std=0.0, robust_mean=robust,
                    robust_std=0.0, seeds=2)
    summary = pd.DataFrame([row("CARTL", "50 %", 0.21, 0.20), row("vanilla", "50 %", 0.80, 0.10),
                            row("LwF", "50 %", 0.80, 0.05)])
    small = [c for c in rp.claims(summary, plan) if "less target data" in c.claim][0]
    assert small.verdict == "holds"  # robust 20 % beats 10 % and 5 %: the CARTL cell learned nothing, though
    judged = [c for c in rp.claims(summary, plan, num_classes=5) if "less target data" in c.claim][0]
    assert judged.verdict == "not measured" and "2 left out" in judged.measured and "at chance" in judged.measured


def _runs(values):
    """A Stat of runs keyed by (teacher seed, transfer seed), in that order: (0, 0), (0, 1), (1, 0), (1, 1), ..."""
    keys = [(t, s) for t in range(3) for s in range(2)][:len(values)]
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return rp.Stat(mean, std, tuple(zip(keys, values)))


def test_paired_comparisons_see_a_steady_gap_that_the_seeds_spread_hides():
    # teachers differ a lot (0.3 vs 0.7), the method adds 0.02 to every run: unpaired, within the spread; paired, clear
    base = [0.30, 0.31, 0.70, 0.71, 0.50, 0.49]
    better = [v + 0.02 + 0.001 * i for i, v in enumerate(base)]
    a, b = _runs(better), _runs(base)
    assert rp.judge([(rp.Stat(a.mean, a.std), rp.Stat(b.mean, b.std))]) == ("holds partly", 0, 1)
    assert rp.judge([(a, b)]) == ("holds", 1, 1)
    noisy = _runs([v + d for v, d in zip(base, [0.05, -0.04, 0.03, -0.02, 0.04, -0.03])])
    from cartl_kit.claims import judged
    claim = judged("t", "noisy beats base", [(noisy, b)], "x")
    assert claim.verdict == "holds partly" and "paired over 6 runs" in claim.measured
    assert re.search(r"would need about \d+ paired runs", claim.measured)


def test_spread_sources_tell_teacher_seeds_from_transfer_seeds():
    rows = pd.DataFrame([dict(table="tradeoff", row="k = 1", column="vanilla", seed=t, transfer_seed=s,
                              robust_acc=0.3 + 0.2 * t + 0.01 * s, clean_acc=0.9) for t in range(3) for s in range(2)])
    found = rp.spread_sources(rows).iloc[0]
    assert found.teacher_sd == pytest.approx(20.0) and found.transfer_sd == pytest.approx(0.707, abs=1e-3)
    summary = rp.summarise(rows)
    assert summary.seeds.iloc[0] == 6 and summary.robust_runs.iloc[0][(2, 1)] == pytest.approx(0.71)
    plan = rp.get_plan("quick")
    assert rp.seed_pairs(plan) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    cell = next(c for c in rp.cells(plan, 2, 1) if c.table == "lam_beta")
    assert (cell.config.seed, cell.config.teacher.seed) == (1, 2)


def test_the_teachers_section_names_the_seeds_pgd_overstates():
    from types import SimpleNamespace

    from cartl_kit.config import get_preset
    from cartl_kit.report import MASKING_GAP, teachers_markdown
    table = pd.DataFrame([
        {"teacher": "AT", "seed": 0, "run": "a", "clean_acc": 0.99, "robust_acc": 0.83, "pgd_acc": 0.85},
        {"teacher": "AT", "seed": 1, "run": "b", "clean_acc": 0.98, "robust_acc": 0.81, "pgd_acc": 0.82},
        {"teacher": "FDM k = 4, λ = 0.01", "seed": 0, "run": "c", "clean_acc": 0.98, "robust_acc": 0.556, "pgd_acc": 0.856},
        {"teacher": "FDM k = 4, λ = 0.01", "seed": 1, "run": "d", "clean_acc": 0.98, "robust_acc": 0.80,
         "pgd_acc": 0.80 + MASKING_GAP},  # exactly at the threshold: not named
    ])
    text = "\n".join(teachers_markdown(SimpleNamespace(teachers_table=table, students_table=None), get_preset("quick")))
    assert "| AT | 2 | 98.5 ± 0.7 | 82.0 ± 1.4 | 83.5 ± 2.1 | s0 +2.0, s1 +1.0 |" in text
    assert "| FDM k = 4, λ = 0.01 | 2 |" in text and "s0 +30.0, s1 +5.0 |" in text
    assert text.endswith("by more than 5 points (a sign of gradient masking, or of too weak an attack): "
                         "FDM k = 4, λ = 0.01, seed 0 (+30.0).")
    assert teachers_markdown(SimpleNamespace(teachers_table=table.iloc[:0], students_table=None), get_preset("quick")) == []
    run = lambda student, seed, transfer, pgd: {"student": student, "seed": seed, "transfer_seed": transfer,  # noqa: E731
                                                "run": "x", "clean_acc": 0.98, "robust_acc": 0.40, "pgd_acc": pgd}
    students = pd.DataFrame([run("FDM → NEFT", 0, 0, 0.60), run("FDM → NEFT", 0, 1, 0.62),
                             run("AT → TL", 0, 0, 0.50), run("AT → TL", 1, 0, 0.40 + MASKING_GAP)])
    text = "\n".join(teachers_markdown(SimpleNamespace(teachers_table=table, students_table=students),
                                       get_preset("quick")))
    assert "### Their students (tables 3 and 4) under the ensemble and under PGD-20" in text
    assert "| FDM → NEFT | 2 | 98.0 ± 0.0 | 40.0 ± 0.0 | 61.0 ± 1.4 | +21.0 | 2 (all) |" in text
    assert "| AT → TL | 2 |" in text and "| +7.5 | 1 (s0/t0) |" in text  # s1/t0 is exactly at the threshold
