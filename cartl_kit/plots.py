"""Plotly figure builders and the self-contained HTML report (headless: nothing here needs a browser).

Every builder takes plain values (a DataFrame of runs, a list of history records) and returns a
``plotly.graph_objects.Figure``; notebooks show it, ``write_report`` embeds it in one HTML file that
carries plotly.js inline, so the report opens offline.

- ``tradeoff_figure(table)`` — clean accuracy against robust accuracy, one marker per run (the paper's
  accuracy/robustness trade-off; up and to the right is better).
- ``history_figure(histories, metric)`` — a per-epoch training curve for each run.
- ``adversarial_examples_figure(x, x_adv, labels, clean_pred, adv_pred, eps=)`` — clean images, their
  perturbations and the adversarial images with the predictions on both (§2 of the paper: L∞ adversarial
  examples; notebook 01).
- ``percent_table(table, columns)`` — accuracies in percent, for display.
- ``write_report(path, title=, tables=, figures=, notes=)`` — the HTML report, written atomically.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

if TYPE_CHECKING:
    import torch

PERCENT_COLUMNS = ("clean_acc", "robust_acc", "pgd_acc")
INTEGER_COLUMNS = ("k", "seed", "epochs")


def tradeoff_figure(table, *, label: str = "label", color: str | None = "method",
                    title: str = "Accuracy against robustness on the target task") -> go.Figure:
    """Clean accuracy (y) against robust accuracy (x), in percent, one marker per row of ``table``.

    ``table`` needs ``clean_acc`` and ``robust_acc`` (fractions) and a ``label`` column for the marker text;
    rows are grouped into traces by ``color`` when that column exists.
    """
    missing = [c for c in ("clean_acc", "robust_acc", label) if c not in table.columns]
    if missing:
        raise ValueError(f"tradeoff_figure needs the column(s) {', '.join(missing)}")
    fig = go.Figure()
    groups = table.groupby(color, sort=False) if color and color in table.columns else [(None, table)]
    for name, rows in groups:
        fig.add_trace(go.Scatter(
            x=100 * rows["robust_acc"], y=100 * rows["clean_acc"], mode="markers+text", name=str(name or "runs"),
            text=rows[label], textposition="top center", marker=dict(size=12), cliponaxis=False,
            hovertemplate="%{text}<br>robust %{x:.1f} %<br>clean %{y:.1f} %<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="robust accuracy (%)", yaxis_title="clean accuracy (%)",
                      template="plotly_white", legend_title_text=color or "")
    return fig


def history_figure(histories: Mapping[str, list[dict]], metric: str = "loss", *,
                   title: str | None = None) -> go.Figure:
    """One line per run of ``metric`` against epoch (records as written by ``fit``'s callback)."""
    fig = go.Figure()
    for name, records in histories.items():
        points = [(r["epoch"], r[metric]) for r in records if metric in r]
        if points:
            epochs, values = zip(*points)
            fig.add_trace(go.Scatter(x=list(epochs), y=list(values), mode="lines+markers", name=name))
    fig.update_layout(title=title or f"{metric} per epoch", xaxis_title="epoch", yaxis_title=metric,
                      template="plotly_white")
    return fig


def _numpy(values: Any) -> np.ndarray:
    """A tensor (any device, with or without grad) or an array-like as a numpy array."""
    return values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)


def _image_trace(image: np.ndarray) -> go.Heatmap | go.Image:
    """One (C, H, W) image in [0, 1]: a grey heatmap for one channel, an RGB image for three."""
    if image.shape[0] == 1:
        return go.Heatmap(z=image[0], colorscale="gray", zmin=0, zmax=1, showscale=False,
                          hovertemplate="%{z:.2f}<extra></extra>")
    return go.Image(z=255 * image.transpose(1, 2, 0), hovertemplate="%{z}<extra></extra>")  # (H, W, 3)


def adversarial_examples_figure(x: torch.Tensor | np.ndarray, x_adv: torch.Tensor | np.ndarray,
                                labels: torch.Tensor | Sequence[int], clean_pred: torch.Tensor | Sequence[int],
                                adv_pred: torch.Tensor | Sequence[int], *, eps: float,
                                classes: Sequence[object] | None = None, attack: str = "PGD",
                                model: str | None = None) -> go.Figure:
    """Clean images, their perturbations and the adversarial images, one column per example.

    Row 1: the clean image, titled with its true class and the prediction on it; row 2: the perturbation
    x′ − x (red +, blue −, colour scale ±``eps``; for colour images the channel that changed most at each
    pixel); row 3: the adversarial image, titled with the prediction on it. ✗ marks a wrong prediction, and
    the figure's title counts the examples still classified correctly after the attack.

    Args:
        x: clean images in [0, 1].
        x_adv: their adversarial images (pixel space, within ``eps`` of ``x``).
        labels: the true classes; clean_pred, adv_pred: the model's predictions on ``x`` and on ``x_adv``.
        eps: the attack's L∞ radius in pixel units: the range of the perturbation's colour scale.
        classes: class names, indexed by class (default: the class numbers).
        attack: the attack's name for the title (e.g. ``"PGD-20"``); model: the attacked model's name.

    Returns:
        A 3 × N grid of subplots: heatmaps for one-channel images, RGB images for three channels.

    Shape:
        x, x_adv: (N, C, H, W) with C = 1 or 3; labels, clean_pred, adv_pred: (N,).

    Example:
        >>> adversarial_examples_figure(x, x_adv, y, model(x).argmax(1), model(x_adv).argmax(1), eps=0.3).show()
    """
    images, adversarial = _numpy(x).astype(float), _numpy(x_adv).astype(float)
    if images.ndim != 4 or images.shape != adversarial.shape or images.shape[1] not in (1, 3):
        raise ValueError(f"x and x_adv must both be (N, C, H, W) with C = 1 or 3, got {images.shape} and {adversarial.shape}")
    truth, clean, adv = (_numpy(v).astype(int).tolist() for v in (labels, clean_pred, adv_pred))
    n = len(images)
    if not len(truth) == len(clean) == len(adv) == n:
        raise ValueError(f"labels and predictions must have one entry per image ({n})")
    name = (lambda c: str(classes[c])) if classes is not None else str

    def said(pred: int, true: int) -> str:
        return name(pred) + ("" if pred == true else " ✗")

    titles = ([f"y={name(t)} pred {said(p, t)}" for p, t in zip(clean, truth)] + [""] * n
              + [f"x′ pred {said(p, t)}" for p, t in zip(adv, truth)])
    fig = make_subplots(rows=3, cols=n, subplot_titles=titles, horizontal_spacing=0.01, vertical_spacing=0.06)
    delta = adversarial - images  # (N, C, H, W)
    largest = np.take_along_axis(delta, np.abs(delta).argmax(1)[:, None], axis=1)[:, 0]  # (N, H, W)
    for i in range(n):
        fig.add_trace(_image_trace(images[i]), row=1, col=i + 1)
        fig.add_trace(go.Heatmap(z=largest[i], colorscale="RdBu_r", zmin=-eps, zmax=eps, showscale=False,
                                 hovertemplate="%{z:.2f}<extra></extra>"), row=2, col=i + 1)
        fig.add_trace(_image_trace(adversarial[i]), row=3, col=i + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    fig.update_annotations(font_size=10)
    still = sum(p == t for p, t in zip(adv, truth))
    against = f"the {model} model" if model else "the model"
    fig.update_layout(title=f"{attack} at ε = {eps:g} against {against}: {still}/{n} still correct",
                      height=430, width=20 + 110 * n, margin=dict(l=10, r=10, t=70, b=10), template="plotly_white")
    return fig


def percent_table(table, columns: Iterable[str] | None = None, *, headline: str | None = None, pgd: str = "PGD",
                  missing: str | None = "–"):
    """A copy of ``table`` (optionally only ``columns``) with accuracies as percent (1 decimal), for display.

    ``headline`` names the attack of ``robust_acc`` in its column ("robust % (ensemble)"); ``pgd`` that of
    ``pgd_acc`` (e.g. "PGD-20"). Missing columns among ``columns`` are left out. Whole-number columns
    (``k``, ``seed``) print as integers, and a value a row does not have (vanilla's λ and β) as ``missing``
    (None: left as NaN).
    """
    shown = table[[c for c in columns if c in table.columns]].copy() if columns is not None else table.copy()
    for column in PERCENT_COLUMNS:
        if column in shown.columns:
            shown[column] = (100 * shown[column].astype(float)).round(1)
    for column in INTEGER_COLUMNS:
        if column in shown.columns and shown[column].dtype.kind == "f" and \
                shown[column].dropna().map(float.is_integer).all():
            shown[column] = shown[column].astype("Int64")
    if missing is not None:
        for column in shown.columns:
            if shown[column].isna().any():
                shown[column] = shown[column].astype(object).where(shown[column].notna(), missing)
    robust = f"robust % ({headline})" if headline else "robust %"
    return shown.rename(columns={"clean_acc": "clean %", "robust_acc": robust, "pgd_acc": f"{pgd} %"})


def _table_html(table) -> str:
    return percent_table(table).to_html(index=False, na_rep="", border=0, classes="runs")


def write_report(path: str | os.PathLike, *, title: str, tables: Mapping[str, object] | None = None,
                 figures: Iterable[go.Figure] = (), notes: Iterable[str] = ()) -> Path:
    """Write a self-contained HTML report (plotly.js inline; opens without a network) and return its path.

    ``tables`` maps a heading to a DataFrame (``clean_acc``/``robust_acc`` are shown in percent).

    The file is written to a temporary name and renamed, so a report is either complete or absent.
    """
    path = Path(path)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(note)}</p>" for note in notes]
    for heading, table in (tables or {}).items():
        parts += [f"<h2>{html.escape(heading)}</h2>", _table_html(table)]
    for index, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=index == 0, default_width="100%",
                                 default_height="520px"))
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
            "table.runs{border-collapse:collapse;margin:1em 0}"
            "table.runs td,table.runs th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}"
            "</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    from .store import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)

    atomic_write(path, write)
    return path
