"""Notebooks in a real JupyterLab, in headless Chromium, as a student meets them (slow; CI installs Chromium).

Each notebook is copied into a fresh folder with the papermill tests' parameters injected (the same runs, so
the shared run store trains each once), opened in JupyterLab, run with Run > Run All Cells, its first slider
moved and its first button pressed; then it is saved and reopened. Executed cells are counted in the saved
file, not on screen.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from lab_in_browser import CHROMIUM, Lab, browser, check_notebook  # noqa: E402

from test_notebooks import SHARED_RUNS  # noqa: E402

pytestmark = pytest.mark.slow

# The papermill tests' parameters (tests/test_notebooks.py): their runs are shared, so nothing trains twice.
CASES = {
    "00_quickstart": dict(RUNS_DIR=str(SHARED_RUNS)),
    "01_adversarial_training": dict(EPS=0.2, STEPS=3, EPOCHS=1, RUNS_DIR=str(SHARED_RUNS)),
    "04_neft": dict(BETA=1.0, BETAS=[1.0], RUNS_DIR=str(SHARED_RUNS)),
}


def _needs_chromium() -> None:
    have = shutil.which(CHROMIUM) is not None and importlib.util.find_spec("playwright") is not None
    if not have:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {CHROMIUM} (apt-get install chromium) and Playwright (requirements.txt)")
        pytest.skip(f"needs {CHROMIUM} (apt-get install chromium) and Playwright")


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    """What each notebook of ``CASES`` did in the browser."""
    _needs_chromium()
    import papermill
    from playwright.sync_api import sync_playwright

    folder = tmp_path_factory.mktemp("lab")
    for stem, parameters in CASES.items():
        papermill.execute_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb"), str(folder / f"{stem}.ipynb"),
                                   parameters=parameters, prepare_only=True, kernel_name="python3")
    results = {}
    with Lab(folder) as lab, sync_playwright() as p:
        chromium = browser(p)
        for stem in CASES:
            page = chromium.new_page(viewport={"width": 1400, "height": 1000})
            results[stem] = check_notebook(page, lab, f"{stem}.ipynb", timeout=1200)
            page.close()
        chromium.close()
    return results


@pytest.mark.parametrize("stem", list(CASES))
def test_every_cell_runs_without_an_error_or_a_console_error(seen, stem):
    result = seen[stem]
    assert result.code_cells > 0 and result.executed == result.code_cells, result
    assert not result.errors and not result.console, result.problems()


def test_the_panel_runs_and_adds_to_the_figures(seen):
    result = seen["04_neft"]
    assert result.slider is not None and result.button_seconds is not None, "04 has a slider and a Run button"
    assert result.traces_after > result.traces_before, \
        f"pressing Run drew no new trace ({result.traces_before} -> {result.traces_after})"


@pytest.mark.xfail(strict=False, reason="known, not fixed: during a long panel action the server's kernel state (GET /api/sessions; "
                   "JupyterLab's status bar reads the kernel's own status messages) reads 'idle' (seen in 02, k = 5: "
                   "busy, then idle for 40 s while the button was greyed; in a CI run of 04, idle throughout); the "
                   "cause is not found yet")
def test_the_kernel_reads_busy_while_a_panel_works(seen):
    states = seen["04_neft"].kernel_while_pressed
    # allowing one poll that lands between the action's end and the button turning active again
    assert not any(a == b == "idle" for a, b in zip(states, states[1:])), states


@pytest.mark.parametrize("stem", list(CASES))
def test_a_saved_notebook_reopens_with_its_figures_and_no_widget_error(seen, stem):
    result = seen[stem]
    assert result.widget_errors_after_reopen == 0, result.problems()
    assert result.figures_after_reopen > 0, "the saved notebook shows no figure when reopened"
    # the last state of every live figure was saved (an intermittent blank live figure was seen in 01)
    assert result.blank_figures_after_reopen == 0, result.problems()
