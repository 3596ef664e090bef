"""The paper's numbers are stored once (``cartl_kit.paper_results``): the report, the recipes and notebook 05
read them from there, and the module agrees with itself where the reference says two tables share a cell."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cartl_kit import paper_results as pr
from cartl_kit.recipes import RECIPES
from cartl_kit.report import PAPER, REPORTED_BN_SETTINGS

NOTEBOOK_05 = Path(__file__).resolve().parent.parent / "notebooks" / "05_batchnorm.ipynb"


def _numbers(text: str) -> list[float]:
    """The numbers of every "clean / robust" pair in ``text``, in order."""
    return [float(x) for pair in re.findall(r"\b(\d+\.\d\d) / (\d+\.\d\d)\b", text) for x in pair]


def _flat(*rows) -> list[float]:
    return [v for row in rows for cell in row.values() for v in (cell.clean, cell.robust)]


@pytest.mark.parametrize("table, rows", [
    ("tradeoff", lambda: [pr.ABLATION["AT → TL"]]),
    ("batchnorm", lambda: [pr.BN_ABLATION[s] for s in REPORTED_BN_SETTINGS]),
    ("lam_beta", lambda: list(pr.LAM_BETA.cells.values())),
    ("ablation", lambda: list(pr.ABLATION.cells.values())),
    ("baselines", lambda: list(pr.BASELINES.cells.values())),
])
def test_the_reports_paper_lines_are_the_modules_numbers_in_order(table, rows):
    assert _numbers(PAPER[table]) == _flat(*rows())


def test_every_recipe_quotes_the_modules_numbers():
    stored = {v for table in pr.PAPER_TABLES.values() for row in table.cells.values() for v in _flat(row)}
    for title, *_, paper in RECIPES:
        assert _numbers(paper) and set(_numbers(paper)) <= stored, title


def test_cells_the_reference_says_two_tables_share_are_equal():
    for k in (4, 6, 8):  # §11.3's AT+FDM → NEFT row is §11.2's λ = 0.005, β = 0.4
        assert pr.ABLATION["AT+FDM → NEFT"][k] == pr.LAM_BETA[k, 0.005][0.4]
    assert pr.BASELINES["CIFAR-10 → SVHN"]["vanilla"] == pr.BN_ABLATION["CIFAR-10 → SVHN, k = 6"]["freeze-reuse"]


def test_tables_are_complete_and_cells_render_as_printed():
    assert all(list(row) == list(pr.BN_CASE_LABELS) for row in pr.BN_ABLATION.cells.values())
    assert len(pr.BN_ABLATION.cells) == 4 and len(pr.LAM_BETA.cells) == 6 and len(pr.BASELINES.cells) == 4
    assert all(table.source for table in pr.PAPER_TABLES.values())
    cell = pr.BN_ABLATION["CIFAR-10 → SVHN, k = 6"]["freeze-update"]
    assert str(cell) == "95.16 / 4.90" and cell.as_row() == pytest.approx({"clean_acc": 0.9516, "robust_acc": 0.049})


def test_notebook_05_reads_the_papers_numbers_instead_of_typing_them():
    cells = json.loads(NOTEBOOK_05.read_text(encoding="utf-8"))["cells"]
    text = "\n".join("".join(cell["source"]) for cell in cells)
    assert "from cartl_kit.paper_results import BN_ABLATION" in text
    for row in pr.BN_ABLATION.cells.values():
        for cell in row.values():
            for value in (cell.clean, cell.robust):
                for typed in (f"{value:.2f}", f"{value / 100:.4f}", f"{value:.1f} %"):
                    assert typed not in text, f"notebook 05 types the paper's {typed}"


def test_notebook_05_finds_the_extractor_through_the_kit():
    cells = json.loads(NOTEBOOK_05.read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
    assert "named_modules" not in code and ".split('.')" not in code
    assert "bn_drift(" in code and "extractor_batchnorms(" in code
