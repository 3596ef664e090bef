"""Open notebooks in a real JupyterLab in headless Chromium, run them, move a widget, take screenshots.

A manual check (not part of `make test`): it needs Debian's Chromium (`apt-get install chromium`) and
Playwright for Python (`pip install playwright`, in any environment; its bundled browsers are not used).
Start JupyterLab first, from the kit's environment, without a token:

    .venv/bin/jupyter lab --no-browser --port 8899 --IdentityProvider.token='' --ServerApp.allow_root=True notebooks/ &
    python tools/lab_in_browser.py --out /tmp/lab 00_quickstart.ipynb 04_neft.ipynb

For every notebook it runs all cells (Run > Run All Cells), waits until the kernel is idle, screenshots
the page at a few scroll positions and every plotly figure on its own, then nudges the first slider one step to the right, presses the
first button, waits for the kernel again and screenshots once more. It prints what it found: widget
views, plotly figures, error outputs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


ACTIVE = ".jp-NotebookPanel:not(.lm-mod-hidden)"


def wait_idle(page: Page, timeout: float) -> float:
    """Seconds until the notebook's kernel reports idle with no cell queued or running (``[*]``)."""
    start = time.time()
    time.sleep(2)
    while time.time() - start < timeout:
        busy = page.locator(f"{ACTIVE} .jp-InputPrompt", has_text="[*]").count()
        idle = page.locator(f"{ACTIVE} .jp-Notebook-ExecutionIndicator[data-status='idle']").count()
        if busy == 0 and idle > 0:
            return time.time() - start
        time.sleep(1)
    raise TimeoutError(f"the kernel was still busy after {timeout:.0f} s")


def menu(page: Page, top: str, item: str) -> None:
    """Click a menu-bar entry, then one of its items (as a user would)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def shoot(page: Page, out: Path, name: str, shots: int) -> None:
    scroller = page.locator(f"{ACTIVE} .jp-WindowedPanel-outer").first
    for i in range(shots):
        page.screenshot(path=str(out / f"{name}-{i}.png"))
        scroller.evaluate("el => el.scrollBy(0, el.clientHeight * 0.9)")
        page.wait_for_timeout(700)


def report(page: Page, name: str) -> None:
    counts = {
        "widget views": page.locator(f"{ACTIVE} " + ".jupyter-widgets").count(),
        "sliders": page.locator(f"{ACTIVE} " + ".widget-slider").count(),
        "buttons": page.locator(f"{ACTIVE} " + ".jupyter-widgets button").count(),
        "plotly figures": page.locator(f"{ACTIVE} " + ".js-plotly-plot").count(),
        "tables": page.locator(f"{ACTIVE} " + ".jp-RenderedHTMLCommon table").count(),
        "error outputs": page.locator(f"{ACTIVE} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                      has_text="Error").count(),
    }
    print(name, counts, flush=True)


def check(page: Page, url: str, notebook: str, out: Path, timeout: float, shots: int) -> None:
    name = Path(notebook).stem
    # A workspace of its own, reset: only this notebook open, so the menus act on it.
    page.goto(f"{url}/lab/workspaces/check-{name}/tree/{notebook}?reset")
    page.wait_for_selector(f"{ACTIVE} .jp-Notebook", timeout=60_000)
    page.wait_for_selector(f"{ACTIVE} .jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    for dismiss in page.locator(".jp-toast-button", has_text="No").all():
        dismiss.click()  # the "Jupyter news" toast
    menu(page, "Run", "Run All Cells")
    print(f"{name}: ran all cells in {wait_idle(page, timeout):.0f} s", flush=True)
    page.wait_for_timeout(2000)
    report(page, name)
    shoot(page, out, name, shots)
    plots = page.locator(f"{ACTIVE} .js-plotly-plot")
    for i in range(plots.count()):  # every figure on its own, as rendered
        plots.nth(i).scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        plots.nth(i).screenshot(path=str(out / f"{name}-figure-{i}.png"))
    slider = page.locator(f"{ACTIVE} .widget-slider .noUi-handle, {ACTIVE} .widget-slider .ui-slider-handle").first
    button = page.locator(f"{ACTIVE} " + ".jupyter-widgets button").first
    if slider.count():
        slider.scroll_into_view_if_needed()
        slider.click()
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(500)
        readout = page.locator(f"{ACTIVE} .widget-slider .widget-readout").first.inner_text()
        print(f"{name}: slider moved to {readout}", flush=True)
    if button.count():
        button.scroll_into_view_if_needed()
        button.click()
        start = time.time()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / f"{name}-widget-running.png"))
        # The panel disables its button while the action runs (the kernel's status stays "idle" for widget
        # callbacks in the status bar, so that is not a signal).
        while not button.is_enabled() and time.time() - start < timeout:
            page.wait_for_timeout(1000)
        print(f"{name}: pressed '{button.inner_text()}', done in {time.time() - start:.0f} s", flush=True)
        page.wait_for_timeout(2000)
        report(page, name + " after the button")
        page.screenshot(path=str(out / f"{name}-widget.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", help="paths relative to the server's root")
    parser.add_argument("--url", default="http://localhost:8899")
    parser.add_argument("--out", type=Path, default=Path("lab-screenshots"))
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for a run")
    parser.add_argument("--shots", type=int, default=4, help="screenshots per notebook while scrolling")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for notebook in args.notebooks:
            check(page, args.url, notebook, args.out, args.timeout, args.shots)
        browser.close()


if __name__ == "__main__":
    main()
