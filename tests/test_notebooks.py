"""The notebook series: structure checks here; execution by nbval (``--nbval-lax`` collects notebooks/)
and, with non-default parameters, by papermill."""

from __future__ import annotations

import ast
import json
import re
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
    assert "%pip install" in first.source and "cartl-kit notebooks" in first.source, \
        f"{path.name}: the first cell says how to install the kit outside its folder"
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    assert not re.search(r"\b[A-Z]+_[A-Z_]+\b(?!`)", re.sub(r"`[^`]*`", "", markdown)), \
        f"{path.name}: a placeholder (an upper-case name outside code marks) is left in its prose"


def _papermill(path, out, **params):
    import papermill
    return papermill.execute_notebook(str(path), str(out), parameters=params, progress_bar=False,
                                      kernel_name="python3", cwd=str(out.parent))


def _notebook(stem: str) -> Path:
    return next(p for p in NOTEBOOKS if p.stem == stem)


def _output_text(path: Path) -> str:
    """Everything an executed notebook printed or displayed as text or HTML."""
    parts = []
    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            data = output.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/html", ""), data.get("text/markdown", ""),
                      data.get("application/vnd.plotly.v1+json", {}) and json.dumps(data["application/vnd.plotly.v1+json"])]
    return "\n".join(str(p) for p in parts)


# The notebooks' own run store (what nbval uses too, RUNS_DIR = "runs" next to them): runs the papermill
# tests below train are loaded, not retrained, when nbval executes the notebooks with their defaults.
SHARED_RUNS = NOTEBOOKS[0].parent / "runs"


def _finished(config) -> dict:
    """The recorded evaluations of the finished run of ``config`` in the shared store (asserts it exists)."""
    from cartl_kit.runs import find_run
    found = find_run(config, SHARED_RUNS)
    assert found is not None and (found / "model.pt").exists(), f"no finished run of {config.slug} in {SHARED_RUNS}"
    return json.loads((found / "metrics.json").read_text()) if (found / "metrics.json").exists() else {}


def test_papermill_quickstart_with_another_lambda(tmp_path):
    from cartl_kit.config import get_preset
    preset = get_preset("quick").with_eval_examples(100)  # the notebooks evaluate a 100-image sample in quick mode
    _papermill(_notebook("00_quickstart"), tmp_path / "out.ipynb", LAMBDA=0.003, RUNS_DIR=str(SHARED_RUNS))
    cartl = preset.transfer(preset.source("fdm", k=4, lam=0.003), "neft", k=4, beta=0.6)
    assert preset.evaluation.name in _finished(cartl)
    assert "λ = 0.003" in _output_text(tmp_path / "out.ipynb")


def test_papermill_adversarial_training_with_another_attack(tmp_path):
    _papermill(_notebook("01_adversarial_training"), tmp_path / "out.ipynb", EPS=0.2, STEPS=3, EPOCHS=1,
               RUNS_DIR=str(SHARED_RUNS))
    text = _output_text(tmp_path / "out.ipynb")
    assert "attack ε = 0.2, PGD-3" in text and "after 1 epochs" in text


def test_papermill_fdm_with_one_lambda(tmp_path):
    from cartl_kit.config import get_preset
    preset = get_preset("quick").with_eval_examples(100)  # the notebooks evaluate a 100-image sample in quick mode
    _papermill(_notebook("03_fdm"), tmp_path / "out.ipynb", LAMBDA=0.03, LAMBDAS=[0.03], RUNS_DIR=str(SHARED_RUNS))
    cartl = preset.transfer(preset.source("fdm", k=4, lam=0.03), "neft", k=4, beta=0.6)
    assert preset.evaluation.name in _finished(cartl)
    text = _output_text(tmp_path / "out.ipynb")
    assert "FDM teacher (λ = 0.03)" in text and "CARTL λ = 0.03" in text and "CARTL λ = 0.003" not in text


def test_papermill_neft_with_one_beta(tmp_path):
    from cartl_kit.config import get_preset
    preset = get_preset("quick").with_eval_examples(100)  # the notebooks evaluate a 100-image sample in quick mode
    _papermill(_notebook("04_neft"), tmp_path / "out.ipynb", BETA=1.0, BETAS=[1.0], RUNS_DIR=str(SHARED_RUNS))
    assert preset.evaluation.name in _finished(preset.transfer(preset.source("at"), "neft", k=4, beta=1.0))
    text = _output_text(tmp_path / "out.ipynb")
    assert "β=1.0" in text and "β=0.4" not in text and "β = 1.0" in text


def test_papermill_batchnorm_with_another_panel_case(tmp_path):
    _papermill(_notebook("05_batchnorm"), tmp_path / "out.ipynb", BN_CASE="train-update", RUNS_DIR=str(SHARED_RUNS))
    assert "k = 4, train-update: clean" in _output_text(tmp_path / "out.ipynb")


def test_papermill_baselines_with_another_small_size(tmp_path):
    from cartl_kit.config import get_preset
    preset = get_preset("quick").with_eval_examples(100)  # the notebooks evaluate a 100-image sample in quick mode
    _papermill(_notebook("06_cartl_vs_baselines"), tmp_path / "out.ipynb", PER_CLASS=10, RUNS_DIR=str(SHARED_RUNS))
    small = f"{preset.target_dataset}@10/class"
    cartl = preset.transfer(preset.source("fdm", k=4, lam=0.01), "neft", k=4, beta=0.6, dataset=small)
    assert preset.evaluation.name in _finished(cartl)
    assert small in _output_text(tmp_path / "out.ipynb")


def test_papermill_lp_ft_with_another_alpha(tmp_path):
    from cartl_kit.config import get_preset
    preset = get_preset("quick").with_eval_examples(100)  # the notebooks evaluate a 100-image sample in quick mode
    _papermill(_notebook("08_lp_ft"), tmp_path / "out.ipynb", BETAS=[1.0], ALPHAS=[0.0, 1.0], ALPHA=0.25,
               RUNS_DIR=str(SHARED_RUNS))
    lpft = preset.transfer(preset.source("at"), "lpft", k=4)
    assert f"interp-a0.25-{preset.evaluation.name}" in _finished(lpft)
    text = _output_text(tmp_path / "out.ipynb")
    assert "θ(α = 0.25): clean" in text and "NEFT's β front's 1 points" in text and "β=0.4" not in text
    # the upper bound, with its cost (a ratio only when both runs trained with the same torch threads)
    assert "AFT upper bound (k = 4): robust (ensemble)" in text
    assert "× the cost" in text or "not comparable, no ratio" in text


def test_papermill_runs_the_tradeoff_notebook_with_another_k(tmp_path):
    runs = tmp_path / "runs"
    path = _notebook("02_tradeoff_k")
    _papermill(path, tmp_path / "out.ipynb", K=3, K_VALUES=[3], RUNS_DIR=str(runs))
    made = sorted(p.parent.name for p in runs.glob("*/model.pt"))
    assert len(made) == 1 and made[0].startswith("tl-k3-vanilla-"), made


def test_a_wrong_parameter_fails_with_one_clear_message(tmp_path):
    import papermill
    path = next(p for p in NOTEBOOKS if p.stem == "02_tradeoff_k")
    with pytest.raises(papermill.PapermillExecutionError, match=r"k must be an integer in 1\.\.8"):
        _papermill(path, tmp_path / "out.ipynb", K=99, K_VALUES=[], RUNS_DIR=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_papermill_reproduction_with_the_smoke_plan(tmp_path):
    """07 is not run by nbval (its quick plan takes hours); its smoke plan runs every cell in a minute or two."""
    out = tmp_path / "out.ipynb"
    _papermill(_notebook("07_reproduction"), out, PLAN="smoke", N_SEEDS=2, RUNS_DIR=str(tmp_path / "runs"),
               REPORT="report.md")
    text = _output_text(out)
    assert "plan smoke" in text and "transfers trained, 0 loaded; 10 of 10 teachers trained" in text
    for verdict in ("holds", "does not hold here"):
        assert verdict in text
    assert "python -m cartl_kit sweep --preset paper" in text
    assert "| AT | 2 |" in text and "− ensemble, per seed" in text  # the teachers under both attacks
    report = (tmp_path / "report.md").read_text()
    assert "command: `notebooks/07_reproduction.ipynb (PLAN='smoke', seeds (0, 1))`" in report


def test_reproduction_notebook_refuses_an_unknown_plan(tmp_path):
    import papermill
    with pytest.raises(papermill.PapermillExecutionError, match="unknown reproduction plan 'huge'; choose one of"):
        _papermill(_notebook("07_reproduction"), tmp_path / "out.ipynb", PLAN="huge", RUNS_DIR=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()
