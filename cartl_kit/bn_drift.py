"""How far fine-tuning moved the feature extractor's BatchNorm statistics (CARTL §5, the four BatchNorm cases).

In the ``*-update`` cases the extractor's BatchNorm layers run in training mode on target images, so their
running μ, σ² leave the teacher's while every weight around them stays frozen; in the ``*-reuse`` cases they
are frozen and must not move. ``extractor_batchnorms`` finds those layers through the model's structure
(``transfer.extractor_modules``), and ``bn_drift`` measures each one against the teacher's (notebook 05).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from .models import WideResNet
from .transfer import FrozenBatchNorm2d, extractor_modules

if TYPE_CHECKING:
    import pandas as pd


def extractor_batchnorms(model: WideResNet, *, k: int) -> dict[str, nn.Module]:
    """The BatchNorm layers (ordinary or ``FrozenBatchNorm2d``) of the feature extractor when the last ``k``
    blocks are fine-tuned, in forward order, labelled by their block, 1-based as in the paper ("block 3 bn1").

    Example:
        >>> list(extractor_batchnorms(create_model("wrn16_1", num_classes=5), k=7))
        ['block 1 bn1', 'block 1 bn2']
    """
    number = {id(block): i for i, block in enumerate(model.blocks, 1)}
    names = {id(child): name for name, child in model.named_children()}
    found: dict[str, nn.Module] = {}
    for part in extractor_modules(model, k=k):
        where = f"block {number[id(part)]}" if id(part) in number else names[id(part)]
        for name, module in part.named_modules():
            if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                found[f"{where} {name}".rstrip()] = module
    return found


def running_stats(layer: nn.Module) -> tuple[Tensor, Tensor]:
    """A BatchNorm layer's running mean and variance, shape (channels,) each."""
    mean, var = layer.running_mean, layer.running_var
    if not isinstance(mean, Tensor) or not isinstance(var, Tensor):
        raise TypeError(f"{type(layer).__name__} keeps no running statistics")
    return mean, var


def bn_drift(teacher: WideResNet, student: WideResNet, *, k: int) -> pd.DataFrame:
    """Per extractor BatchNorm layer (rows, labelled as ``extractor_batchnorms``): the channels' mean of
    |μ_student − μ_teacher| / σ_teacher ("mean shift (σ)") and of σ²_student / σ²_teacher ("var ratio");
    0 and 1 mean unchanged. Empty when the extractor has no BatchNorm layer.

    Example:
        >>> bn_drift(teacher.model, student.model, k=4).round(3)
    """
    import pandas as pd
    ref, new = extractor_batchnorms(teacher, k=k), extractor_batchnorms(student, k=k)
    rows = {}
    for label, layer in ref.items():
        (mean, var), (new_mean, new_var) = running_stats(layer), running_stats(new[label])
        rows[label] = {"mean shift (σ)": ((new_mean - mean).abs() / var.sqrt()).mean().item(),
                       "var ratio": (new_var / var).mean().item()}
    return pd.DataFrame(rows).T


__all__ = ["bn_drift", "extractor_batchnorms", "running_stats"]
