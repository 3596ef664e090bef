"""Switches of the fast paths that change how, not what, the kit computes (issue: speed).

- ``precision="bf16"``: bfloat16 autocast around the forward passes of training steps and attacks;
  losses are computed in float32 (the step functions cast the logits) and parameters, gradients and
  the optimiser stay float32. Meant for CUDA GPUs with bf16 tensor cores; it also runs on a CPU,
  where it is usually slower. Its numbers differ from fp32 by more than rounding, so check them with
  ``evaluate.compare_precision`` before trusting a bf16 evaluation.
- ``cudnn_benchmark``: let cuDNN time its convolution algorithms for each input shape (CUDA only). On by
  default unless ``torch.use_deterministic_algorithms(True)`` asks for reproducible results.
- channels-last memory format and ``torch.compile`` are switches of ``fit`` itself.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'fp32' or 'bf16' (bfloat16 autocast, for GPUs), got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``precision="bf16"``, nothing for ``"fp32"``."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def configure_cuda(device: torch.device, *, cudnn_benchmark: bool | None = None) -> bool:
    """Turn cuDNN's autotuner on for CUDA work; returns whether it is on.

    ``None`` (the default) means on, unless deterministic algorithms were asked for. Off a GPU it
    changes nothing and returns False.
    """
    if device.type != "cuda":
        return False
    if cudnn_benchmark is None:
        cudnn_benchmark = not torch.are_deterministic_algorithms_enabled()
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    return torch.backends.cudnn.benchmark


__all__ = ["PRECISIONS", "autocast", "check_precision", "configure_cuda"]
