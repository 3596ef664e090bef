"""The kit's headline robust accuracy: the worst case per example over several white-box attacks.

An example counts as robust only if it is classified correctly clean and no attack of the ensemble
finds a misclassified point in its eps-ball. The ensemble is AutoAttack's standard pair of
gradient attacks — APGD-CE and APGD-T (targeted DLR loss) from ``cartl_kit.apgd`` — plus a guard
against gradient masking: PGD with step = eps and several random restarts. The guard is what breaks
models whose small-step gradients mislead: on the quick preset's FDM teacher and CARTL students the
APGD pair alone overstates robust accuracy by several points (``convergence`` shows it per model).

The attacks run as a cascade (cheapest first, as in AutoAttack): each one attacks only the examples the
earlier ones left unbroken, and every attack retires an example at its first misclassified iterate.
The result records, for every example, which attack broke it first, and the robust accuracy left after
each attack, so a table can say which attack a number comes from.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn
from .progress import bar as progress_bar, showing_attack_steps

from .apgd import apgd, apgd_targeted
from .attacks import check_attack_args, check_images, pgd_linf_any

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
CLEAN = "clean"  # broken_by value of an example misclassified without any attack
ROBUST = ""  # broken_by value of an example no attack broke


def _check_count(name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class EnsembleConfig:
    """Budgets of the ensemble's three attacks (Croce & Hein's AutoAttack uses 100 steps and 9 targets).

    The defaults were sized on the quick preset's gradient-masked FDM teacher (500 test images, eps 0.3):
    there the guard needs step = eps (step eps/2 left about 20 points more robust), longer restarts beat
    many short ones, and APGD-CE after the guard broke another point or two, while APGD-T added little. Whether a given model's number is converged is what ``convergence.convergence_report``
    (``python -m cartl_kit evaluate RUN --convergence``) checks, by running this ensemble doubled.
    """

    guard_steps: int = 50
    guard_restarts: int = 3
    apgd_ce_steps: int = 100
    apgd_t_steps: int = 25
    n_targets: int = 3

    def __post_init__(self) -> None:
        for name in ("guard_steps", "guard_restarts", "apgd_ce_steps", "apgd_t_steps", "n_targets"):
            _check_count(name, getattr(self, name))

    @property
    def attacks(self) -> tuple[str, ...]:
        """The attacks' names, in the order they run."""
        return (f"PGD-{self.guard_steps}x{self.guard_restarts} step=eps", f"APGD-CE-{self.apgd_ce_steps}",
                f"APGD-T-{self.apgd_t_steps}x{self.n_targets}")

    @property
    def label(self) -> str:
        """A name for tables: ``ensemble (PGD-50x3 step=eps, APGD-CE-100, APGD-T-25x3)``."""
        return "ensemble (" + ", ".join(self.attacks) + ")"

    @property
    def key(self) -> str:
        return (f"ens-g{self.guard_steps}x{self.guard_restarts}-ce{self.apgd_ce_steps}"
                f"-t{self.apgd_t_steps}x{self.n_targets}")

    def doubled(self) -> "EnsembleConfig":
        """Every budget twice as large (restarts and targets included): the convergence check's stronger ensemble."""
        return EnsembleConfig(guard_steps=2 * self.guard_steps, guard_restarts=2 * self.guard_restarts,
                              apgd_ce_steps=2 * self.apgd_ce_steps, apgd_t_steps=2 * self.apgd_t_steps,
                              n_targets=2 * self.n_targets)


def worst_case(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
               config: EnsembleConfig = EnsembleConfig(), generator: torch.Generator | None = None,
               cascade: bool = True) -> tuple[torch.Tensor, list[str]]:
    """Run the ensemble on one batch; which attack broke each example first.

    Args:
        model: the classifier in eval mode (images in [0, 1] -> logits).
        x, y: a batch of clean images and labels.
        eps: the L-inf radius in pixel units.
        config: the attacks' budgets.
        generator: random starts (seed it for reproducible numbers).
        cascade: True (default) attacks each example only until some attack breaks it; False runs every
            attack on every clean-correct example (to measure each attack on its own; slower).

    Returns:
        ``(broken, broken_by)``: a (B,) bool tensor (True: not robust) and, per example, ``"clean"``,
        the name of the first attack that broke it, or ``""`` for a robust example. Without ``cascade``,
        ``broken_by`` holds, per example, every attack that broke it, joined by ``"|"``.

    Example:
        >>> broken, by = worst_case(model.eval(), x, y, eps=0.3)
    """
    check_attack_args(eps=eps, step_size=eps, steps=1)
    check_images(x)
    if model.training:
        raise ValueError("the ensemble needs the model in eval mode (model.eval())")
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    names = config.attacks
    by = [CLEAN if not c else ROBUST for c in correct.tolist()]
    broken = ~correct

    def record(name: str, now: torch.Tensor) -> None:
        for i in torch.nonzero(now).squeeze(1).tolist():
            if by[i] == ROBUST:
                by[i] = name
            elif not cascade and by[i] != CLEAN:
                by[i] += "|" + name

    def attack(index: int, active: torch.Tensor) -> torch.Tensor:
        if index == 0:
            hit = torch.zeros_like(active)
            for _ in range(config.guard_restarts):
                _, now = pgd_linf_any(model, x, y, eps=eps, step_size=eps, steps=config.guard_steps,
                                      generator=generator, active=active & ~hit)
                hit |= now & active
            return hit
        if index == 1:
            return apgd(model, x, y, eps=eps, steps=config.apgd_ce_steps, loss="ce", generator=generator,
                        active=active)[1] & active
        return apgd_targeted(model, x, y, eps=eps, steps=config.apgd_t_steps, n_targets=config.n_targets,
                             generator=generator, active=active)[1] & active

    for index, name in enumerate(names):
        active = ~broken if cascade else correct
        if not active.any():
            continue
        now = attack(index, active)
        record(name, now)
        broken = broken | now
    return broken, by


@dataclass(frozen=True)
class EnsembleResult:
    """Clean and worst-case robust accuracy (fractions) of one model under the ensemble.

    ``after`` maps each attack (in cascade order) to the robust accuracy left after it and the attacks
    before it; ``broken_by`` names, per example in evaluation order, the attack that broke it first
    (``"clean"``: misclassified clean; ``""``: robust).
    """

    clean_acc: float
    robust_acc: float
    n: int
    eps: float
    attack: str
    after: dict[str, float] = field(default_factory=dict)
    broken_by: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_broken_by(cls, by: list[str], *, eps: float, config: EnsembleConfig) -> "EnsembleResult":
        """The result whose examples, in order, were broken by ``by`` (see ``broken_by``)."""
        left = sum(b != CLEAN for b in by)
        after = {}
        for name in config.attacks:
            left -= sum(b == name for b in by)
            after[name] = left / len(by)
        return cls(clean_acc=sum(b != CLEAN for b in by) / len(by), robust_acc=sum(b == ROBUST for b in by) / len(by),
                   n=len(by), eps=eps, attack=config.label, after=after, broken_by=by, config=asdict(config))

    def __str__(self) -> str:
        return (f"clean {100 * self.clean_acc:.2f} %, robust {100 * self.robust_acc:.2f} % "
                f"({self.attack}, eps={self.eps:.4g}, n={self.n})")


def ensemble_accuracy(model: nn.Module, loader: Batches, *, eps: float, config: EnsembleConfig = EnsembleConfig(),
                      device: torch.device | str | None = None, max_examples: int | None = None,
                      generator: torch.Generator | None = None, progress: bool = True, seed: int | None = None,
                      first_batch: int = 0) -> EnsembleResult:
    """Clean and worst-case robust accuracy over a loader under the ensemble (see ``worst_case``).

    The model is moved to ``device`` and sanity-checked on the first batch (``evaluate.check_model``).
    Random starts come from ``generator`` (one stream), or with ``seed`` from one seed per batch, as in
    ``evaluate.robust_accuracy``.

    Example:
        >>> ensemble_accuracy(model.eval(), test_loader, eps=0.3).robust_acc
    """
    from .evaluate import batch_generators, check_model
    from .runtime import default_device
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    by: list[str] = []
    seen = 0
    total = len(loader) if isinstance(loader, Sized) else None
    batches = progress_bar(loader, total=total, desc="ensemble", disable=not progress)
    for index, ((x, y), batch_generator) in enumerate(zip(batches, batch_generators(device, seed, generator,
                                                                                    first_batch))):
        x, y = x.to(device), y.to(device)
        if max_examples is not None:
            x, y = x[: max_examples - seen], y[: max_examples - seen]
        if index == 0:
            check_model(model, x, y)
        with showing_attack_steps(batches):
            by += worst_case(model, x, y, eps=eps, config=config, generator=batch_generator)[1]
        seen += len(y)
        if max_examples is not None and seen >= max_examples:
            break
    if seen == 0:
        raise ValueError("the loader yielded no examples to evaluate")
    return EnsembleResult.from_broken_by(by, eps=eps, config=config)
