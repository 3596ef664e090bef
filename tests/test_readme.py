"""The README's engine example is the shipped example file, and it runs."""

from __future__ import annotations

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
