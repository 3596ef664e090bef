"""A thin wrapper over pyautoattack (Croce & Hein's AutoAttack, repackaged from fra31/auto-attack) to
cross-check the kit's own ensemble (``cartl_kit.ensemble``) against the reference implementation.

pyautoattack is optional: ``pip install pyautoattack``. It is imported only when called.

The wrapper fixes what AutoAttack assumes about the number of classes: APGD-T and FAB-T attack the
``n_target_classes`` most likely wrong classes (9 by default, for CIFAR-10); a model with fewer classes
gets at most classes - 1 targets. It also leaves the caller's random state alone (pyautoattack reseeds
torch's global generator) and keeps the model on its own device, in eval mode while attacking.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Sequence

import torch
from torch import nn

ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def _import() -> ModuleType:
    try:  # an optional dependency without type information: imported by name, used untyped
        return importlib.import_module("pyautoattack")
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("cartl_kit.autoattack needs pyautoattack: pip install pyautoattack") from error


def autoattack_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                        version: str = "standard", attacks: Sequence[str] = ("apgd-ce", "apgd-t"),
                        n_iter: int | None = None, n_targets: int | None = None, n_restarts: int = 1,
                        seed: int = 0, batch_size: int = 500) -> dict:
    """Clean and robust accuracy of ``model`` on ``(x, y)`` under pyautoattack's AutoAttack (L-inf).

    Args:
        model: images in [0, 1] -> logits. Attacked in eval mode on its own device (its mode is restored after).
        x, y: clean images in [0, 1], (N, C, H, W), and labels (N,); any device.
        eps: the L-inf radius in pixel units.
        version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square with AutoAttack's budgets; ``attacks`` is
            ignored) or ``"custom"`` (the ``attacks`` listed, in that order, as a cascade).
        attacks: for ``"custom"``, a subset of ``ATTACKS``.
        n_iter: iterations of APGD / APGD-T / FAB (None: pyautoattack's 100).
        n_targets: target classes of APGD-T and FAB-T (None: AutoAttack's 9); capped at classes - 1.
        n_restarts: random restarts of APGD-CE / APGD-DLR in ``"custom"`` (1, as the standard version;
            pyautoattack's own custom default is 5).
        seed: pyautoattack's seed (every attack reseeds with it).
        batch_size: examples per batch inside pyautoattack.

    Returns:
        a dict: ``clean_acc``, ``robust_acc`` (fractions), ``n``, ``eps``, ``attack`` (a label such as
        ``"AutoAttack custom: apgd-ce, apgd-t (pyautoattack 0.2.0)"``), ``version``, ``attacks``,
        ``n_iter``, ``n_targets``, ``n_restarts``, ``seed``, ``pyautoattack`` (its version) and ``robust``
        (per example, a list of bools: correct clean and not broken by any attack).

    Example:
        >>> autoattack_accuracy(model, x, y, eps=0.3, version="custom", attacks=("apgd-ce",), n_iter=20)["robust_acc"]
    """
    pyautoattack = _import()
    if version not in ("standard", "custom"):
        raise ValueError(f"version must be 'standard' or 'custom', got {version!r}")
    attacks = list(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if version == "custom" and (unknown or not attacks):
        raise ValueError(f"unknown or no attacks {unknown or attacks}; choose from {', '.join(ATTACKS)}")
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"eps must be in (0, 1] (pixel units), got {eps}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must hold the same, non-zero number of examples, got {len(x)} and {len(y)}")
    for name, value in (("n_iter", n_iter), ("n_targets", n_targets), ("n_restarts", n_restarts),
                        ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = x.device
    was_training = model.training
    model.eval()
    x, y = x.detach().to(device).float(), y.detach().to(device).long()
    try:
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        targets = min(n_targets or 9, n_classes - 1)
        # pyautoattack seeds torch's global generator: run it inside a fork so the caller's stream is untouched.
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            aa = pyautoattack.AutoAttack(model, attacks=attacks if version == "custom" else None, device=device,
                                         eps=eps, norm="Linf", seed=seed, version=version)
            aa.apgd_targeted.n_target_classes = targets
            aa.fab.n_target_classes = targets
            if version == "custom":
                aa.apgd.n_restarts = n_restarts
            if n_iter is not None:
                for attack in (aa.apgd, aa.apgd_targeted):  # APGD fixes its checkpoints from n_iter at construction
                    attack.n_iter = attack.n_iter_orig = n_iter
                    attack.n_iter_2 = max(int(0.22 * n_iter), 1)
                    attack.n_iter_min = max(int(0.06 * n_iter), 1)
                    attack.size_decr = max(int(0.03 * n_iter), 1)
                aa.fab.n_iter = n_iter
            with torch.no_grad():
                clean = model(x).argmax(1) == y
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
            with torch.no_grad():
                robust = clean & (model(x_adv).argmax(1) == y)
        run = list(aa.attacks_to_run)
    finally:
        model.train(was_training)

    label = "AutoAttack " + ("standard" if version == "standard" else "custom: " + ", ".join(run))
    return {"clean_acc": clean.float().mean().item(), "robust_acc": robust.float().mean().item(), "n": len(y),
            "eps": eps, "attack": f"{label} (pyautoattack {pyautoattack.__version__})", "version": version,
            "attacks": run, "n_iter": n_iter or 100, "n_targets": targets, "n_restarts": aa.apgd.n_restarts,
            "seed": seed, "pyautoattack": pyautoattack.__version__, "robust": robust.tolist()}
