"""Measurements on trained models for the notebooks: how far PGD moves the FDM feature (CARTL §4.1).

FDM trains the source model so that the feature entering the first fine-tuned block, f^(L-k), moves
little when the input is attacked: λ/√d · Σ_i ‖f^(L-k)(x'_i) − f^(L-k)(x_i)‖₂ is added to the
adversarial loss (reference spec §4). ``feature_distances`` measures exactly that per-example quantity,
‖f(x) − f(x')‖₂ / √d, on any model and data, so an AT teacher and an FDM teacher can be compared on the
same test images; ``feature_norms`` gives the clean feature's own size, to tell a smaller movement from
a smaller feature; ``distance_table`` and ``distance_figure`` summarise and draw the result.

On one batch, ``fdm_loss(f(x), f(x'), lam=λ) == λ · feature_distances(...).sum()`` (the reference's
batch sum), when both use the same adversarial examples x' and the same BatchNorm mode.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import torch

from .attacks import AttackConfig, pgd_linf
from .data import sample
from .images import ImageData
from .loaders import make_loader
from .models import WideResNet


def _batches(data, batch_size: int, max_examples: int | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches from an ImageData, a loader (iterable of batches) or a single (x, y) pair.

    An ImageData with ``max_examples`` is cut to a seeded random subset (``data.sample``): test splits
    are ordered by class, so their first n images would be mostly of the first classes."""
    if isinstance(data, ImageData):
        if max_examples is not None:
            data = sample(data, max_examples)
        return make_loader(data, batch_size=batch_size, shuffle=False, augment=False)
    if (isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
            and data[0].dim() == 4):
        x, y = data
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    return data


def _per_example(model: WideResNet, data, *, k: int, max_examples: int | None, batch_size: int,
                 measure: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """``measure(x, y, split)`` -> (B,) over the first ``max_examples`` examples, concatenated on the CPU."""
    if model.training:
        raise ValueError("the FDM feature is measured on a trained model: put it in eval mode first (model.eval())")
    split = model.split_index(k)
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be at least 1 (or None for all), got {max_examples}")
    device = next(model.parameters()).device
    values, seen = [], 0
    for x, y in _batches(data, batch_size, max_examples):
        if max_examples is not None:
            x, y = x[: max_examples - seen], y[: max_examples - seen]
        if len(y) == 0:
            break
        values.append(measure(x.to(device), y.to(device), split).float().cpu())
        seen += len(y)
        if max_examples is not None and seen >= max_examples:
            break
    if not values:
        raise ValueError("no examples to measure: the data is empty")
    return torch.cat(values)


def _rms(features: torch.Tensor) -> torch.Tensor:
    flat = features.flatten(1)  # (B, d)
    return torch.linalg.vector_norm(flat, dim=1) / math.sqrt(flat.shape[1])  # (B,)


def feature_distances(
    model: WideResNet,
    data,
    *,
    k: int,
    attack: AttackConfig | None = AttackConfig(),
    max_examples: int | None = None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-example ‖f(x) − f(x′)‖₂ / √d at CARTL's FDM feature f = ``model.forward_features(·, upto=L-k)``.

    x′ is a PGD example crafted against the model's own logits (the attack FDM training uses), d the
    number of elements of one example's feature (C·H·W). The division by √d makes the value a
    root-mean-square change per feature element, comparable across k and architectures. The model
    must be in eval mode (BatchNorm uses its running statistics); it is neither moved nor switched,
    and batches go to the device of its parameters.

    Args:
        model: a WideResNet in eval mode (e.g. ``cartl_kit.runs.run(config).model``).
        data: an ``ImageData`` split, a loader of ``(x, y)`` batches with x in [0, 1], or one ``(x, y)`` pair.
        k: fine-tuning depth; the feature is the input of block L−k+1.
        attack: the PGD attack that crafts x′, e.g. ``preset.train_attack`` (default: the reference's
            PGD-7, eps 8/255, step 2/255); ``steps=0`` makes x′ the random start (or x without one);
            ``None`` means no attack (x′ = x, every distance 0).
        max_examples: use only n examples (default: all): a seeded random subset of an ImageData, the
            first n of a loader or an (x, y) pair.
        batch_size: examples per forward pass when ``data`` is an ImageData or an (x, y) pair.
        generator: ``torch.Generator`` for PGD's random starts (reproducible distances).

    Returns:
        A float32 CPU tensor with one distance per example, in data order.

    Shape:
        data with n examples -> (min(n, max_examples),)

    Example:
        >>> feature_distances(teacher, load_dataset("mnist5k[0-4]", split="test"), k=4, attack=preset.train_attack, max_examples=300)
    """
    if attack is not None and not isinstance(attack, AttackConfig):
        raise ValueError(f"attack must be an AttackConfig (e.g. preset.train_attack) or None (no attack), got {attack!r}")

    def distance(x: torch.Tensor, y: torch.Tensor, split: int) -> torch.Tensor:
        x_adv = x if attack is None else pgd_linf(model, x, y, eps=attack.eps, step_size=attack.step_size,
                                                   steps=attack.steps, random_start=attack.random_start,
                                                   generator=generator)
        with torch.no_grad():
            return _rms(model.forward_features(x_adv, upto=split) - model.forward_features(x, upto=split))

    return _per_example(model, data, k=k, max_examples=max_examples, batch_size=batch_size, measure=distance)


def feature_norms(model: WideResNet, data, *, k: int, max_examples: int | None = None,
                  batch_size: int = 256) -> torch.Tensor:
    """Per-example ‖f(x)‖₂ / √d of the clean FDM feature: the scale to read ``feature_distances`` against.

    A distance can shrink because the attack moves the feature less, or because every feature got
    smaller; ``feature_distances(...) / feature_norms(...)`` (same data, same ``max_examples``) is the
    relative change, which no rescaling of the features alters. Same conventions as ``feature_distances``.

    Args:
        model: a WideResNet in eval mode.
        data: an ``ImageData`` split, a loader of ``(x, y)`` batches, or one ``(x, y)`` pair.
        k: fine-tuning depth; the feature is the input of block L−k+1.
        max_examples: use only n examples (default: all): a seeded random subset of an ImageData, the
            first n of a loader or an (x, y) pair.
        batch_size: examples per forward pass when ``data`` is an ImageData or an (x, y) pair.

    Returns:
        A float32 CPU tensor with one root-mean-square feature value per example, in data order.

    Shape:
        data with n examples -> (min(n, max_examples),)

    Example:
        >>> relative = feature_distances(teacher, test, k=4, attack=preset.train_attack) / feature_norms(teacher, test, k=4)
    """
    def norm(x: torch.Tensor, y: torch.Tensor, split: int) -> torch.Tensor:
        with torch.no_grad():
            return _rms(model.forward_features(x, upto=split))

    return _per_example(model, data, k=k, max_examples=max_examples, batch_size=batch_size, measure=norm)


def distance_table(distances: Mapping[str, torch.Tensor]):
    """One row per model: n, mean, median, 90th percentile and max of its feature distances.

    Args:
        distances: label -> the tensor ``feature_distances`` returned.

    Returns:
        A pandas DataFrame indexed by label.

    Example:
        >>> distance_table({"AT": d_at, "FDM": d_fdm})
    """
    import pandas as pd
    rows = {}
    for label, values in distances.items():
        values = torch.as_tensor(values, dtype=torch.float32).flatten()
        rows[label] = {"n": len(values), "mean": values.mean().item(), "median": values.median().item(),
                       "p90": values.quantile(0.9).item(), "max": values.max().item()}
    return pd.DataFrame.from_dict(rows, orient="index")


def distance_figure(distances: Mapping[str, torch.Tensor], *, title: str = "How far PGD moves the FDM feature",
                    xaxis_title: str = "‖f(x) − f(x′)‖₂ / √d"):
    """Overlaid histograms of the feature distances of several models, with a box plot of each above.

    Args:
        distances: label -> the tensor ``feature_distances`` returned.
        title: figure title.
        xaxis_title: label of the distance axis.

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> distance_figure({"AT teacher": d_at, "FDM teacher": d_fdm}).show()
    """
    import pandas as pd
    import plotly.express as px
    frame = pd.DataFrame([{"model": label, "distance": float(v)} for label, values in distances.items()
                          for v in torch.as_tensor(values).flatten()])
    figure = px.histogram(frame, x="distance", color="model", marginal="box", barmode="overlay", opacity=0.6,
                          nbins=40, template="plotly_white", title=title)
    figure.update_layout(xaxis_title=xaxis_title, yaxis_title="examples", legend_title_text="")
    return figure


_ROW_COLUMNS = ("method", "teacher", "k", "lam", "beta")
_HIDDEN_COLUMNS = {"label", "run", "n", "shipped", "bn_case", "lwf_lam", "clean_acc", "robust_acc", "pgd_acc", "attack", "pgd_attack"}


def results_table(rows: Iterable[Mapping]):
    """Rows of ``experiments.run_row`` as a table indexed by label, accuracies in percent, one row per run.

    A run listed twice (same ``run`` folder, e.g. a slider set back to a value already run) is kept
    once, at its first place. Extra columns given to ``run_row`` (e.g. ``teacher_distance=``) follow
    the config columns.

    Args:
        rows: dicts as ``run_row(..., label=...)`` returns them.

    Returns:
        A pandas DataFrame: method, teacher, k, lam, beta, extra columns, ``clean %``, ``robust %``.

    Example:
        >>> results_table([run_row(config, preset.evaluation, label="vanilla TL")])
    """
    import pandas as pd
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    frame = frame.drop_duplicates(subset="run", keep="first") if "run" in frame else frame
    columns = [c for c in _ROW_COLUMNS if c in frame] + [c for c in frame if c not in _HIDDEN_COLUMNS and c not in _ROW_COLUMNS]
    from .plots import percent_table
    columns += ["clean_acc", "robust_acc"] + (["pgd_acc"] if "pgd_acc" in frame else [])
    names = {}
    if "attack" in frame and frame["attack"].nunique() == 1:  # name the attack in the column, once
        label = str(frame["attack"].iloc[0])
        names = {"headline": "ensemble" if label.startswith("ensemble") else label}
    return percent_table(frame.set_index("label") if "label" in frame else frame, columns, **names,
                         pgd=str(frame["pgd_attack"].iloc[0]) if "pgd_attack" in frame else "PGD")
