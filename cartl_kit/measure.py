"""One evaluation of one model on one test split, as the runs store records it, on one process or shared out.

``measure`` runs the method an ``EvalConfig`` names (PGD, the ensemble or AutoAttack) over a loader.
Random starts are seeded per batch (``evaluate.batch_seed``): batch i's numbers do not depend on the batches
before it. ``measure_split`` batches a test split and, under DDP (``cartl_kit.distributed``), gives each
rank a contiguous run of whole batches (no padding, ranks may get one batch more or less), then gathers
the ranks' results and combines their counts, so every rank returns exactly what one process would:

    torchrun --nproc-per-node 4 -m cartl_kit evaluate RUN    # each rank attacks a quarter of the batches

AutoAttack (the ``pyautoattack`` package) draws its own random numbers over the whole split, so it runs on
rank 0 alone.
"""

from __future__ import annotations

import torch
from torch import nn

from . import distributed
from .config import EvalConfig
from .data import ImageData, make_loader
from .distributed import bounds
from .ensemble import EnsembleResult
from .evaluate import Batches, EvalResult, robust_accuracy

BATCH_SIZE = 256  # the runs store's evaluation batch (the random starts are seeded per batch of this size)


def measure(model: nn.Module, loader: Batches, evaluation: EvalConfig, *, device=None, progress: bool = True,
            seed: int = 0, first_batch: int = 0) -> dict:
    """Clean and robust accuracy of ``model`` (eval mode) over ``loader`` under ``evaluation``'s method, as the
    dict ``metrics.json`` stores: ``clean_acc``, ``robust_acc``, ``n``, ``method``, ``label`` (the attack's
    name) and the method's details (for the ensemble, the accuracy left after each attack and which attack
    broke each example). Batch i's random starts are seeded with ``batch_seed(seed, first_batch + i)``.
    """
    attack = evaluation.attack
    if evaluation.method == "ensemble":
        from .ensemble import ensemble_accuracy
        result = ensemble_accuracy(model, loader, eps=attack.eps, config=evaluation.ensemble, device=device,
                                   seed=seed, first_batch=first_batch, progress=progress).as_dict()
    elif evaluation.method == "autoattack":
        from .autoattack import autoattack_accuracy
        images, labels = map(torch.cat, zip(*[(x, y) for x, y in loader]))
        result = autoattack_accuracy(model, images.to(device), labels.to(device), eps=attack.eps, seed=seed)
    else:
        result = robust_accuracy(model, loader, attack=attack, device=device, mode=evaluation.mode, seed=seed,
                                 first_batch=first_batch, progress=progress).as_dict()
    return {**result, "method": evaluation.method, "label": evaluation.label}


def combine(parts: list[dict], evaluation: EvalConfig) -> dict:
    """One ``measure`` result from the results of consecutive runs of batches (in order; None: no batches)."""
    found = [part for part in parts if part is not None]
    if len(found) == 1:
        return found[0]
    if evaluation.method == "ensemble":
        by = [b for part in found for b in part["broken_by"]]
        result = EnsembleResult.from_broken_by(by, eps=evaluation.attack.eps, config=evaluation.ensemble).as_dict()
        return {**result, "method": evaluation.method, "label": evaluation.label}
    return EvalResult.combined(found)


def measure_split(model: nn.Module, data: ImageData, evaluation: EvalConfig, *, device=None, progress: bool = True,
                  seed: int = 0, batch_size: int = BATCH_SIZE) -> dict:
    """``measure`` over ``data`` in batches of ``batch_size``; under DDP every rank attacks its share of the
    batches and returns the combined result (the same, exactly, as one process: see the module docstring)."""
    world = distributed.current()
    if world is None or world.world_size == 1:
        return measure(model, make_loader(data, batch_size=batch_size, device=device), evaluation, device=device,
                       progress=progress, seed=seed)
    if evaluation.method == "autoattack":
        return distributed.on_main(lambda: measure(model, make_loader(data, batch_size=batch_size, device=device),
                                                   evaluation, device=device, progress=progress, seed=seed))
    n_batches = -(-len(data) // batch_size)
    lo, hi = bounds(n_batches, world.rank, world.world_size)
    part = None
    if hi > lo:
        share = data.take(range(lo * batch_size, min(hi * batch_size, len(data))))
        part = measure(model, make_loader(share, batch_size=batch_size, device=device), evaluation, device=device,
                       progress=progress and world.main, seed=seed, first_batch=lo)
    return combine(distributed.gather(part), evaluation)
