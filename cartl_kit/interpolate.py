"""LP-FT with weight interpolation: an arm beyond the paper, in CARTL's own regime (no adversarial training on
the target).

LP-FT (Kumar et al., ICLR 2022) first trains a new head on the frozen features of the robust teacher (the
linear probe, LP: a transfer at k = 1), then fine-tunes the last k blocks starting from that head (method
``lpft``). The fine-tuned weights θ_FT and the probe's θ_LP (the teacher's blocks with the probe's head) lie
on one line, and every point on it is a model, with no more training (Wortsman et al.'s WiSE-FT; Croce et
al., "Seasoning model soups", CVPR 2023):

    θ(α) = (1 − α)·θ_LP + α·θ_FT,   α ∈ [0, 1]

α = 0 is the probe (the teacher's robust features, the least target accuracy), α = 1 the fine-tuned model.
Every floating-point parameter and BatchNorm buffer is interpolated; the step counters are the fine-tuned
model's. ``interpolation_front`` measures (clean, robust) accuracy along α, to set beside NEFT's β front at
the same k: does one front dominate the other?

    >>> lp_ft = run(preset.transfer(teacher, "lpft", k=4))
    >>> front = interpolation_front(lp_ft, preset.evaluation, alphas=[0, 0.25, 0.5, 0.75, 1])
"""

from __future__ import annotations

import copy
import math
from typing import Sequence, TypeVar

import torch
from torch import nn

from .config import EvalConfig, TransferConfig
from .runs import Run, evaluate_run, find_run, load_run, record_metric
from .store import INTERPOLATION_PREFIX, is_shipped

Model = TypeVar("Model", bound=nn.Module)


def check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"alpha is a number in [0, 1] (0: the linear probe, 1: the fine-tuned model), got {alpha!r}")


def interpolate(start: nn.Module, end: Model, alpha: float) -> Model:
    """A copy of ``end`` whose floating-point parameters and buffers are (1 − α)·start + α·end.

    Both models must have the same state-dict keys and shapes; integer buffers (BatchNorm's step counter)
    are ``end``'s.
    """
    check_alpha(alpha)
    a, b = start.state_dict(), end.state_dict()
    if a.keys() != b.keys() or any(a[key].shape != b[key].shape for key in a):
        raise ValueError("the two models differ in their layers; interpolate a fine-tuned run with its own linear probe")
    mixed = {key: torch.lerp(a[key].to(b[key].dtype), b[key], alpha) if b[key].is_floating_point() else b[key]
             for key in b}
    model = copy.deepcopy(end)
    model.load_state_dict(mixed)
    return model


def probe_run(tuned: Run, *, root=None) -> Run:
    """The finished linear-probe run an ``lpft`` run started from (looked up in ``root`` and the shipped runs)."""
    config = tuned.config
    if not isinstance(config, TransferConfig) or config.method != "lpft":
        raise ValueError(f"{tuned.path.name} is not an LP-FT run (method 'lpft'); interpolation needs one")
    path = find_run(config.probe, root if root is not None else tuned.path.parent)
    if path is None:
        raise ValueError(f"the linear probe of {tuned.path.name} is not in {tuned.path.parent}; run the LP-FT "
                         "config again (it trains its probe first)")
    return load_run(path)


def interpolation_front(tuned: Run, evaluation: EvalConfig, *, alphas: Sequence[float] = (0, 0.25, 0.5, 0.75, 1),
                        device=None, progress: bool = True, save: bool | None = None) -> list[dict]:
    """Clean and robust accuracy of θ(α) for each α, as rows ``{"alpha", "clean_acc", "robust_acc", "n", "label"}``.

    α = 1 is the fine-tuned run's own evaluation and α = 0 the probe's (both through ``evaluate_run``, cached
    in their folders); the points between are recorded in the fine-tuned run's ``metrics.json`` under
    ``interp-a<α>-<evaluation>`` (``save`` as in ``evaluate_run``), so a second call is instant.
    """
    for alpha in alphas:
        check_alpha(alpha)
    probe = probe_run(tuned)
    rows = []
    for alpha in alphas:
        if alpha == 1:
            result = evaluate_run(tuned, evaluation, device=device, progress=progress, save=save)
        elif alpha == 0:
            result = evaluate_run(probe, evaluation, device=device, progress=progress, save=save)
        else:
            result = _between(tuned, probe, alpha, evaluation, device=device, progress=progress, save=save)
        rows.append({"alpha": float(alpha), "clean_acc": result["clean_acc"], "robust_acc": result["robust_acc"],
                     "n": result["n"], "label": result.get("label", evaluation.label)})
    return rows


def _between(tuned: Run, probe: Run, alpha: float, evaluation: EvalConfig, *, device, progress: bool,
             save: bool | None) -> dict:
    name = f"{INTERPOLATION_PREFIX}{alpha:g}-{evaluation.name}"
    if name in tuned.metrics:
        return tuned.metrics[name]
    mixed = Run(path=tuned.path, config=tuned.config, model=interpolate(probe.model, tuned.model, alpha),
                history=tuned.history, metrics={})
    result = evaluate_run(mixed, evaluation, device=device, progress=progress, save=False)
    if save is None:
        save = not is_shipped(tuned.path)
    return record_metric(tuned, name, result) if save else result
