"""Regularisers of the source and baseline trainers: CARTL's FDM and the LwF feature distillation.

- FDM, feature distance minimisation (CARTL paper §4.1, reference spec §4): while adversarially
  training the source, pull the adversarial feature f^(L-k)(x') towards the clean one f^(L-k)(x).
- LwF (Shafahi et al.'s robust "learning without forgetting", reference spec §8): keep the
  student's penultimate features close to the robust teacher's.
"""

from __future__ import annotations

import math

import torch


FDM_DISTANCES = ("absolute", "relative")


def check_lambda(lam: float, *, name: str = "lam") -> None:
    """Raise ValueError unless the regulariser weight is a finite number >= 0 (not a bool)."""
    if isinstance(lam, bool) or not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"{name} (the regulariser weight) must be a finite number >= 0, got {lam!r}")


def fdm_loss(
    features_clean: torch.Tensor,
    features_adv: torch.Tensor,
    *,
    lam: float,
    reduction: str = "sum",
    distance: str = "absolute",
) -> torch.Tensor:
    """λ/√d · per-sample L2 distance between clean and adversarial features (``distance="absolute"``, the paper's).

    ``distance="relative"`` is the kit's scale-invariant variant: λ · ‖h' − h‖ / ‖h‖ per sample (h the clean
    feature, its norm not detached), which is unchanged when the features are scaled. The absolute distance
    can be made small by shrinking the features, which the BatchNorm after them undoes, so a network can meet
    the penalty without becoming smoother; the relative one cannot be met that way.

    d is the number of elements of one sample's feature (C·H·W). With ``reduction="sum"`` (the
    reference's choice) the distances are summed over the batch, so the effective λ grows with the
    batch size (×128 for the paper's batches) relative to the mean-reduced cross-entropy it is
    added to; ``reduction="mean"`` averages them instead, which makes λ batch-size independent.
    Gradients flow through both arguments: do not detach either (the reference does not).

    Args:
        features_clean: f^(L-k)(x) for the clean batch.
        features_adv: f^(L-k)(x') for the adversarial batch.
        lam: weight λ >= 0 (the paper uses 0.01 and 0.005).
        reduction: ``"sum"`` (reference) or ``"mean"`` over the batch.
        distance: ``"absolute"`` (the paper's λ/√d·‖Δh‖) or ``"relative"`` (λ·‖Δh‖/‖h‖).

    Returns:
        A scalar tensor.

    Shape:
        features_*: (B, ...) -> ()

    Example:
        >>> fdm_loss(model.forward_features(x, upto=L - k), model.forward_features(x_adv, upto=L - k), lam=0.005)
    """
    check_lambda(lam)
    if features_clean.shape != features_adv.shape:
        raise ValueError(
            f"clean and adversarial features differ in shape: {tuple(features_clean.shape)} vs {tuple(features_adv.shape)}"
        )
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' (the reference) or 'mean', got {reduction!r}")
    if distance not in FDM_DISTANCES:
        raise ValueError(f"distance must be 'absolute' (the paper's) or 'relative' (scale-invariant), got {distance!r}")
    diff = (features_adv.float() - features_clean.float()).flatten(1)  # (B, d), float32 under bf16 autocast
    distances = torch.linalg.vector_norm(diff, ord=2, dim=1)  # (B,)
    if distance == "relative":
        norms = torch.linalg.vector_norm(features_clean.float().flatten(1), ord=2, dim=1)
        distances = distances / norms.clamp_min(1e-12)
    total = distances.sum() if reduction == "sum" else distances.mean()
    return lam * total if distance == "relative" else lam / math.sqrt(diff.shape[1]) * total


def lwf_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, *, lam: float) -> torch.Tensor:
    """λ_d · batch mean of the L1 distance between teacher and student penultimate features.

    The features are the pooled vectors entering the head (the output of block L-1). The teacher's
    features are constants (no gradient).

    Args:
        student_features: the student's pooled features, with gradient.
        teacher_features: the robust teacher's pooled features for the same images.
        lam: weight λ_d >= 0 (the reference sweeps 0.1, 0.01, 0.005, 0.001).

    Returns:
        A scalar tensor.

    Shape:
        (B, C) -> ()

    Example:
        >>> lwf_loss(student.forward_features(x, upto=L - 1), teacher_feats, lam=0.01)
    """
    check_lambda(lam, name="lam (LwF's λ_d)")
    if student_features.shape != teacher_features.shape:
        raise ValueError(
            f"student and teacher features differ in shape: {tuple(student_features.shape)} vs {tuple(teacher_features.shape)}"
        )
    diff = (teacher_features.detach().float() - student_features.float()).flatten(1)  # (B, C)
    return lam * diff.abs().sum(dim=1).mean()
