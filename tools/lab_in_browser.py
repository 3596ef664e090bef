"""Open notebooks in a real JupyterLab in headless Chromium, as a student would, and check what happened.

Used by ``tests/test_browser.py`` (CI installs Debian's ``chromium``; Playwright for Python drives it, its own
browser downloads are never used), and by hand for screenshots:

    .venv/bin/python tools/lab_in_browser.py --out /tmp/lab notebooks/00_quickstart.ipynb notebooks/04_neft.ipynb

``Lab`` starts a JupyterLab server without a token on a free port, serving a folder. ``check_notebook`` opens
a notebook there, runs all cells (Run > Run All Cells), waits until every code cell has executed, moves the
first slider one step, presses the first button, saves, reopens, and returns what it saw. Whether a cell ran
is read from the saved file (execution counts and error outputs), not from what happens to be on screen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ACTIVE = ".jp-NotebookPanel:not(.lm-mod-hidden)"
# A plotly figure's traces as drawn in the page (plotly keeps them on the figure's element).
TRACES_JS = "() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(e => (e.data || []).length)"
# Figures drawn with no point at all (no trace, or only empty traces): a live figure whose redraws were lost.
BLANK_JS = ("() => Array.from(document.querySelectorAll('.js-plotly-plot')).filter(e => !(e.data || []).some("
            "t => (t.x && t.x.length) || (t.y && t.y.length) || (t.z && t.z.length) || (t.values && t.values.length)"
            ")).length")
WIDGET_ERROR = "Error displaying widget"
# JupyterLab settings for the check: no "Jupyter news" toast over the page; ipywidgets saves the state of the
# widgets still open (a panel's controls) with the notebook, as the kit's own `make lab` does
# (.venv/share/jupyter/lab/settings/overrides.json).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": True},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server (the running Python's ``jupyter lab``) on a free port, serving ``root``."""

    def __init__(self, root: Path, *, python: str = sys.executable, log: Path | None = None):
        self.root, self.python, self.port = Path(root), python, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log) if log else self.root / "jupyterlab.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Lab":
        settings = self.root / ".lab-settings"  # user settings of this server only
        for plugin, values in LAB_SETTINGS.items():
            path = settings / plugin.replace(":", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_name(path.name + ".jupyterlab-settings").write_text(json.dumps(values))
        env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTER_PLATFORM_DIRS="1")
        self.process = subprocess.Popen(
            [self.python, "-m", "jupyter", "lab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
             "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.allow_root=True",
             "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={self.root}"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: see {self.log}")
            try:
                urllib.request.urlopen(f"{self.url}/api/status", timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer on {self.url} within 120 s: see {self.log}")

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def kernel_state(self, notebook: str) -> str | None:
        """The execution state ("busy", "idle", ...) of the kernel of ``notebook``'s session, None without one."""
        with urllib.request.urlopen(f"{self.url}/api/sessions", timeout=10) as answer:
            sessions = json.load(answer)
        for session in sessions:
            if session.get("path") == notebook and session.get("kernel"):
                return session["kernel"].get("execution_state")
        return None

    def saved(self, notebook: str) -> dict:
        """The notebook as saved on the server (nbformat JSON)."""
        with urllib.request.urlopen(f"{self.url}/api/contents/{notebook}?content=1&type=notebook") as answer:
            return json.load(answer)["content"]


@dataclass
class Seen:
    """What one notebook did in the browser."""

    notebook: str
    code_cells: int = 0
    executed: int = 0
    errors: list[str] = field(default_factory=list)          # error outputs in the saved file
    console: list[str] = field(default_factory=list)         # console errors and uncaught page errors
    run_seconds: float = 0.0
    traces_before: int = 0                                   # plotly traces near the panel, before Run
    traces_after: int = 0                                    # ... after the slider and the button
    slider: str | None = None                                # the slider's readout after the move
    button_seconds: float | None = None
    kernel_while_pressed: list[str] = field(default_factory=list)  # the server's kernel state, polled while greyed
    widget_errors_after_reopen: int = 0
    figures_after_reopen: int = 0
    blank_figures_after_reopen: int = 0                      # figures with no point (see BLANK_JS)
    widget_models_saved: int = 0                             # widget models kept in the saved file

    def problems(self) -> list[str]:
        found = []
        if self.code_cells == 0 or self.executed < self.code_cells:
            found.append(f"{self.executed} of {self.code_cells} code cells executed")
        found += [f"error output: {e}" for e in self.errors]
        found += [f"console: {c}" for c in self.console]
        if self.widget_errors_after_reopen:
            found.append(f"{self.widget_errors_after_reopen} '{WIDGET_ERROR}' after reopening")
        if self.blank_figures_after_reopen:
            found.append(f"{self.blank_figures_after_reopen} figure(s) without a point after reopening")
        if any(a == b == "idle" for a, b in zip(self.kernel_while_pressed, self.kernel_while_pressed[1:])):
            found.append(f"the kernel said idle while the panel worked: {self.kernel_while_pressed}")
        return found


def _menu(page, top: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def _open(page, url: str, notebook: str, workspace: str) -> None:
    # A workspace of its own, reset: only this notebook open, so the menus act on it.
    page.goto(f"{url}/lab/workspaces/{workspace}/tree/{notebook}?reset")
    page.wait_for_selector(f"{ACTIVE} .jp-Notebook", timeout=120_000)
    page.wait_for_selector(f"{ACTIVE} .jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)


def _started(page) -> bool:
    """Whether any code cell is running, queued or done (its prompt is no longer ``[ ]``)."""
    prompts = page.locator(f"{ACTIVE} .jp-CodeCell .jp-InputPrompt").all_inner_texts()
    return any(p.strip() not in ("", "[ ]:") for p in prompts)


def _run_all(page, notebook: str, *, tries: int = 4) -> None:
    """Run > Run All Cells, again if nothing started: a kernel that reports idle while its connection is
    still being set up drops the request (seen: the page loaded, the status bar said Idle, no cell ran)."""
    for _ in range(tries):
        _menu(page, "Run", "Run All Cells")
        for _ in range(20):
            page.wait_for_timeout(500)
            if _started(page):
                return
    raise RuntimeError(f"{notebook}: Run All Cells started no cell in {tries} tries")


def _wait_until_done(page, lab: Lab, notebook: str, code_cells: int, timeout: float) -> None:
    """Until the saved file shows every code cell executed (or an error output, where Run All stops).

    Whether the kernel works is asked of the server (the session's ``execution_state``), not read off the
    screen: cells scrolled out of view are not drawn, so their prompts say nothing. The notebook is saved and
    read back only after the kernel has been idle for two polls in a row, so a long run is not saved over and
    over.
    """
    start, calm = time.time(), 0
    while time.time() - start < timeout:
        page.wait_for_timeout(2000)
        calm = calm + 1 if lab.kernel_state(notebook) == "idle" else 0
        if calm >= 2:
            _save(page)
            code = [c for c in lab.saved(notebook)["cells"] if c["cell_type"] == "code"]
            if all(c.get("execution_count") is not None for c in code) or \
                    any(o.get("output_type") == "error" for c in code for o in c.get("outputs", [])):
                return
            calm = 0
    raise TimeoutError(f"{notebook}: not all {code_cells} code cells had run after {timeout:.0f} s")


def _save(page) -> None:
    _menu(page, "File", "Save Notebook")
    page.wait_for_timeout(1500)


def _scan(page) -> tuple[int, int, int]:
    """Scroll the notebook from top to bottom: (plotly figures, widget errors, figures without a point) seen,
    the most at any one place (JupyterLab draws only the cells near the view)."""
    figures = errors = blank = 0
    scroller = page.locator(f"{ACTIVE} .jp-WindowedPanel-outer").first
    for _ in range(200):
        page.wait_for_timeout(700)
        figures = max(figures, page.locator(f"{ACTIVE} .js-plotly-plot").count())
        errors = max(errors, page.locator(f"{ACTIVE} .jp-OutputArea-output", has_text=WIDGET_ERROR).count())
        blank = max(blank, page.evaluate(BLANK_JS))
        if scroller.evaluate("el => el.scrollTop + el.clientHeight >= el.scrollHeight - 2"):
            break
        scroller.evaluate("el => el.scrollBy(0, el.clientHeight * 0.8)")
    return figures, errors, blank


def _traces(page) -> int:
    return sum(page.evaluate(TRACES_JS))


def check_notebook(page, lab: Lab, notebook: str, *, timeout: float = 900, shots: Path | None = None) -> Seen:
    """Run ``notebook`` (a path under the server's root) as a student would; see ``Seen``."""
    seen = Seen(notebook)
    page.on("console", lambda m: seen.console.append(m.text[:300]) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.console.append(f"uncaught: {str(e)[:300]}"))
    seen.code_cells = sum(c["cell_type"] == "code" for c in lab.saved(notebook)["cells"])
    _open(page, lab.url, notebook, "run")
    start = time.time()
    _run_all(page, notebook)
    _wait_until_done(page, lab, notebook, seen.code_cells, timeout)
    seen.run_seconds = time.time() - start
    page.wait_for_timeout(1500)
    if shots:
        page.screenshot(path=str(shots / f"{Path(notebook).stem}-ran.png"), full_page=True)
    slider = page.locator(f"{ACTIVE} .widget-slider .noUi-handle, {ACTIVE} .widget-slider .ui-slider-handle").first
    if slider.count():
        slider.scroll_into_view_if_needed()
        slider.click()
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(500)
        seen.slider = page.locator(f"{ACTIVE} .widget-slider .widget-readout").first.inner_text()
    button = page.locator(f"{ACTIVE} .jupyter-widgets button").first
    if button.count():
        button.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        seen.traces_before = _traces(page)  # the figures drawn around the panel, before and after
        button.click()
        pressed = time.time()
        page.wait_for_timeout(1500)
        while not button.is_enabled() and time.time() - pressed < timeout:  # the panel greys it while working
            seen.kernel_while_pressed.append(lab.kernel_state(notebook) or "none")  # the status bar's source
            page.wait_for_timeout(1000)
        seen.button_seconds = time.time() - pressed
        button.scroll_into_view_if_needed()
        page.wait_for_timeout(2000)
        seen.traces_after = _traces(page)
        if shots:
            page.screenshot(path=str(shots / f"{Path(notebook).stem}-button.png"), full_page=True)
    _save(page)
    saved = lab.saved(notebook)
    code = [c for c in saved["cells"] if c["cell_type"] == "code"]
    seen.executed = sum(c.get("execution_count") is not None for c in code)
    seen.errors = [f"{o.get('ename')}: {o.get('evalue', '')[:200]}" for c in code for o in c.get("outputs", [])
                   if o.get("output_type") == "error"]
    state = saved.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    seen.widget_models_saved = len(state.get("state", {}))
    page.goto("about:blank")
    _open(page, lab.url, notebook, "reopen")  # a fresh page: the saved file only, no live kernel state
    page.wait_for_timeout(3000)
    seen.figures_after_reopen, seen.widget_errors_after_reopen, seen.blank_figures_after_reopen = _scan(page)
    if shots:
        page.screenshot(path=str(shots / f"{Path(notebook).stem}-reopened.png"), full_page=True)
    return seen


def browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="notebooks to copy into a fresh folder and run")
    parser.add_argument("--out", type=Path, default=Path("lab-screenshots"), help="folder for the copies and shots")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for a run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for notebook in args.notebooks:
        if notebook.resolve() != (args.out / notebook.name).resolve():  # already there: run it in place
            shutil.copy(notebook, args.out / notebook.name)
    with Lab(args.out) as lab, sync_playwright() as p:
        chromium = browser(p)
        for notebook in args.notebooks:
            page = chromium.new_page(viewport={"width": 1400, "height": 1000})
            seen = check_notebook(page, lab, notebook.name, timeout=args.timeout, shots=args.out)
            print(json.dumps(seen.__dict__, indent=1), "\nproblems:", seen.problems() or "none", flush=True)
            page.close()
        chromium.close()


if __name__ == "__main__":
    main()
