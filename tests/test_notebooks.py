"""The notebook series: structure checks here; execution by nbval (``--nbval-lax`` collects notebooks/)
and, with non-default parameters, by papermill."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REQUIRED = {"QUICK": True, "SEED": 0, "RUNS_DIR": "runs"}


def parameters(notebook) -> dict:
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged `parameters`"
    values = {}
    for statement in ast.parse(cells[0].source).body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, \
            f"the parameters cell holds assignments only: {ast.unparse(statement)}"
        values[statement.targets[0].id] = ast.literal_eval(statement.value)  # literals only
    return values


def test_the_series_is_there():
    names = [p.stem for p in NOTEBOOKS]
    assert "00_quickstart" in names and "02_tradeoff_k" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stripped_and_has_a_parameters_cell(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs not stripped"
    values = parameters(notebook)
    for name, value in REQUIRED.items():
        assert values.get(name) == value, f"{path.name}: parameters cell needs {name} = {value!r}"
    first = notebook.cells[0]
    text = first.source.lower()
    assert first.cell_type == "markdown" and "learn" in text and "run time" in text and "quick mode" in text, \
        f"{path.name}: the first cell states learning goals, and the run time in quick and full mode"


def _papermill(path, out, **params):
    import papermill
    return papermill.execute_notebook(str(path), str(out), parameters=params, progress_bar=False,
                                      kernel_name="python3", cwd=str(out.parent))


def test_papermill_runs_the_tradeoff_notebook_with_another_k(tmp_path):
    runs = tmp_path / "runs"
    path = next(p for p in NOTEBOOKS if p.stem == "02_tradeoff_k")
    _papermill(path, tmp_path / "out.ipynb", K=3, K_VALUES=[3], RUNS_DIR=str(runs))
    made = sorted(p.parent.name for p in runs.glob("*/model.pt"))
    assert len(made) == 1 and made[0].startswith("tl-k3-vanilla-"), made


def test_a_wrong_parameter_fails_with_one_clear_message(tmp_path):
    import papermill
    path = next(p for p in NOTEBOOKS if p.stem == "02_tradeoff_k")
    with pytest.raises(papermill.PapermillExecutionError, match=r"k must be an integer in 1\.\.8"):
        _papermill(path, tmp_path / "out.ipynb", K=99, K_VALUES=[], RUNS_DIR=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
