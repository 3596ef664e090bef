"""One training loop and its step functions (CARTL paper §3-4; reference spec §3, §4, §5, §8).

``fit`` runs epochs of SGD over a loader; what a step does is the step function passed in:

- ``natural_step`` — cross-entropy on clean images (fine-tuning, the reference's TL/NEFT);
- ``adversarial_step(attack=AttackConfig(...))`` — Madry adversarial training: PGD examples crafted
  in eval mode, cross-entropy on them in train mode (the robust source model);
- ``fdm_step(k=, lam=, attack=...)`` — adversarial training plus CARTL's FDM term at block L-k+1;
- ``lwf_step(teacher, lam=)`` — the LwF baseline: cross-entropy plus feature distillation.

A step function is ``step(model, x, y) -> (loss, metrics)`` with a scalar loss tensor to minimise
and a dict of floats to log. The optimiser and its schedule are an ``OptimConfig``; the learning rate
of each batch is the pure function ``lr_at``.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable, Iterator, Protocol, runtime_checkable

import torch
from torch import nn
import torch.nn.functional as F
from .progress import bar as progress_bar

from .attacks import AttackConfig, pgd_linf
from .config import OptimConfig
from .fold import check_fold_settings, folded_for_attack
from .losses import FDM_DISTANCES, check_lambda, fdm_loss, lwf_loss
from .models import WideResNet
from .runtime import default_device
from .speed import autocast, check_precision, configure_cuda

StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]


class Batches(Protocol):
    """What ``fit`` trains on: re-iterable ``(x, y)`` batches that know their count (a loader, a list)."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...


@runtime_checkable
class BlockModel(Protocol):
    """What the FDM and LwF steps call: a model split into numbered blocks, such as a ``WideResNet``."""

    @property
    def num_blocks(self) -> int: ...

    def split_index(self, k: int) -> int: ...

    def forward_features(self, x: torch.Tensor, *, upto: int) -> torch.Tensor: ...

    def forward_from(self, features: torch.Tensor, *, start: int) -> torch.Tensor: ...


# The reference's schedule (spec §3): lr 0.1, 1 warm-up epoch, x0.2 at epochs 40/70/90 of 100.
MILESTONE_FRACTIONS = (0.4, 0.7, 0.9)


def lr_at(
    epoch: int,
    batch: int,
    *,
    batches_per_epoch: int,
    epochs: int,
    base_lr: float = 0.1,
    warmup_epochs: int = 1,
    milestones: tuple[float, ...] = MILESTONE_FRACTIONS,
    gamma: float = 0.2,
) -> float:
    """Learning rate for batch ``batch`` (0-based) of epoch ``epoch`` (1-based).

    Warm-up epochs rise linearly per batch from 0 (the reference's first batch has lr 0); after
    them the rate is ``base_lr · gamma^m`` where m counts the milestones (fractions of ``epochs``,
    rounded to whole epochs) that ``epoch`` has passed. With 100 epochs: 0.1 for epochs 2-40,
    0.02 for 41-70, 0.004 for 71-90, 0.0008 for 91-100.

    Example:
        >>> lr_at(41, 0, batches_per_epoch=391, epochs=100)
        0.020000000000000004
    """
    if epoch <= warmup_epochs:
        done = (epoch - 1) * batches_per_epoch + batch
        return base_lr * done / (warmup_epochs * batches_per_epoch)
    passed = sum(epoch > round(fraction * epochs) for fraction in milestones)
    return base_lr * gamma**passed


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def natural_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Cross-entropy on clean images."""
    logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    return loss, {"loss": loss.item(), "train_acc": _accuracy(logits, y)}


def _check_attack(attack: AttackConfig) -> AttackConfig:
    if not isinstance(attack, AttackConfig):
        raise ValueError(f"attack must be an AttackConfig, e.g. AttackConfig(eps=8/255, step_size=2/255, steps=7), "
                         f"got {attack!r}")
    return attack


def _blocks(model: nn.Module, step: str) -> BlockModel:
    if not isinstance(model, BlockModel):
        raise TypeError(f"{step} splits the model into blocks: it needs a WideResNet (create_model), "
                        f"got {type(model).__name__}")
    return model


def _craft_in_eval_mode(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig,
                        generator: torch.Generator | None, fold_bn: bool = False,
                        chunk: int | None = None) -> torch.Tensor:
    # Like the reference: examples are crafted with BatchNorm using running statistics. With fold_bn, on a
    # snapshot of the eval-mode model with BatchNorm folded (cartl_kit.fold): the same logits and input
    # gradients up to rounding, fewer passes; with chunk, run in slices of the batch.
    model.eval()
    try:
        attacked = folded_for_attack(model, chunk=chunk) if fold_bn else model
        return pgd_linf(attacked, x, y, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
                        random_start=attack.random_start, generator=generator)
    finally:
        model.train()


def adversarial_step(*, attack: AttackConfig = AttackConfig(), generator: torch.Generator | None = None,
                     fold_bn: bool = False, attack_chunk: int | None = None) -> StepFn:
    """Madry adversarial training: cross-entropy on PGD examples (default the reference's PGD-7, 8/255, 2/255).

    Args:
        attack: the PGD attack that crafts the training examples.
        generator: ``torch.Generator`` for PGD's random starts (drawn on its device, then moved to the
            batch's); default the global random state.
        fold_bn: craft the examples on ``cartl_kit.fold.FoldedWideResNet`` (BatchNorm folded away; a
            WideResNet only): the same examples up to floating-point rounding, faster on a CPU.
        attack_chunk: with ``fold_bn``, run the attack's passes in slices of this many examples (exact: eval
            mode treats examples independently; see bench/README.md for when it helps); None: the whole batch.

    Example:
        >>> fit(model, loader, adversarial_step(attack=AttackConfig(eps=0.3, step_size=0.1)), OptimConfig(epochs=5))
    """
    _check_attack(attack)
    check_fold_settings(fold_bn, attack_chunk)

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x_adv = _craft_in_eval_mode(model, x, y, attack, generator, fold_bn, attack_chunk)
        logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"loss": loss.item(), "train_adv_acc": _accuracy(logits, y)}

    return step


def fdm_step(
    *,
    k: int,
    lam: float,
    attack: AttackConfig = AttackConfig(),
    generator: torch.Generator | None = None,
    reduction: str = "sum",
    fold_bn: bool = False,
    attack_chunk: int | None = None,
    distance: str = "absolute",
) -> StepFn:
    """Adversarial training plus FDM: CE(f(x'), y) + λ/√d · Σ_i ‖f^(L-k)(x'_i) - f^(L-k)(x_i)‖₂.

    The adversarial pass is split at block L-k so its feature is reused for the logits. The clean
    pass runs only through the extractor (the reference ran the whole network to log a clean
    accuracy): it is in train mode, so it normalises with the clean batch's statistics and
    updates the running statistics of the BatchNorm layers in blocks 1..L-k (not those after).
    Neither feature is detached: the regulariser trains the extractor.

    Args:
        k: fine-tuning depth; the FDM feature is the input of block L-k+1.
        lam: λ, the weight of the FDM term.
        attack: the PGD attack that crafts the training examples (default the reference's PGD-7).
        generator: ``torch.Generator`` for PGD's random starts; default the global random state.
        reduction: ``"sum"`` (the reference) or ``"mean"`` over the batch, as in ``fdm_loss``.
        distance: ``"absolute"`` (the paper's) or ``"relative"`` (scale-invariant), as in ``fdm_loss``.
        fold_bn, attack_chunk: craft the examples with BatchNorm folded away, as in ``adversarial_step``.

    Example:
        >>> fit(model, loader, fdm_step(k=4, lam=0.005), OptimConfig(epochs=100))
    """
    check_lambda(lam)
    _check_attack(attack)
    check_fold_settings(fold_bn, attack_chunk)
    if distance not in FDM_DISTANCES:
        raise ValueError(f"distance must be 'absolute' (the paper's) or 'relative' (scale-invariant), got {distance!r}")

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        net = _blocks(model, "fdm_step")
        split = net.split_index(k)
        x_adv = _craft_in_eval_mode(model, x, y, attack, generator, fold_bn, attack_chunk)
        features_adv = net.forward_features(x_adv, upto=split)
        logits = net.forward_from(features_adv, start=split)
        features_clean = net.forward_features(x, upto=split)
        ce = F.cross_entropy(logits.float(), y)
        fdm = fdm_loss(features_clean, features_adv, lam=lam, reduction=reduction, distance=distance)
        loss = ce + fdm
        return loss, {"loss": loss.item(), "ce": ce.item(), "fdm": fdm.item(), "train_adv_acc": _accuracy(logits, y)}

    return step


def lwf_step(teacher: WideResNet, *, lam: float) -> StepFn:
    """LwF baseline: CE on clean images + λ_d · L1 distance to the teacher's pooled features.

    The teacher (a frozen copy of the robust source, in eval mode) computes its features on the
    same batch, so they stay right under augmentation (the reference stored them once, freezing
    the augmentation).

    Example:
        >>> fit(student, loader, lwf_step(teacher, lam=0.01), OptimConfig(epochs=52, base_lr=0.001, weight_decay=2e-4))
    """
    check_lambda(lam, name="lam (LwF's λ_d)")
    teacher = copy.deepcopy(teacher).eval().requires_grad_(False)

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        net = _blocks(model, "lwf_step")
        upto = net.num_blocks - 1
        teacher.to(x.device)
        with torch.no_grad():
            teacher_features = teacher.forward_features(x, upto=upto)
        features = net.forward_features(x, upto=upto)
        logits = net.forward_from(features, start=upto)
        ce = F.cross_entropy(logits.float(), y)
        distill = lwf_loss(features, teacher_features, lam=lam)
        loss = ce + distill
        return loss, {"loss": loss.item(), "ce": ce.item(), "lwf": distill.item(), "train_acc": _accuracy(logits, y)}

    return step


def fit(
    model: nn.Module,
    loader: Batches,
    step: StepFn,
    optim: OptimConfig,
    *,
    device: torch.device | str | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    start_epoch: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    channels_last: bool = False,
    precision: str = "fp32",
    compile: bool = False,
    cudnn_benchmark: bool | None = None,
) -> list[dict]:
    """Train ``model`` with ``step`` for ``optim.epochs`` epochs of SGD on the reference's schedule.

    Only parameters with ``requires_grad`` are optimised (frozen blocks get no weight decay or
    momentum). The model is put in train mode at the start of each epoch.

    Args:
        model: the model to train, moved to ``device``.
        loader: re-iterable batches ``(x, y)`` with x in [0, 1]; ``len(loader)`` gives the batch count.
        step: a step function (``natural_step``, ``adversarial_step(...)``, ``fdm_step(...)``, ``lwf_step(...)``).
        optim: epochs, SGD settings (``base_lr``, ``momentum``, ``weight_decay``; reference 0.1, 0.9, 5e-4)
            and the schedule (``warmup_epochs``, ``milestones``, ``gamma``; see ``lr_at``):
            ``OptimConfig(epochs=5, warmup_epochs=0, milestones=())`` gives a constant rate. Its
            ``batch_size`` is the loader's business and is not read here.
        device: where to train; default CUDA if present, else CPU.
        callback: called with each epoch's record, e.g. to update a live plot.
        progress: show a progress bar over batches.
        start_epoch: resume at this epoch (1-based) of the same schedule.
        optimizer: an SGD optimiser to continue with (e.g. restored for a resume); default a new one
            with ``optim``'s settings.
        channels_last: train in the channels-last memory format (the model is converted in place; faster
            convolutions on many CPUs and GPUs, the same results up to floating-point rounding).
        precision: ``"fp32"``, or ``"bf16"`` for bfloat16 autocast around each step's forward passes and
            attacks (losses in float32; for GPUs, see ``cartl_kit.speed``).
        compile: ``torch.compile`` the model's forward (in place, ``model.compile()``); the first steps
            pay the compilation. Steps that call ``forward_features``/``forward_from`` (FDM, LwF) run
            those parts uncompiled.
        cudnn_benchmark: on CUDA, cuDNN's autotuner; default on unless deterministic algorithms are set.

    Returns:
        One record per epoch: ``epoch``, ``lr``, ``seconds`` and the batch-mean of every metric the
        step returned.

    Example:
        >>> history = fit(model, loader, adversarial_step(attack=AttackConfig(eps=0.3, step_size=0.1)),
        ...               OptimConfig(epochs=10))
    """
    if not isinstance(optim, OptimConfig):
        raise ValueError(f"optim must be an OptimConfig, e.g. OptimConfig(epochs=10, base_lr=0.05), got {optim!r}")
    epochs = optim.epochs
    check_precision(precision)
    device = torch.device(device) if device is not None else default_device()
    configure_cuda(device, cudnn_benchmark=cudnn_benchmark)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile and getattr(model, "_compiled_call_impl", None) is None:
        model.compile()  # once: a second fit on the same model keeps its compiled forward
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; check k and the BatchNorm case")
    if optimizer is None:
        optimizer = torch.optim.SGD(params, lr=optim.base_lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    batches_per_epoch = len(loader)
    history = []
    for epoch in range(start_epoch, epochs + 1):
        model.train()
        sums: dict[str, float] = {}
        started = time.perf_counter()
        bar = progress_bar(loader, total=batches_per_epoch, desc=f"epoch {epoch}/{epochs}", disable=not progress)
        for batch, (x, y) in enumerate(bar):
            lr = lr_at(epoch, batch, batches_per_epoch=batches_per_epoch, epochs=epochs, base_lr=optim.base_lr,
                       warmup_epochs=optim.warmup_epochs, milestones=optim.milestones, gamma=optim.gamma)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:  # (cached pooled features at k = 1 are vectors)
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                loss, metrics = step(model, x, y)
            if not math.isfinite(metrics.get("loss", loss.item())):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, batch {batch}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value
            bar.set_postfix({name: f"{value:.3f}" for name, value in metrics.items()}, refresh=False)
        record = {"epoch": epoch, "lr": lr, "seconds": time.perf_counter() - started}
        record.update({name: total / batches_per_epoch for name, total in sums.items()})
        history.append(record)
        if callback is not None:
            callback(record)
    optimizer.zero_grad(set_to_none=True)  # free the gradient memory; the model leaves fit clean
    return history
