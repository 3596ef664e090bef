"""The README's engine example is the shipped example file, and it runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from cartl_kit import config as cfg

ROOT = Path(__file__).resolve().parent.parent


def test_readme_quotes_the_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart:begin -->\n```python\n(.*?)```\n<!-- quickstart:end -->", readme, re.S)
    assert block, "README.md lost its quickstart block"
    assert block.group(1) == (ROOT / "examples" / "quickstart.py").read_text()


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_example_runs_and_prints_its_table():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True,
                         check=True, timeout=600).stdout
    rows = [line.split() for line in out.strip().splitlines()[1:]]
    assert [row[0] for row in rows] == ["vanilla", "NEFT", "CARTL"]
    for row in rows:
        clean, robust, pgd = float(row[3]), float(row[4]), float(row[5])
        assert 0 <= robust <= clean <= 100 and robust <= pgd + 1.0  # the ensemble is never much weaker than PGD-20
        assert clean > 20  # better than chance (5 classes)


def test_make_demo_is_the_main_job_and_reproduces_the_readmes_table(tmp_path):
    """The README's first command, on the shipped teachers: its table matches the README within a point."""
    assert "$(PY) -m cartl_kit demo" in (ROOT / "Makefile").read_text()
    report = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "cartl_kit", "demo", "--json", "--runs-dir", str(tmp_path / "runs"),
                           "--report", str(report), "--device", "cpu"],
                          capture_output=True, text=True, timeout=2400, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    out = __import__("json").loads(done.stdout)
    assert out["report"] == str(report) and report.exists()
    assert all(teacher["shipped"] for teacher in out["teachers"])
    readme = (ROOT / "README.md").read_text()
    for student in out["students"]:
        line = re.search(rf"^\s*{re.escape(student['label'])} .* ([\d.]+)\s+([\d.]+)\s+([\d.]+)$", readme, re.M)
        assert line, f"README.md has no demo row for {student['label']}"
        assert student["attack"] == cfg.get_preset("quick").evaluation.label
        assert abs(float(line.group(1)) - 100 * student["clean_acc"]) <= 1.0
        assert abs(float(line.group(2)) - 100 * student["robust_acc"]) <= 1.0  # the ensemble
        assert abs(float(line.group(3)) - 100 * student["pgd_acc"]) <= 1.0  # PGD-20 beside it


def _tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "tools" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readmes_reproduction_verdicts_are_generated_from_the_published_reports():
    tool = _tool()
    block = tool.readme_block((ROOT / "README.md").read_text())
    assert block == tool.render(ROOT / "reports"), "run python tools/readme_results.py --write"


def test_the_reproduction_block_puts_every_claim_beside_each_scenarios_verdict(tmp_path):
    tool = _tool()
    claim = lambda text, verdict, agree, clear: {"claim": text, "verdict": verdict, "agreeing": agree,  # noqa: E731
                                                 "clear": clear, "total": 4, "table": "t", "measured": ""}
    prov = {"runs": 9, "shipped": 3, "first": "2026-12-07 13:40 UTC", "last": "2026-12-08 09:00 UTC",
            "train_seconds": 1.0, "resumed": 2, "commits": {"67ac4f7": 6}}

    def numbers(claims, missing=()):
        return {"attack": "ensemble (X)", "eps": 0.1, "plan": {"seeds": [0, 1, 2], "transfer_seeds": [0, 1]},
                "claims": claims, "provenance": {"teachers": prov}, "missing": list(missing)}

    (tmp_path / "reproduction-quick.json").write_text(json.dumps(numbers(
        [claim("A rises", "holds", 4, 4), claim("B with 50 %, 20 %", "does not hold here", 1, 0)])))
    teachers = [{"teacher": "AT", "seed": 0, "robust_acc": 0.834, "pgd_acc": 0.856},
                {"teacher": "FDM λ = 0.01", "seed": 2, "robust_acc": 0.14, "pgd_acc": 0.846},
                {"teacher": "FDM λ = 0.003", "seed": 1, "robust_acc": 0.80, "pgd_acc": 0.85}]  # 5.0 points: not over
    (tmp_path / "reproduction-quick.json").write_text(json.dumps(dict(json.loads(
        (tmp_path / "reproduction-quick.json").read_text()), teachers=teachers, pgd_attack="PGD-20", masking_gap=0.05,
        students=[{"student": "FDM → NEFT", "robust_acc": 0.2, "pgd_acc": 0.6}, {"student": "FDM → NEFT", "robust_acc": 0.4,
                                                                                  "pgd_acc": 0.42},
                  {"student": "AT → TL", "robust_acc": 0.4, "pgd_acc": 0.42}])))
    (tmp_path / "reproduction-fashion.json").write_text(json.dumps(numbers(
        [dict(claim("A rises", "holds partly", 3, 1), against=["X > Y at 10 %", "W,b | μ > – | μ"]),
         claim("B with 50 %", "not measured", 0, 0)],
        missing=["x", "y"])))
    (tmp_path / "reproduction-smoke.json").write_text(json.dumps(numbers([claim("A rises", "holds", 4, 4)])))
    block = tool.render(tmp_path)
    assert block.startswith(tool.BEGIN) and block.endswith(tool.END)
    assert ("| A rises | **holds** (4/4 agree, 4 clear) | **holds partly** (3/4 agree, 1 clear; against: X > Y at 10 %; "
            "W,b \\| μ > – \\| μ) |") in block
    assert "| B with 50 %, 20 % | **does not hold here** (1/4 agree, 0 clear) | not measured (1) |" in block
    assert "1. `fashion` judges it as: B with 50 %" in block
    assert "`smoke`" not in block  # only the published scenarios
    assert "**incomplete**: 2 runs missing" in block and "2 resumed from a checkpoint" in block
    assert ("9 teachers: 3 shipped with the kit, 6 made here, started between 2026-12-07 13:40 UTC and 2026-12-08 "
            "09:00 UTC, by kit commit 67ac4f7") in block
    assert ("of its 3 teachers, PGD-20 overstates the ensemble by more than 5 points on FDM λ = 0.01 seed 2 "
            "(14.0 → 84.6) (ensemble → PGD-20, %); and on runs of these of its students (tables 3 and 4): "
            "FDM → NEFT (1 of 2).") in block
    assert block.count("overstates") == 1  # the fashion numbers have no teachers evaluated
    assert "No reproduction" in tool.render(tmp_path / "empty")
