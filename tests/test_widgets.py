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
    assert live.figure.layout.xaxis.dtick == 1, "whole epochs on the axis"


class _Handles:
    """Stands in for IPython's display(obj, display_id=True): records what is shown and each redraw."""

    def __init__(self):
        self.shown, self.updates = [], []

    def display(self, obj, display_id=False, raw=False):
        import copy
        self.shown.append(copy.deepcopy(obj))
        handles = self

        class Handle:
            def update(self, new, raw=False):
                handles.updates.append(copy.deepcopy(new))
        return Handle()


def test_live_history_in_jupyterlab_is_a_plain_figure_redrawn_in_place(monkeypatch):
    import IPython.display
    monkeypatch.setenv(widgets.HEADLESS_ENV, "0")
    handles = _Handles()
    monkeypatch.setattr(IPython.display, "display", handles.display)
    live = widgets.LiveHistory(["loss"], name="run")
    assert type(live.figure) is go.Figure, "no FigureWidget: a saved notebook keeps no widget model"
    assert len(handles.shown) == 1
    live.callback({"epoch": 1, "loss": 0.5})
    live.callback({"epoch": 2, "loss": 0.25})
    live.show()
    assert len(handles.shown) == 1, "shown once, then redrawn in place"
    plotly = "application/vnd.plotly.v1+json"
    assert set(handles.shown[0]) == {plotly, "text/plain"}, "a raw bundle: a figure displayed as itself ignores the id"
    assert list(handles.updates[-1][plotly]["data"][0]["y"]) == [0.5, 0.25], "the last redraw holds every point so far"
    scatter = widgets.TradeoffScatter()
    scatter.add("NEFT", 0.9, 0.4)
    assert len(handles.shown) == 2 and list(handles.updates[-1][plotly]["data"][0]["text"]) == ["NEFT"]


def test_progress_in_jupyterlab_is_an_html_line_not_a_widget(monkeypatch):
    import IPython.display
    from cartl_kit import progress
    monkeypatch.setenv(widgets.HEADLESS_ENV, "0")
    monkeypatch.setattr(progress, "REFRESH_SECONDS", 0.0)
    handles = _Handles()
    monkeypatch.setattr(IPython.display, "display", handles.display)
    line = progress.bar(range(3), total=3, desc="epoch 1/2")
    line.set_postfix({"loss": "0.500"})
    assert list(line) == [0, 1, 2]
    drawn = [h.data for h in handles.shown + handles.updates]
    assert all(isinstance(h, IPython.display.HTML) for h in handles.shown + handles.updates)
    assert "epoch 1/2" in drawn[0] and "0/3" in drawn[0] and any("3/3" in d and "loss 0.500" in d for d in drawn)
    assert drawn[-1] == "", "a finished bar is emptied, as tqdm removes its own (leave=False)"
    monkeypatch.setattr(widgets, "_PANEL_RUNNING", True)
    assert type(progress.bar(range(2))).__name__ == "tqdm", "in a panel's Output (which ignores redraws): text"
    monkeypatch.setattr(widgets, "_PANEL_RUNNING", False)
    monkeypatch.setenv(widgets.HEADLESS_ENV, "1")
    assert type(progress.bar(range(2))).__name__ == "tqdm", "headless or in a terminal: tqdm's text bar"


def test_an_evaluation_bar_shows_each_attack_and_its_step(monkeypatch):
    """One batch of the ensemble takes long: its bar names the attack running and its step, not only 0/1."""
    import IPython.display
    import torch
    from cartl_kit import progress
    from cartl_kit.ensemble import EnsembleConfig, ensemble_accuracy
    monkeypatch.setenv(widgets.HEADLESS_ENV, "0")
    monkeypatch.setattr(progress, "REFRESH_SECONDS", 0.0)
    handles = _Handles()
    monkeypatch.setattr(IPython.display, "display", handles.display)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    x = torch.rand(8, 1, 4, 4)
    y = model(x).argmax(1)  # all correct clean: every attack runs
    config = EnsembleConfig(guard_steps=3, guard_restarts=1, apgd_ce_steps=4, apgd_t_steps=2, n_targets=1)
    ensemble_accuracy(model, [(x, y)], eps=0.001, config=config, device="cpu")  # too small to break all
    drawn = " ".join(h.data for h in handles.shown + handles.updates)
    assert "PGD step 3/3" in drawn and "APGD-CE step 4/4" in drawn and "APGD-T step 2/2" in drawn, drawn
    assert not progress._LISTENERS, "the bar stops listening when the evaluation ends"
    progress.attack_step("PGD", 1, 1)  # outside an evaluation: no bar, nothing drawn, no error


def test_tradeoff_scatter_adds_percent_points(monkeypatch):
    monkeypatch.setenv(widgets.HEADLESS_ENV, "1")
    scatter = widgets.TradeoffScatter()
    scatter.add("vanilla", 0.992, 0.478)
    scatter.add("CARTL", 0.98, 0.608)
    trace = scatter.figure.data[0]
    assert list(trace.text) == ["vanilla", "CARTL"]
    assert list(trace.x) == pytest.approx([47.8, 60.8]) and list(trace.y) == pytest.approx([99.2, 98.0])


def test_k_slider_spans_the_blocks_of_the_architecture_or_the_model():
    import ipywidgets
    from cartl_kit.models import ARCHITECTURES
    slider = widgets.k_slider("wrn16_1", value=4)
    assert isinstance(slider, ipywidgets.IntSlider) and (slider.min, slider.max, slider.value) == (1, 8, 4)
    assert widgets.k_slider("wrn34_10", value=4).max == ARCHITECTURES["wrn34_10"].num_blocks == 17
    assert widgets.k_slider(types.SimpleNamespace(num_blocks=5), value=5).max == 5
    with pytest.raises(ValueError, match=r"k must be an integer in 1\.\.8"):
        widgets.k_slider("wrn16_1", value=9)  # refused, not clamped to 8
    with pytest.raises(ValueError, match="unknown architecture"):
        widgets.k_slider("resnet18", value=1)


@pytest.fixture
def fake_run_row(monkeypatch):
    """Replace run_row by one that 'trains' two epochs through the callback; returns the calls it received."""
    from cartl_kit import experiments
    calls = []

    def run_row(config, evaluation, *, callback=None, **kwargs):
        calls.append({"config": config, "evaluation": evaluation, "callback": callback, **kwargs})
        for epoch in (1, 2):
            if callback is not None:
                callback({"epoch": epoch, "loss": config / epoch, "train_acc": 0.5})
        return {"run": f"run-{config}", "clean_acc": 0.9, "robust_acc": config / 10, **{
            k: v for k, v in kwargs.items() if k not in ("root", "device", "progress", "pgd")}}
    monkeypatch.setattr(experiments, "run_row", run_row)
    return calls


def test_live_runs_draws_curves_keeps_rows_and_adds_points(monkeypatch, fake_run_row):
    monkeypatch.setenv(widgets.HEADLESS_ENV, "1")
    live = widgets.LiveRuns("the evaluation", root="runs", device="cpu", title="t", pgd=True, progress=False)
    first = live.add(1, label="a", method_name="x")
    live.add(3, label="b")
    assert first == {"run": "run-1", "clean_acc": 0.9, "robust_acc": 0.1, "label": "a", "method_name": "x"}
    assert [r["label"] for r in live.rows] == ["a", "b"]
    assert all(c["evaluation"] == "the evaluation" and c["root"] == "runs" and c["device"] == "cpu" and c["pgd"]
               and c["progress"] is False for c in fake_run_row)
    assert [t.name for t in live.curves.figure.data] == ["a loss", "a train_acc", "b loss", "b train_acc"]
    assert list(live.curves.figure.data[2].y) == [3.0, 1.5], "each run's records go to its own curves"
    points = live.scatter.figure.data[0]
    assert list(points.text) == ["a", "b"] and list(points.x) == pytest.approx([10, 30])


def test_live_runs_adds_a_run_once_and_can_leave_the_curves_alone(monkeypatch, fake_run_row):
    monkeypatch.setenv(widgets.HEADLESS_ENV, "1")
    live = widgets.LiveRuns("the evaluation")
    live.add(1, label="a")
    again = live.add(1, label="a again", with_curves=False)  # a panel re-running a config of the loop
    live.add(2, label="c", with_curves=False)
    assert again["label"] == "a again" and fake_run_row[1]["callback"] is None
    assert [r["label"] for r in live.rows] == ["a", "c"] and list(live.scatter.figure.data[0].text) == ["a", "c"]
    assert len(live.curves.figure.data) == 2, "only the first run drew curves"


def test_live_runs_draws_a_loaded_run_as_it_drew_it_training(monkeypatch, tmp_path):
    """The smoke preset for real (about 10 s): a transfer trained with live curves, then loaded into a new board."""
    from cartl_kit.config import get_preset
    monkeypatch.setenv(widgets.HEADLESS_ENV, "1")
    preset = get_preset("smoke")
    config = preset.transfer(preset.source("at"), "tl", k=2)
    trained, loaded = (widgets.LiveRuns(preset.evaluation, root=tmp_path, device="cpu", pgd=True, progress=False)
                       for _ in range(2))
    row = trained.add(config, label="k=2")
    assert loaded.add(config, label="k=2") == row and loaded.rows == [row] and "pgd_acc" in row
    curves = [(t.name, list(t.x), list(t.y)) for t in trained.curves.figure.data]
    assert curves == [(t.name, list(t.x), list(t.y)) for t in loaded.curves.figure.data]
    assert [name for name, _, _ in curves] == ["k=2 loss", "k=2 train_acc"] and curves[0][1] == [1]
    assert list(loaded.scatter.figure.data[0].x) == pytest.approx([100 * row["robust_acc"]])
