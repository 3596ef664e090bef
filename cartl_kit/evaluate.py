"""Clean and robust accuracy, with sanity checks against silent mistakes (reference spec §9).

The paper reports robust accuracy under PGD-100 (eps 8/255, step 2/255, random start, final
iterate, full test set); an example is robust iff its adversarial version is still classified
correctly, so clean mistakes count as non-robust. Before measuring, ``check_model`` refuses the
classic ways an evaluation silently lies: a model in training mode, BatchNorm layers that would
update their statistics, outputs that are probabilities rather than logits, and input gradients
that are all zero (gradient masking: PGD would then do nothing).
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import nn
from .progress import bar as progress_bar, showing_attack_steps

from .attacks import AttackConfig, pgd_linf, pgd_linf_any
from .speed import autocast, check_precision, configure_cuda
from .runtime import default_device

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

PAPER_ATTACK = AttackConfig(eps=8 / 255, step_size=2 / 255, steps=100)  # the paper's PGD-100, random start
NO_ATTACK = AttackConfig(eps=1.0, step_size=1.0, steps=0, random_start=False)  # clean accuracy only


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index``'s random starts in an evaluation seeded with ``seed`` (batch 0: ``seed``).

    Seeding every batch on its own makes a batch's numbers independent of the batches before it, so an
    evaluation split across processes (``cartl_kit.measure``) gives exactly the single process's numbers.
    """
    if index < 0 or not 0 <= seed < 2 ** 32:
        raise ValueError(f"batch_seed needs a seed in [0, 2**32) and a batch index >= 0, got {seed}, {index}")
    # 32 bits (a CPU generator keeps only the low 32 bits of its seed); an odd multiplier: distinct per batch
    return (seed + index * 0x9E3779B1) % 2 ** 32


def batch_generators(device: torch.device, seed: int | None, generator: torch.Generator | None,
                     first_batch: int = 0):
    """One generator per batch: ``generator`` for every batch (seed None), or a fresh one seeded with
    ``batch_seed(seed, first_batch + i)`` for batch i. Yields forever; zip it with the batches."""
    if seed is not None and generator is not None:
        raise ValueError("pass either generator (one stream for every batch) or seed (one seed per batch), not both")
    index = first_batch
    while True:
        yield generator if seed is None else torch.Generator(device=device).manual_seed(batch_seed(seed, index))
        index += 1


class SanityCheckError(ValueError):
    """The model is not in a state in which accuracy numbers would be honest."""


@dataclass(frozen=True)
class EvalResult:
    """Clean and robust accuracy (fractions in [0, 1]) of one model under one attack."""

    clean_acc: float
    robust_acc: float
    n: int
    attack: str
    eps: float
    step_size: float
    steps: int
    random_start: bool

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def combined(parts: "list[dict]") -> dict:
        """The ``as_dict()`` of one evaluation over the examples of ``parts`` (``as_dict()``s of the same attack
        on disjoint examples, in order): counts add up, exactly."""
        n = sum(part["n"] for part in parts)
        clean, robust = (sum(round(part[key] * part["n"]) for part in parts) for key in ("clean_acc", "robust_acc"))
        return {**parts[0], "clean_acc": clean / n, "robust_acc": robust / n, "n": n}

    def __str__(self) -> str:
        return (f"clean {100 * self.clean_acc:.2f} %, robust {100 * self.robust_acc:.2f} % "
                f"({self.attack}-{self.steps}, eps={self.eps:.4g}, n={self.n})")


def check_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise SanityCheckError if evaluating ``model`` on this batch would give misleading numbers.

    Checks: the model is in eval mode; no BatchNorm layer is in training mode; outputs are not
    probabilities or log-probabilities; the gradient of the loss w.r.t. the input is not all zero.
    """
    if model.training:
        raise SanityCheckError("the model is in training mode; call model.eval() before evaluating")
    training_bn = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if training_bn:
        raise SanityCheckError(
            f"BatchNorm layer {training_bn[0]!r} (and {len(training_bn) - 1} more) is in training mode and would update "
            "its statistics during evaluation; call model.eval()"
        )
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    if out.dim() != 2 or out.shape[1] < 2:
        raise SanityCheckError(f"expected logits of shape (batch, classes >= 2), got {tuple(out.shape)}")
    rows = out.detach().double()
    if (rows >= 0).all() and torch.allclose(rows.sum(1), torch.ones_like(rows[:, 0]), atol=1e-4):
        raise SanityCheckError("the model outputs probabilities (rows sum to 1); return logits (remove the softmax)")
    if (rows <= 0).all() and torch.allclose(rows.exp().sum(1), torch.ones_like(rows[:, 0]), atol=1e-4):
        raise SanityCheckError("the model outputs log-probabilities; return logits (remove the log_softmax)")
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(out, y, reduction="sum"), x)
    if not grad.abs().sum() > 0:
        raise SanityCheckError(
            "the input gradient is zero everywhere (gradient masking, or a non-differentiable model); "
            "PGD cannot attack it, so a robust accuracy would be meaningless"
        )


def _move(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def accuracy(model: nn.Module, loader: Batches, *, device: torch.device | str | None = None,
             max_examples: int | None = None, progress: bool = False) -> float:
    """Fraction of correctly classified examples (model must be in eval mode).

    Example:
        >>> accuracy(model.eval(), test_loader)
    """
    return robust_accuracy(model, loader, attack=NO_ATTACK, device=device, max_examples=max_examples,
                           progress=progress).clean_acc


def robust_accuracy(
    model: nn.Module,
    loader: Batches,
    *,
    attack: AttackConfig = PAPER_ATTACK,
    device: torch.device | str | None = None,
    max_examples: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    mode: str = "final",
    channels_last: bool = False,
    precision: str = "fp32",
    seed: int | None = None,
    first_batch: int = 0,
) -> EvalResult:
    """Clean and PGD robust accuracy over a loader (the paper's metric with the default settings).

    Args:
        model: the classifier, in eval mode (checked, with the other sanity checks, on the first batch).
        loader: batches ``(x, y)`` with x in [0, 1].
        attack: the L-inf PGD attack (default the paper's PGD-100: 8/255, step 2/255, random start);
            ``steps=0`` measures clean accuracy only.
        device: default CUDA if present, else CPU; the model is moved there.
        max_examples: evaluate only the first n examples the loader yields (default: all). Test splits
            may be ordered by class: for a representative subset, pass ``make_loader(sample(data, n))``.
        generator: optional ``torch.Generator`` for the random starts, one stream through every batch.
        seed, first_batch: instead of ``generator``, seed batch i's random starts with
            ``batch_seed(seed, first_batch + i)`` (a batch's numbers then do not depend on the batches
            before it: the runs store's evaluations, which DDP ranks share out, use this).
        progress: show a progress bar.
        mode: ``"final"`` (the paper's metric: an example is robust iff PGD's final iterate is classified
            correctly) or ``"any"`` (the fast path: robust iff it is classified correctly clean and at
            every iterate; broken examples leave the batch, see ``pgd_linf_any``). With the same random
            start, "any" is never higher than "final".
        channels_last: run the model in the channels-last memory format (faster convolutions on many
            CPUs and GPUs; same numbers up to floating-point rounding).
        precision: ``"fp32"``, or ``"bf16"`` for bfloat16 autocast of the forward passes (attack loss in
            float32; for GPUs). bf16 numbers are not the fp32 ones: check with ``compare_precision``.

    Returns:
        An ``EvalResult`` with fractions ``clean_acc`` and ``robust_acc``.

    Example:
        >>> robust_accuracy(model.eval(), test_loader, attack=AttackConfig(eps=8/255, step_size=2/255, steps=100))
    """
    if not isinstance(attack, AttackConfig):
        raise ValueError(f"attack must be an AttackConfig, e.g. AttackConfig(eps=8/255, step_size=2/255, steps=100), "
                         f"got {attack!r}")
    if mode not in ("final", "any"):
        raise ValueError(f"mode must be 'final' (the paper's final-iterate PGD) or 'any' (the fast any-iterate path), got {mode!r}")
    check_precision(precision)
    device = torch.device(device) if device is not None else default_device()
    configure_cuda(device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    clean = robust = seen = 0
    total = len(loader) if isinstance(loader, Sized) else None
    batches = progress_bar(loader, total=total, desc="evaluate", disable=not progress)
    for index, (batch, batch_generator) in enumerate(zip(batches, batch_generators(device, seed, generator, first_batch))):
        x, y = _move(batch, device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if max_examples is not None:
            x, y = x[: max_examples - seen], y[: max_examples - seen]
        if index == 0:
            check_model(model, x, y)
        with autocast(device, precision), showing_attack_steps(batches):
            clean_batch, robust_batch = _attack_batch(model, x, y, attack=attack, generator=batch_generator, mode=mode)
        clean += clean_batch
        robust += robust_batch
        seen += len(y)
        if max_examples is not None and seen >= max_examples:
            break
    if seen == 0:
        raise ValueError("the loader yielded no examples to evaluate")
    name = ("pgd_linf" if mode == "final" else "pgd_linf_any") if attack.steps else "none"
    return EvalResult(clean_acc=clean / seen, robust_acc=robust / seen, n=seen, attack=name, eps=attack.eps,
                      step_size=attack.step_size, steps=attack.steps, random_start=attack.random_start)


def _attack_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: AttackConfig,
                  generator: torch.Generator | None, mode: str) -> tuple[int, int]:
    """Clean-correct and robust counts of one batch."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    clean = int(correct.sum().item())
    if attack.steps > 0 and mode == "any":
        _, broken = pgd_linf_any(model, x, y, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
                                 random_start=attack.random_start, generator=generator, active=correct)
        return clean, int((~broken).sum().item())
    if attack.steps > 0:
        x_adv = pgd_linf(model, x, y, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
                         random_start=attack.random_start, generator=generator)
        with torch.no_grad():
            return clean, int((model(x_adv).argmax(1) == y).sum().item())
    return clean, clean


def compare_precision(model: nn.Module, loader: Batches, *, attack: AttackConfig = PAPER_ATTACK, mode: str = "final",
                      max_examples: int = 500, seed: int = 0, tolerance: float = 0.01,
                      device: torch.device | str | None = None) -> dict:
    """Robust accuracy in fp32 and in bf16 on the same examples and random starts: may bf16 stand in?

    Args:
        model, loader, device: as in ``robust_accuracy`` (model in eval mode).
        attack, mode: the attack and its mode, as in ``robust_accuracy``.
        max_examples: how many examples to compare on (the loader's first; pass a ``sample`` for a
            representative subset).
        seed: seed of the random starts, the same for both precisions.
        tolerance: the largest difference (fraction) of clean and robust accuracy still called agreement.

    Returns:
        ``{"fp32": EvalResult, "bf16": EvalResult, "clean_diff": float, "robust_diff": float,
        "agree": bool}`` with the differences as bf16 minus fp32.

    Example:
        >>> compare_precision(model.eval(), test_loader, attack=AttackConfig(steps=20))["agree"]
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance is a fraction in [0, 1), e.g. 0.01 for one point, got {tolerance}")
    device = torch.device(device) if device is not None else default_device()
    results = {}
    for precision in ("fp32", "bf16"):
        generator = torch.Generator(device=device).manual_seed(seed)
        results[precision] = robust_accuracy(model, loader, attack=attack, mode=mode, max_examples=max_examples,
                                             generator=generator, device=device, progress=False, precision=precision)
    clean_diff = results["bf16"].clean_acc - results["fp32"].clean_acc
    robust_diff = results["bf16"].robust_acc - results["fp32"].robust_acc
    return {**results, "clean_diff": clean_diff, "robust_diff": robust_diff,
            "agree": abs(clean_diff) <= tolerance and abs(robust_diff) <= tolerance}
