"""Teacher -> student for transfer learning, and the four BatchNorm cases (CARTL paper §3, §4.3; spec §5, §7).

``make_student`` copies the robust teacher, gives it a new head, freezes the stem and blocks
1..L-k (the feature extractor) and trains blocks L-k+1..L (the sub-model). BatchNorm is handled in
one of the paper's four ways, named ``<sub-model BN affine>-<extractor BN statistics>``:

| case            | sub-model BN γ,β | extractor BN μ,σ         | poster row | poster column |
|-----------------|------------------|--------------------------|------------|---------------|
| ``train-update``| trained          | updated on target batches| –          | W,b           |
| ``train-reuse`` | trained          | teacher's, reused        | –          | μ,σ,W,b       |
| ``freeze-update``| frozen          | updated on target batches| W,b        | W,b           |
| ``freeze-reuse``| frozen           | teacher's, reused        | W,b        | μ,σ,W,b       |

``"vanilla"`` is an alias of ``freeze-reuse``, the paper's Vanilla / AT+TL baseline. Extractor BN
affine parameters are always frozen. Freezing is done by structure: reused statistics live in
``FrozenBatchNorm2d`` modules that ignore ``model.train()``, so no later call can undo it (the
reference re-froze BN before every batch because its evaluation ended with ``model.train()``).
A frozen-affine sub-model BN still normalises with batch statistics in training, as in the reference.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from .models import WideResNet, check_k, set_half_residual


@dataclass(frozen=True)
class BNCase:
    """How BatchNorm is treated during fine-tuning."""

    freeze_submodel_affine: bool
    reuse_extractor_stats: bool

    @property
    def name(self) -> str:
        return f"{'freeze' if self.freeze_submodel_affine else 'train'}-{'reuse' if self.reuse_extractor_stats else 'update'}"


BN_CASES: dict[str, BNCase] = {
    "train-update": BNCase(False, False),
    "train-reuse": BNCase(False, True),
    "freeze-update": BNCase(True, False),
    "freeze-reuse": BNCase(True, True),
}
BN_CASE_ALIASES = {"vanilla": "freeze-reuse"}


def get_bn_case(name: str | BNCase) -> BNCase:
    """Look up a BatchNorm case by name (or alias); raises ValueError listing the allowed names."""
    if isinstance(name, BNCase):
        return name
    key = BN_CASE_ALIASES.get(name, name)
    if key not in BN_CASES:
        allowed = ", ".join([*BN_CASES, *BN_CASE_ALIASES])
        raise ValueError(f"unknown BatchNorm case {name!r}; choose one of {allowed}")
    return BN_CASES[key]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed affine parameters and running statistics, in every mode.

    Its state-dict keys equal BatchNorm2d's, so weights move freely between the two.
    """

    weight: torch.Tensor  # (C,)
    bias: torch.Tensor  # (C,)
    running_mean: torch.Tensor  # (C,)
    running_var: torch.Tensor  # (C,)
    num_batches_tracked: torch.Tensor  # ()

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> "FrozenBatchNorm2d":
        frozen = cls(bn.num_features, bn.eps).to(bn.weight.device)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                getattr(frozen, name).copy_(getattr(bn, name))
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every BatchNorm2d inside ``module`` by a FrozenBatchNorm2d, in place. Returns the count."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d.from_batchnorm(child))
            count += 1
        else:
            count += freeze_batchnorm(child)
    return count


def extractor_modules(model: WideResNet, *, k: int) -> list[nn.Module]:
    """The frozen feature extractor: normaliser, stem and blocks 1..L-k."""
    num_blocks = check_k(model, k)
    return [model.normalize, model.stem, *model.blocks[: num_blocks - k]]


def submodel_modules(model: WideResNet, *, k: int) -> list[nn.Module]:
    """The fine-tuned sub-model: blocks L-k+1..L."""
    num_blocks = check_k(model, k)
    return list(model.blocks[num_blocks - k:])


def make_student(
    teacher: WideResNet,
    *,
    k: int,
    num_classes: int,
    bn_case: str | BNCase = "vanilla",
    half_residual: bool = False,
    generator: torch.Generator | None = None,
) -> WideResNet:
    """A transfer-learning student: teacher copy, new head, last k blocks trainable, BN case applied.

    The last k blocks keep the teacher's weights (as in the reference); only the head is new, with
    PyTorch's default Linear init and zero bias (the reference drew it from U[0, 1)).

    Args:
        teacher: the (robust) source model; it is not modified.
        k: number of fine-tuned blocks, 1 <= k <= L.
        num_classes: classes of the target task.
        bn_case: one of ``BN_CASES`` or ``"vanilla"`` (= ``"freeze-reuse"``).
        half_residual: make the residual units among the last k blocks compute
            0.5·shortcut + 0.5·residual, as the reference's NEFT/CARTL student ("pwrn") does.
        generator: CPU ``torch.Generator`` for the new head's weights; default the global random state.

    Returns:
        The student, in training mode, on the teacher's device.

    Example:
        >>> student = make_student(teacher, k=4, num_classes=10, bn_case="vanilla")
    """
    check_k(teacher, k)
    case = get_bn_case(bn_case)
    student = copy.deepcopy(teacher)
    student.reset_head(num_classes, generator=generator)
    student.requires_grad_(False)
    for module in submodel_modules(student, k=k):
        module.requires_grad_(True)
        if case.freeze_submodel_affine:
            for bn in module.modules():
                if isinstance(bn, nn.BatchNorm2d):
                    bn.requires_grad_(False)
    if case.reuse_extractor_stats:
        for module in extractor_modules(student, k=k):
            freeze_batchnorm(module)
    if half_residual:
        set_half_residual(student, k=k)
    return student.train()


def restrict_to_bitfit(student: WideResNet, *, k: int) -> WideResNet:
    """BitFit in CARTL's regime (Ben Zaken et al., 2022): of the last k blocks, only the biases and the BatchNorm
    affine parameters stay trainable; the convolution weights freeze. The new head (the last block, in the paper's
    numbering) stays wholly trainable. Call it on a ``make_student`` student whose BatchNorm case trains the
    sub-model's affine parameters. In place; returns it."""
    for module in submodel_modules(student, k=k):
        if module is student.head:
            continue
        for layer in module.modules():
            for name, param in layer.named_parameters(recurse=False):
                param.requires_grad_(isinstance(layer, nn.BatchNorm2d) or name == "bias")
    return student


def trainable_summary(model: nn.Module) -> dict:
    """Counts of trainable and frozen parameters, and of BatchNorm layers by kind.

    Returns:
        ``{"trainable": int, "frozen": int, "trainable_tensors": int, "bn_train": int,
        "bn_frozen_stats": int}``; ``frozen`` includes the affine W, b of frozen-statistics
        BatchNorm layers (buffers there); ``bn_train`` counts BatchNorm2d modules (they update running
        statistics in training mode), ``bn_frozen_stats`` counts FrozenBatchNorm2d modules.
    """
    params = list(model.parameters())
    frozen_bns = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    return {
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        # FrozenBatchNorm2d keeps its affine W, b as buffers: count them as frozen parameters.
        "frozen": sum(p.numel() for p in params if not p.requires_grad) + sum(2 * m.num_features for m in frozen_bns),
        "trainable_tensors": sum(1 for p in params if p.requires_grad),
        "bn_train": sum(1 for m in model.modules() if isinstance(m, nn.BatchNorm2d)),
        "bn_frozen_stats": len(frozen_bns),
    }


def k_table(arch: str, *, k: int | None = None, in_channels: int = 3, size: int = 32, num_classes: int = 10,
            bn_case: str = "vanilla") -> list[dict]:
    """What fine-tuning the last k blocks means for ``arch``, one row per k (or only ``k``).

    Each row: ``k``, the fine-tuned blocks ``L-k+1..L``, the FDM feature shape (the input of block
    L-k+1) and its size ``d``, and the student's trainable parameter count in BatchNorm case ``bn_case``
    (default the kit's vanilla case, frozen affine parameters: there k = 1 and k = 2 train the same
    parameters, the head, since block L-1 is the final BatchNorm; in ``"train-update"`` it trains too).
    Built on the meta device: no memory, no weights.

    Example:
        >>> k_table("wrn16_1", in_channels=1, size=28, num_classes=5)[3]["fdm_feature"]
        '32x14x14'
    """
    from .models import create_model
    with torch.device("meta"):
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels)
    num_blocks = model.num_blocks
    if k is not None:
        check_k(model, k)
    rows = []
    for depth in ([k] if k is not None else range(1, num_blocks + 1)):
        feature = model.forward_features(torch.empty(1, in_channels, size, size, device="meta"), upto=num_blocks - depth)
        student = make_student(model, k=depth, num_classes=num_classes, bn_case=bn_case)
        rows.append({"k": depth, "fine_tuned_blocks": f"{num_blocks - depth + 1}-{num_blocks}",
                     "fdm_feature": "x".join(map(str, feature.shape[1:])), "d": feature[0].numel(),
                     "trainable_params": trainable_summary(student)["trainable"]})
    return rows


def block_table(model: WideResNet, *, k: int) -> list[dict]:
    """One row per block of ``model``: its number, kind, parameter count, and whether it is fine-tuned at k.

    Example:
        >>> [r["status"] for r in block_table(create_model("wrn16_1", num_classes=5), k=2)][-3:]
        ['frozen', 'fine-tuned', 'fine-tuned']
    """
    check_k(model, k)
    num_blocks = model.num_blocks
    return [{"block": index, "kind": type(block).__name__, "params": sum(p.numel() for p in block.parameters()),
             "status": "fine-tuned" if index > num_blocks - k else "frozen"}
            for index, block in enumerate(model.blocks, 1)]
