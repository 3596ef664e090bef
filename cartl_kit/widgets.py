"""Notebook helpers: live plotly curves, a growing trade-off scatter, and slider panels that run configs.

Two modes, chosen once per process by ``headless()``:

- **interactive** (JupyterLab with a front end): figures are plain plotly figures shown through a display
  id and redrawn in place while a run trains (no ``FigureWidget``: a saved notebook keeps each figure's last
  state and reopens with it, no widget model to miss); ``panel(...)`` shows ipywidgets controls whose
  button trains (or loads) the config they describe.
- **headless** (papermill, nbval, plain Python; or ``CARTL_HEADLESS=1``): the same calls build ordinary
  ``go.Figure`` objects that are shown once, when complete, and ``panel(...)`` runs its default values
  once instead of waiting for a click. Nothing ever waits for a widget.

- ``LiveHistory`` — per-epoch training curves; ``TradeoffScatter`` — clean against robust accuracy per run.
- ``LiveRuns`` — both, fed by ``run_row``: ``add(config, label=...)`` runs (or loads) a config, draws its
  curves, keeps its table row and adds its point (the notebooks' "one transfer per setting" loop).
- ``panel(controls, action)`` — controls and a Run button; ``k_slider(arch_or_model, value=)`` — a slider for
  k, the number of fine-tuned blocks, sized to the model's L blocks.

All computation goes through ``cartl_kit.runs`` (a run that exists is loaded at once).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol

import plotly.graph_objects as go

if TYPE_CHECKING:
    from .config import EvalConfig
    from .models import HasBlocks
    from .store import Config

HEADLESS_ENV = "CARTL_HEADLESS"


class _Control(Protocol):
    """What ``panel`` reads of a control: an ipywidgets widget, or anything with a ``value``."""

    value: Any


_PANEL_RUNNING = False  # a panel's button callback is running (its output goes to an ipywidgets Output)


def in_panel() -> bool:
    """Whether a panel's button is running its action. Its outputs are captured by an ipywidgets ``Output``,
    which ignores redraws through a display id (JupyterLab 4, ipywidgets 8): progress there is plain text,
    and a panel shows figures as new outputs (``LiveRuns.snapshot``)."""
    return _PANEL_RUNNING


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


class _LiveFigure:
    """A plotly figure that, in an open notebook, is shown once and redrawn in place on every change.

    It is an ordinary ``go.Figure`` shown through a display id (``IPython.display``), not a
    ``FigureWidget``: a saved notebook holds the figure's last state as plotly's own output, which
    JupyterLab draws again when the notebook is reopened, with no widget model to miss. Headless,
    ``show()`` shows the finished figure once.
    """

    def __init__(self, figure: go.Figure):
        self.figure, self.live, self._handle, self._shown = figure, not headless(), None, False

    def bundle(self) -> dict:
        """The figure as a notebook output: plotly's own mime type (JupyterLab draws it), and a text line.

        Given as a raw bundle because a plotly figure displays itself through its renderers, which ignore
        the display id (each redraw would add an output instead of replacing it).
        """
        import json

        import plotly.io as pio
        title = self.figure.layout.title.text or "figure"
        return {"application/vnd.plotly.v1+json": json.loads(pio.to_json(self.figure, validate=False)),
                "text/plain": f"<plotly figure: {title}>"}

    def redraw(self) -> None:
        if self._handle is not None:
            self._handle.update(self.bundle(), raw=True)

    def show(self) -> None:
        """Live: show the figure (once; later changes redraw it in place). Headless: show it as it is now."""
        if self.live:
            if self._handle is None:
                try:
                    from IPython.display import display
                except ImportError:
                    return
                self._handle = display(self.bundle(), raw=True, display_id=True)
        elif not self._shown:
            self._shown = True
            _show(self.figure)


class LiveHistory(_LiveFigure):
    """Per-epoch curves of a training run: ``callback(record)`` adds a point; live in JupyterLab.

    Example:
        >>> live = LiveHistory(["loss", "train_acc"], title="fine-tuning")
        >>> run(config, callback=live.callback); live.show()
    """

    def __init__(self, metrics: Iterable[str] = ("loss",), *, title: str = "training", name: str | None = None,
                 show: bool = True):
        super().__init__(go.Figure(layout=dict(title=title, xaxis_title="epoch", template="plotly_white")))
        self.metrics = list(metrics)
        if name is not None:
            self.new_run(name)
        if self.live and show:
            self.show()

    def new_run(self, name: str) -> None:
        """Start new curves (one per metric) for another run in the same figure."""
        for metric in self.metrics:
            self.figure.add_scatter(x=[], y=[], mode="lines+markers", name=f"{name} {metric}")
        self.redraw()

    def callback(self, record: Mapping) -> None:
        if not self.figure.data:
            self.new_run("run")
        traces = self.figure.data[-len(self.metrics):]
        for trace, metric in zip(traces, self.metrics):
            if metric in record:
                trace.x = (*trace.x, record["epoch"])
                trace.y = (*trace.y, record[metric])
        # whole epochs on the axis (plotly would tick a two-epoch run at 1.2, 1.4, ...)
        self.figure.update_xaxes(tick0=1, dtick=max(1, math.ceil(record.get("epoch", 1) / 10)))
        self.redraw()


class TradeoffScatter(_LiveFigure):
    """Clean against robust accuracy, one marker per run, growing as runs finish (``add``)."""

    def __init__(self, *, title: str = "Accuracy against robustness", show: bool = True):
        super().__init__(go.Figure(layout=dict(title=title, xaxis_title="robust accuracy (%)",
                                               yaxis_title="clean accuracy (%)", template="plotly_white")))
        self.figure.add_scatter(x=[], y=[], text=[], mode="markers+text", textposition="top center",
                                marker=dict(size=11), name="runs", cliponaxis=False,
                                hovertemplate="%{text}<br>robust %{x:.1f} %<br>clean %{y:.1f} %<extra></extra>")
        if self.live and show:
            self.show()

    def add(self, label: str, clean_acc: float, robust_acc: float) -> None:
        trace = self.figure.data[0]
        trace.x, trace.y, trace.text = (*trace.x, 100 * robust_acc), (*trace.y, 100 * clean_acc), (*trace.text, label)
        self.redraw()


class LiveRuns:
    """Run (or load) configs one after another into live training curves, a table and a trade-off scatter.

    Each ``add(config, label=...)`` is one pass of the notebooks' loop: a new pair of curves in ``curves``
    (drawn while the run trains; a run that is loaded draws its recorded history, see ``run_row``), the run's
    table row (``run_row``, kept in ``rows`` and returned), and its point in ``scatter``, at its robust
    accuracy under ``evaluation``. Both figures are shown when created in JupyterLab and by ``show()``
    headless, as ``LiveHistory`` and ``TradeoffScatter`` are.

    Args:
        evaluation: the headline evaluation of every run (``preset.evaluation``).
        root: the runs folder (``RUNS_DIR``); device: where to train and evaluate (default: the kit's).
        title: the curves' title; scatter_title: the scatter's.
        metrics: the history columns drawn as curves.
        pgd: also evaluate under the paper's PGD-k (the row's ``pgd_acc``), as ``run_row(pgd=True)``.
        progress: progress bars (``run_row``'s default when None); False when the live curves are the progress.
        show: show the figures at once in JupyterLab (False for a panel's board: ``snapshot()`` after each press).

    Example:
        >>> live = LiveRuns(preset.evaluation, root="runs", title="Fine-tuning", pgd=True)
        >>> row = live.add(preset.transfer(preset.source("at"), "tl", k=2), label="k=2"); live.show()
    """

    def __init__(self, evaluation: EvalConfig, *, root: str | os.PathLike | None = None, device: Any = None,
                 title: str = "Fine-tuning", scatter_title: str = "Accuracy against robustness",
                 metrics: Iterable[str] = ("loss", "train_acc"), pgd: bool = False, progress: bool | None = None,
                 show: bool = True):
        self.evaluation, self.root, self.device, self.pgd, self.progress = evaluation, root, device, pgd, progress
        self.curves = LiveHistory(metrics, title=title, show=show)
        self.scatter = TradeoffScatter(title=scatter_title, show=show)
        self.rows: list[dict] = []
        self._added: list[Config] = []  # configs already drawn (compared by value)

    def add(self, config: Config, *, label: str, with_curves: bool = True, **extra: Any) -> dict:
        """Run or load ``config``, evaluate it, and add it to the curves, ``rows`` and the scatter; return its row.

        ``extra`` columns are added to the row (as ``run_row``'s). ``with_curves=False`` leaves the curves
        alone. A config added before (an equal config) is not drawn twice: its row is returned, no
        second curve, row or point is kept.
        """
        from .experiments import run_row
        new = config not in self._added
        if with_curves and new:
            self.curves.new_run(label)
        row = run_row(config, self.evaluation, root=self.root, device=self.device,
                      callback=self.curves.callback if with_curves and new else None, progress=self.progress,
                      pgd=self.pgd, label=label, **extra)
        if new:
            self._added.append(config)
            self.rows.append(row)
            self.scatter.add(label, row["clean_acc"], row["robust_acc"])
        return row

    def snapshot(self) -> None:
        """Show both figures as they are now, as new outputs (what a panel shows after each press)."""
        _show(go.Figure(self.curves.figure))
        _show(go.Figure(self.scatter.figure))

    def show(self) -> None:
        """Show the curves and the scatter (headless: their finished static figures; live: already shown)."""
        self.curves.show()
        self.scatter.show()


def k_slider(arch_or_model: str | HasBlocks, *, value: int, description: str = "k") -> Any:
    """An ipywidgets ``IntSlider`` for k, the number of fine-tuned blocks, from 1 to the model's L blocks.

    Args:
        arch_or_model: an architecture name of ``cartl_kit.models.ARCHITECTURES`` (L from its spec; no model
            is built) or a model with ``num_blocks``.
        value: the slider's start value; outside 1..L it raises ``ValueError`` rather than being clamped.
        description: the slider's label.

    Example:
        >>> panel({"k": k_slider(preset.arch, value=4)}, fine_tune)
    """
    from .models import ARCHITECTURES, check_k
    if isinstance(arch_or_model, str):
        from .config import check_arch_k
        if arch_or_model not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch_or_model!r}; choose one of {', '.join(ARCHITECTURES)}")
        check_arch_k(arch_or_model, value)  # the kit's one k check for an architecture name
        num_blocks = ARCHITECTURES[arch_or_model].num_blocks
    else:
        num_blocks = check_k(arch_or_model, value)  # ... and for a model
    import ipywidgets as w
    return w.IntSlider(value=value, min=1, max=num_blocks, description=description)


def panel(controls: Mapping[str, _Control], action: Callable[..., object], *, button: str = "Run") -> object:
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
        global _PANEL_RUNNING
        run_button.disabled = True
        _PANEL_RUNNING = True
        try:
            with out:
                out.clear_output(wait=True)
                result = action(**{name: widget.value for name, widget in controls.items()})
                if result is not None:
                    _show(result)
        finally:
            _PANEL_RUNNING = False
            run_button.disabled = False

    run_button.on_click(clicked)
    _show(w.VBox([*controls.values(), run_button, out]))
    return None
