"""Where and how reproducibly the kit runs: the default device and explicit seeding.

Importing the kit seeds nothing; call ``seed_everything`` yourself when you want a script's global
random state fixed. The kit's own runs do not use the global state (``runs`` passes a
``torch.Generator``), so they are repeatable whatever the caller seeded.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA). Call it explicitly; importing the kit seeds nothing."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["default_device", "seed_everything"]
