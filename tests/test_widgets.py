"""Interactive and headless behaviour of cartl_kit.widgets, without a front end."""

from __future__ import annotations

import types

import plotly.graph_objects as go
import pytest

from cartl_kit import widgets


class ZMQInteractiveShell:  # the name IPython's kernel shell has; only the name is looked at
    pass


@pytest.fixture
def kernel(monkeypatch):
    """Pretend to run inside a Jupyter kernel; returns a function that sets whether a server opened it."""
    import IPython
    monkeypatch.setattr(IPython, "get_ipython", lambda: ZMQInteractiveShell())
    monkeypatch.delenv(widgets.HEADLESS_ENV, raising=False)

    def opened_by_a_server(yes: bool) -> None:
        if yes:
            monkeypatch.setenv("JPY_SESSION_NAME", "/notebooks/00_quickstart.ipynb")
        else:
            monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    return opened_by_a_server


def test_plain_python_is_headless_but_watched(monkeypatch):
    monkeypatch.delenv(widgets.HEADLESS_ENV, raising=False)
    assert widgets.headless() and widgets.watched()  # a terminal: static figures, progress bars


def test_a_kernel_nobody_opened_is_headless_and_unwatched(kernel):
    kernel(False)  # papermill, nbval
    assert widgets.headless() and not widgets.watched()


def test_a_notebook_open_in_jupyterlab_is_interactive_and_watched(kernel):
    kernel(True)
    assert not widgets.headless() and widgets.watched()


def test_the_environment_variable_overrides(kernel, monkeypatch):
    kernel(True)
    monkeypatch.setenv(widgets.HEADLESS_ENV, "1")
    assert widgets.headless() and not widgets.watched()
    kernel(False)
    monkeypatch.setenv(widgets.HEADLESS_ENV, "0")
    assert not widgets.headless() and widgets.watched()


def test_headless_panel_runs_its_action_once_with_the_defaults(monkeypatch):
    monkeypatch.setenv(widgets.HEADLESS_ENV, "1")
    calls = []
    controls = {"beta": types.SimpleNamespace(value=0.6), "k": types.SimpleNamespace(value=4)}
    result = widgets.panel(controls, lambda beta, k: calls.append((beta, k)) or f"β={beta}, k={k}")
    assert calls == [(0.6, 4)] and result == "β=0.6, k=4"


def test_interactive_panel_runs_the_action_on_click_with_the_current_values(monkeypatch):
    import ipywidgets
    monkeypatch.setenv(widgets.HEADLESS_ENV, "0")
    shown = []
    monkeypatch.setattr(widgets, "_show", shown.append)
    slider = ipywidgets.FloatSlider(value=0.6, min=0.2, max=2.0, step=0.1)
    calls = []
    assert widgets.panel({"beta": slider}, lambda beta: calls.append(beta)) is None
    assert calls == [], "an interactive panel waits for a click"
    box = shown[0]
    button = next(child for child in box.children if isinstance(child, ipywidgets.Button))
    slider.value = 1.0
    button.click()
    assert calls == [1.0] and not button.disabled


def test_live_history_headless_collects_points_into_a_static_figure(monkeypatch):
    monkeypatch.setenv(widgets.HEADLESS_ENV, "1")
    live = widgets.LiveHistory(["loss", "train_acc"], title="t")
    live.new_run("vanilla")
    for epoch in (1, 2, 3):
        live.callback({"epoch": epoch, "loss": 1 / epoch, "train_acc": 0.5 + epoch / 10})
    live.new_run("NEFT")
    live.callback({"epoch": 1, "loss": 2.0})
    assert type(live.figure) is go.Figure
    names = [t.name for t in live.figure.data]
    assert names == ["vanilla loss", "vanilla train_acc", "NEFT loss", "NEFT train_acc"]
    assert list(live.figure.data[0].x) == [1, 2, 3] and list(live.figure.data[1].y) == [0.6, 0.7, 0.8]
    assert list(live.figure.data[2].y) == [2.0] and list(live.figure.data[3].y) == []


def test_live_history_in_jupyterlab_is_a_figure_widget_shown_at_once(monkeypatch):
    monkeypatch.setenv(widgets.HEADLESS_ENV, "0")
    shown = []
    monkeypatch.setattr(widgets, "_show", shown.append)
    live = widgets.LiveHistory(["loss"], name="run")
    assert isinstance(live.figure, go.FigureWidget) and shown == [live.figure]
    live.callback({"epoch": 1, "loss": 0.5})
    live.show()
    assert shown == [live.figure], "shown once, then updated in place"
    assert list(live.figure.data[0].y) == [0.5]


def test_tradeoff_scatter_adds_percent_points(monkeypatch):
    monkeypatch.setenv(widgets.HEADLESS_ENV, "1")
    scatter = widgets.TradeoffScatter()
    scatter.add("vanilla", 0.992, 0.478)
    scatter.add("CARTL", 0.98, 0.608)
    trace = scatter.figure.data[0]
    assert list(trace.text) == ["vanilla", "CARTL"]
    assert list(trace.x) == pytest.approx([47.8, 60.8]) and list(trace.y) == pytest.approx([99.2, 98.0])
