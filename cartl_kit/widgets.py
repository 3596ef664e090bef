"""Notebook helpers: live plotly curves, a growing trade-off scatter, and slider panels that run configs.

Two modes, chosen once per process by ``headless()``:

- **interactive** (JupyterLab with a front end): figures are ``plotly.graph_objects.FigureWidget`` objects
  that update in place while a run trains; ``panel(...)`` shows ipywidgets controls whose button trains
  (or loads) the config they describe.
- **headless** (papermill, nbval, plain Python; or ``CARTL_HEADLESS=1``): the same calls build ordinary
  ``go.Figure`` objects that are shown once, when complete, and ``panel(...)`` runs its default values
  once instead of waiting for a click. Nothing ever waits for a widget.

All computation goes through ``cartl_kit.runs`` (a run that exists is loaded at once).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Callable, Iterable, Mapping

import plotly.graph_objects as go

HEADLESS_ENV = "CARTL_HEADLESS"


def headless() -> bool:
    """True unless running in a Jupyter kernel that a Jupyter server started for an open notebook.

    JupyterLab's server gives such kernels ``JPY_SESSION_NAME``; papermill, nbval and plain Python do not,
    so they get static figures. ``CARTL_HEADLESS=1`` forces headless mode, ``CARTL_HEADLESS=0`` interactive.
    """
    forced = os.environ.get(HEADLESS_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return not (_in_kernel() and "JPY_SESSION_NAME" in os.environ)


def watched() -> bool:
    """Whether progress bars are worth drawing: in a terminal or an open notebook, not in a kernel that
    nobody watches (papermill, nbval), where each bar update is only another message to store."""
    return not (_in_kernel() and headless())


def _in_kernel() -> bool:
    """Running inside a Jupyter kernel (IPython's ZMQ shell)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return type(get_ipython()).__name__ == "ZMQInteractiveShell"


def _show(obj) -> None:
    try:
        from IPython.display import display
        display(obj)
    except ImportError:  # plain Python: nothing to draw on
        pass


class LiveHistory:
    """Per-epoch curves of a training run: ``callback(record)`` adds a point; live in JupyterLab.

    Example:
        >>> live = LiveHistory(["loss", "train_acc"], title="fine-tuning")
        >>> run(config, callback=live.callback); live.show()
    """

    def __init__(self, metrics: Iterable[str] = ("loss",), *, title: str = "training", name: str | None = None):
        self.metrics, self.live = list(metrics), not headless()
        base = go.Figure(layout=dict(title=title, xaxis_title="epoch", template="plotly_white"))
        self.figure = go.FigureWidget(base) if self.live else base
        self._shown = False
        if name is not None:
            self.new_run(name)
        if self.live:
            self.show()

    def new_run(self, name: str) -> None:
        """Start new curves (one per metric) for another run in the same figure."""
        for metric in self.metrics:
            self.figure.add_scatter(x=[], y=[], mode="lines+markers", name=f"{name} {metric}")

    def callback(self, record: Mapping) -> None:
        if not self.figure.data:
            self.new_run("run")
        traces = self.figure.data[-len(self.metrics):]
        with self.figure.batch_update() if self.live else nullcontext():
            for trace, metric in zip(traces, self.metrics):
                if metric in record:
                    trace.x = (*trace.x, record["epoch"])
                    trace.y = (*trace.y, record[metric])

    def show(self) -> None:
        if not self._shown:
            self._shown = True
            _show(self.figure)


class TradeoffScatter:
    """Clean against robust accuracy, one marker per run, growing as runs finish (``add``)."""

    def __init__(self, *, title: str = "Accuracy against robustness"):
        self.live = not headless()
        base = go.Figure(layout=dict(title=title, xaxis_title="robust accuracy (%)", yaxis_title="clean accuracy (%)",
                                     template="plotly_white"))
        self.figure = go.FigureWidget(base) if self.live else base
        self.figure.add_scatter(x=[], y=[], text=[], mode="markers+text", textposition="top center",
                                marker=dict(size=11), name="runs", cliponaxis=False,
                                hovertemplate="%{text}<br>robust %{x:.1f} %<br>clean %{y:.1f} %<extra></extra>")
        if self.live:
            _show(self.figure)

    def add(self, label: str, clean_acc: float, robust_acc: float) -> None:
        trace = self.figure.data[0]
        with self.figure.batch_update() if self.live else nullcontext():  # one message: points and labels together
            trace.x, trace.y, trace.text = (*trace.x, 100 * robust_acc), (*trace.y, 100 * clean_acc), (*trace.text, label)

    def show(self) -> None:
        if not self.live:
            _show(self.figure)


def panel(controls: Mapping[str, object], action: Callable[..., object], *, button: str = "Run") -> object:
    """ipywidgets controls (name -> widget) and a button that calls ``action(**values)``.

    Headless, ``action`` runs once with the controls' current values (their defaults) and its
    result is returned; interactive, the panel is displayed and the result of each click is shown in
    its output area.
    """
    values = {name: widget.value for name, widget in controls.items()}
    if headless():
        return action(**values)
    import ipywidgets as w
    out = w.Output()
    run_button = w.Button(description=button, button_style="primary")

    def clicked(_):
        run_button.disabled = True
        try:
            with out:
                out.clear_output(wait=True)
                result = action(**{name: widget.value for name, widget in controls.items()})
                if result is not None:
                    _show(result)
        finally:
            run_button.disabled = False

    run_button.on_click(clicked)
    _show(w.VBox([*controls.values(), run_button, out]))
    return None
