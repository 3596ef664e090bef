"""The README's engine example is the shipped example file, and it runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
        clean, robust = float(row[3]), float(row[4])
        assert 0 <= robust <= clean <= 100
        assert clean > 20  # better than chance (5 classes)
