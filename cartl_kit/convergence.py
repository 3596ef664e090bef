"""Is a robust accuracy converged, and does it pass the sanity checks of Carlini et al. (2019)?

``convergence_report`` attacks one batch with a grid of attacks and compares them with the kit's headline,
the ensemble of ``cartl_kit.ensemble``. Convergence: robust accuracy against steps, step size and restarts
for PGD-CE, PGD-margin (CW loss) and APGD-CE, and the ensemble with every budget doubled. Sanity checks of
"On Evaluating Adversarial Robustness" (Carlini et al. 2019): (a) accuracy goes to ~0 as eps grows to 1;
(b) one-step FGSM does not beat the multi-step attacks; (c) a transfer attack from a surrogate model does
not beat white-box; (d) small-step PGD (the PGD-20 of papers, step eps/7.5) is not far above the headline;
and the input gradient is not exactly zero. Every PGD here is any-iterate, so one trajectory of N steps
gives the robust accuracy after every step count up to N; every random start is seeded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from .apgd import apgd
from .attacks import check_attack_args, fgsm, pgd_linf, pgd_trace
from .ensemble import EnsembleConfig, worst_case
from .evaluate import SanityCheckError, check_model

QUICK_ENSEMBLE = EnsembleConfig(guard_steps=5, guard_restarts=1, apgd_ce_steps=5, apgd_t_steps=5, n_targets=1)


@dataclass(frozen=True)
class Grid:
    """The attacks of the report. Step sizes are fractions of eps; the defaults are the full grid.

    ``steps`` and ``restarts`` sweep PGD at step ``step_fraction * eps``; ``step_fractions`` sweep the step
    size at ``step_sweep_steps`` steps; APGD-CE sweeps ``apgd_steps`` and restarts of ``apgd_restart_steps``.
    ``small_*`` is check (d)'s PGD; ``eps_values`` (default: eps times ``eps_multiples``, and 1.0) the eps sweep.
    """

    attacks: tuple[str, ...] = ("PGD-CE", "PGD-margin", "APGD-CE")
    steps: tuple[int, ...] = (10, 20, 50, 100, 200)
    step_fraction: float = 0.25
    step_fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    step_sweep_steps: int = 50
    restarts: tuple[int, ...] = (1, 2, 4)
    restart_steps: int = 50
    apgd_steps: tuple[int, ...] = (10, 20, 50, 100, 200)
    apgd_restart_steps: int = 100
    small_step_fraction: float = 1 / 7.5
    small_steps: int = 20
    eps_values: tuple[float, ...] = ()
    eps_multiples: tuple[float, ...] = (0.5, 1.0, 2.0)
    eps_steps: int = 50
    transfer_steps: int = 20

    @classmethod
    def quick(cls) -> "Grid":
        """The small grid: about a minute for 200 MNIST examples and a WRN-16-1 on a 2-core CPU."""
        return cls(steps=(5, 10), step_fractions=(0.25, 1.0), step_sweep_steps=10, restarts=(1,), restart_steps=10,
                   apgd_steps=(5, 10), apgd_restart_steps=10, eps_multiples=(2.0,), eps_steps=10, transfer_steps=10)

    def eps_sweep(self, eps: float) -> list[float]:
        """The eps values of check (a), ascending, all in (0, 1], ending at 1.0 unless ``eps_values`` says otherwise."""
        values = self.eps_values or tuple(eps * m for m in self.eps_multiples) + (1.0,)
        return sorted({round(e, 6) for e in values if 0 < e <= 1})


def _step_label(fraction: float) -> str:
    return "eps" if fraction == 1 else f"eps/{1 / fraction:.3g}"


@dataclass
class Report:
    """The convergence and sanity report of one model on one batch (accuracies are fractions in [0, 1]).

    ``flags`` is empty for a clean evaluation; ``convergence``, ``sanity``, ``eps_sweep`` and ``ensembles``
    are tables as lists of dict rows (``pandas.DataFrame(report.convergence)``), the attack named in every row.
    ``worst_margin`` is how far the strongest single attack (``worst_attack``) is below the headline;
    ``all_attacks_acc`` counts as robust only the examples no attack of the report broke at eps.
    """

    n: int
    eps: float
    seed: int
    quick: bool
    clean_acc: float
    headline_attack: str
    headline_acc: float
    doubled_attack: str
    doubled_acc: float
    worst_attack: str
    worst_acc: float
    worst_margin: float
    all_attacks_acc: float
    zero_grad_frac: float
    converged: bool
    flags: list[str] = field(default_factory=list)
    convergence: list[dict] = field(default_factory=list)
    sanity: list[dict] = field(default_factory=list)
    eps_sweep: list[dict] = field(default_factory=list)
    ensembles: list[dict] = field(default_factory=list)
    grid: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """Plain JSON-ready data, e.g. for a run's metrics.json under ``"convergence-" + config.key``."""
        return asdict(self)


def convergence_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                       config: EnsembleConfig | None = None, quick: bool = False, grid: Grid | None = None,
                       surrogate: nn.Module | None = None, seed: int = 0, tolerance: float = 0.005,
                       masking_gap: float = 0.05, large_eps_acc: float = 0.02) -> Report:
    """Attack one batch with the grid, the ensemble and the sanity checks; say whether the headline is converged.

    Args:
        model: the classifier in eval mode (images in [0, 1] -> logits).
        x, y: a batch of test images in [0, 1] and labels (e.g. 200 examples of ``data.sample``).
        eps: the L-inf radius of the evaluation, in pixel units.
        config: the headline's ensemble (default ``EnsembleConfig()``; ``QUICK_ENSEMBLE`` if ``quick``), run
            again with ``config.doubled()``.
        quick: default to ``Grid.quick()`` and ``QUICK_ENSEMBLE`` (about a minute for 200 MNIST examples of a
            WRN-16-1 on a 2-core CPU; the full grid with ``EnsembleConfig()`` takes tens of minutes).
        grid: the attacks (default ``Grid()``, the full grid).
        surrogate: optional other model (eval mode) for check (c), the transfer attack.
        seed: seeds every random start.
        tolerance: the largest move of the headline (fraction) still called converged: 0.005 is 0.5 point.
        masking_gap: check (d) flags small-step PGD this far (fraction) above the headline.
        large_eps_acc: check (a) flags a robust accuracy above this at the largest eps of the sweep.

    Returns:
        A ``Report``: ``converged`` is True when doubling the ensemble moves the headline by at most
        ``tolerance``, no single attack beats it by more than ``tolerance`` and check (a) passes.

    Example:
        >>> report = convergence_report(model.eval(), x, y, eps=0.3, quick=True)
        >>> print(format_report(report)); report.converged, report.flags
    """
    start_time = time.perf_counter()
    check_attack_args(eps=eps, step_size=eps, steps=1)
    for role_name, m in (("model", model), ("surrogate", surrogate)):
        if m is not None and m.training:
            raise SanityCheckError(f"the {role_name} is in training mode; call {role_name}.eval() first")
    config = config or (QUICK_ENSEMBLE if quick else EnsembleConfig())
    grid = grid or (Grid.quick() if quick else Grid())
    unknown = set(grid.attacks) - {"PGD-CE", "PGD-margin", "APGD-CE"}
    if unknown:
        raise ValueError(f"unknown attacks {sorted(unknown)}; the grid knows PGD-CE, PGD-margin and APGD-CE")
    x, y = x.detach(), y.to(x.device)

    def generator(offset: int = 0) -> torch.Generator:
        return torch.Generator(device=x.device).manual_seed(seed + 1000 * offset)

    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    correct = (logits.argmax(1) == y).detach()
    (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), xg)
    zero = grad.flatten(1).abs().sum(1) == 0
    zero_grad_frac = zero[correct].float().mean().item() if correct.any() else 0.0
    if not zero.all():
        check_model(model, x, y)  # refuses probabilities, BatchNorm in training mode...
    everything = ~correct  # broken by some attack at eps

    def acc(broken: torch.Tensor) -> float:
        return 1.0 - (broken | ~correct).float().mean().item()

    ensembles: list[dict[str, Any]] = []
    for role, cfg in (("headline", config), ("doubled", config.doubled())):
        broken = worst_case(model, x, y, eps=eps, config=cfg, generator=generator())[0]
        everything |= broken
        ensembles.append({"attack": cfg.label, "role": role, "key": cfg.key, "robust_acc": acc(broken)})
    headline: float = ensembles[0]["robust_acc"]
    doubled: float = ensembles[1]["robust_acc"]

    # PGD trajectories: one per (loss, step fraction), as long as the longest sweep that reads it.
    losses = {"PGD-CE": "ce", "PGD-margin": "margin"}
    lengths: dict[tuple[str, float], int] = {}
    sweep_restarts = max(grid.restarts) > 1
    for family in (a for a in grid.attacks if a in losses):
        lengths[(losses[family], grid.step_fraction)] = max(grid.steps + (grid.restart_steps,) * sweep_restarts)
        for fraction in grid.step_fractions:
            key = (losses[family], fraction)
            lengths[key] = max(lengths.get(key, 0), grid.step_sweep_steps)
    small = ("ce", grid.small_step_fraction)
    lengths[small] = max(lengths.get(small, 0), grid.small_steps)
    traces = {(loss, f): pgd_trace(model, x, y, eps=eps, step_size=f * eps, steps=n, loss=loss,
                                   generator=generator(), active=correct) for (loss, f), n in lengths.items()}

    rows: list[dict] = []
    first: torch.Tensor | None
    f: float | None
    single: list[tuple[str, float]] = []  # (attack, robust accuracy) of every single attack at eps

    def add(attack: str, sweep: str, family: str, steps: int, fraction, restarts: int, broken: torch.Tensor):
        nonlocal everything
        everything = everything | broken
        single.append((attack, acc(broken)))
        rows.append({"attack": attack, "sweep": sweep, "family": family, "steps": steps,
                     "step_size": None if fraction is None else fraction * eps, "restarts": restarts,
                     "robust_acc": acc(broken), "vs_headline": acc(broken) - headline})

    def name(family: str, steps: int, fraction, restarts: int = 1) -> str:
        step = "" if fraction is None else f" step={_step_label(fraction)}"
        return f"{family}-{steps}{step}" + (f" x{restarts} restarts" if restarts > 1 else "")

    for family in grid.attacks:
        if family in losses:
            loss, f, n = losses[family], grid.step_fraction, grid.restart_steps
            for k in grid.steps:
                add(name(family, k, f), "steps", family, k, f, 1, traces[(loss, f)] <= k)
            for g in grid.step_fractions:
                k = grid.step_sweep_steps
                add(name(family, k, g), "step size", family, k, g, 1, traces[(loss, g)] <= k)
            first = traces[(loss, f)] <= n if sweep_restarts else None
            more = lambda r, hit: pgd_trace(model, x, y, eps=eps, step_size=grid.step_fraction * eps, steps=n,  # noqa: E731
                                            loss=loss,
                                            generator=generator(r), active=correct & ~hit) <= n
        else:
            f, n = None, grid.apgd_restart_steps
            runs = {k: apgd(model, x, y, eps=eps, steps=k, generator=generator(), active=correct)[1]
                    for k in sorted(set(grid.apgd_steps) | ({n} if sweep_restarts else set()))}
            for k in grid.apgd_steps:
                add(name(family, k, f), "steps", family, k, f, 1, runs[k])
            first = runs.get(n)
            more = lambda r, hit: apgd(model, x, y, eps=eps, steps=n, generator=generator(r),  # noqa: E731
                                       active=correct & ~hit)[1]
        if sweep_restarts:
            if first is None:
                raise AssertionError("the restart sweep needs its first run")  # set above whenever sweep_restarts
            hit = first
            for r in range(1, max(grid.restarts) + 1):
                hit = hit if r == 1 else hit | more(r - 1, hit)
                if r in grid.restarts:
                    add(name(family, n, f, r), "restarts", family, n, f, r, hit)
    multi_step = min([value for _, value in single] + [headline])

    flags: list[str] = []
    sanity: list[dict] = []

    def check(check_name: str, attack: str, value: float, reference: float, ok: bool, flag: str, at: float = eps):
        sanity.append({"check": check_name, "attack": attack, "eps": at, "value": value, "reference": reference,
                       "ok": bool(ok)})
        if not ok:
            flags.append(flag)
        return bool(ok)

    check("zero gradient", "CE input gradient at the clean point", zero_grad_frac, 0.5, zero_grad_frac <= 0.5,
          f"zero gradient: the cross-entropy input gradient is exactly zero for {100 * zero_grad_frac:.1f} % of "
          "the clean-correct examples (saturated or non-differentiable model)")
    eps_rows: list[dict[str, Any]] = []
    eps_attack = f"PGD-CE then PGD-margin-{grid.eps_steps} step=eps/4"
    for e in grid.eps_sweep(eps):
        hit = pgd_trace(model, x, y, eps=e, step_size=e / 4, steps=grid.eps_steps, generator=generator(),
                        active=correct) <= grid.eps_steps
        hit |= pgd_trace(model, x, y, eps=e, step_size=e / 4, steps=grid.eps_steps, loss="margin",
                         generator=generator(), active=correct & ~hit) <= grid.eps_steps
        eps_rows.append({"attack": eps_attack, "eps": e, "robust_acc": acc(hit)})
    top = eps_rows[-1]
    attacks_work = check("(a) eps -> large", eps_attack, top["robust_acc"], large_eps_acc,
                         top["robust_acc"] <= large_eps_acc + 1e-9,
                         f"eps -> large: robust accuracy is still {100 * top['robust_acc']:.1f} % at eps = "
                         f"{top['eps']:g} (expected ~0): the attacks do not work on this model", top["eps"])

    def transferred(attack: str, adv: torch.Tensor, check_name: str, flag: str) -> None:
        nonlocal everything
        with torch.no_grad():
            broken = model(adv).argmax(1) != y
        everything, value = everything | broken, acc(broken)
        single.append((attack, value))
        check(check_name, attack, value, multi_step, value >= multi_step - tolerance - 1e-9,
              f"{attack} ({100 * value:.1f} %) beats every {flag} ({100 * multi_step:.1f} %): "
              "a gradient-masking signature")

    transferred("FGSM", fgsm(model, x, y, eps=eps), "(b) one-step vs multi-step", "multi-step attack")
    if surrogate is not None:
        attack = f"transfer PGD-CE-{grid.transfer_steps} step=eps/4 from the surrogate"
        adv = pgd_linf(surrogate, x, y, eps=eps, step_size=eps / 4, steps=grid.transfer_steps, generator=generator())
        transferred(attack, adv, "(c) transfer vs white-box", "white-box attack")
    attack = name("PGD-CE", grid.small_steps, grid.small_step_fraction)
    value = acc(traces[small] <= grid.small_steps)
    single.append((attack, value))
    check("(d) small-step PGD vs headline", attack, value, headline, value - headline <= masking_gap + 1e-9,
          f"gradient masking suspected: {attack} says {100 * value:.1f} %, {100 * (value - headline):.1f} points "
          f"above the headline ensemble ({100 * headline:.1f} %)")

    worst_attack, worst_acc = min(single, key=lambda item: item[1])
    budget_ok = abs(headline - doubled) <= tolerance + 1e-9
    beaten_ok = headline - worst_acc <= tolerance + 1e-9
    if not budget_ok:
        flags.append(f"not converged: doubling the ensemble's budget moves robust accuracy by "
                     f"{100 * (doubled - headline):+.1f} points ({100 * headline:.1f} % -> {100 * doubled:.1f} %)")
    if not beaten_ok:
        flags.append(f"not converged: {worst_attack} ({100 * worst_acc:.1f} %) beats the headline ensemble "
                     f"by {100 * (headline - worst_acc):.1f} points")
    return Report(n=len(y), eps=eps, seed=seed, quick=quick, clean_acc=correct.float().mean().item(),
                  headline_attack=config.label, headline_acc=headline, doubled_attack=ensembles[1]["attack"],
                  doubled_acc=doubled, worst_attack=worst_attack, worst_acc=worst_acc,
                  worst_margin=headline - worst_acc, all_attacks_acc=acc(everything), zero_grad_frac=zero_grad_frac,
                  converged=budget_ok and beaten_ok and attacks_work, flags=flags, convergence=rows, sanity=sanity,
                  eps_sweep=eps_rows, ensembles=ensembles, grid=asdict(grid), config=asdict(config),
                  seconds=time.perf_counter() - start_time)


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> list[str]:
    """Plain-text table: columns are (key, header, kind), kind "%" (percentage), "+" (signed), "ok" or a format spec."""
    def cell(value, kind):
        if value is None:
            return "-"
        if kind == "ok":
            return "ok" if value else "FLAGGED"
        return f"{100 * value:.1f}" if kind == "%" else f"{value:+.1f}" if kind == "+" else format(value, kind)
    cells = [[header for _, header, _ in columns]] + [[cell(r[k], kind) for k, _, kind in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]


def format_report(report: Report) -> str:
    """The report as plain text: the verdict, the flags and the tables, with the attack named in every row.

    Example:
        >>> print(format_report(convergence_report(model.eval(), x, y, eps=0.3, quick=True)))
    """
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    lines = [f"Convergence report: n={report.n}, eps={report.eps:g}, clean {pct(report.clean_acc)}, "
             f"{'quick' if report.quick else 'full'} grid, seed {report.seed}, {report.seconds:.1f} s",
             f"  headline  {report.headline_attack}: {pct(report.headline_acc)}",
             f"  doubled   {report.doubled_attack}: {pct(report.doubled_acc)} "
             f"({100 * (report.doubled_acc - report.headline_acc):+.1f} points)",
             f"  strongest single attack: {report.worst_attack}: {pct(report.worst_acc)} "
             + (f"(beats the headline by {100 * report.worst_margin:.1f} points)" if report.worst_margin > 0
                else f"(does not beat the headline: {100 * (report.worst_acc - report.headline_acc) + 0:+.1f} points)"),
             f"  all attacks together: {pct(report.all_attacks_acc)}",
             f"Verdict: {'converged' if report.converged else 'NOT converged'}; "
             + (f"{len(report.flags)} flag(s):" if report.flags else "no flags")]
    lines += [f"  - {flag}" for flag in report.flags]
    for rows in ([r for r in report.convergence if r["sweep"] == s] for s in ("steps", "step size", "restarts")):
        if rows:
            lines += ["", f"Convergence in {rows[0]['sweep']} (robust accuracy %, vs headline in points):"]
            lines += _table([{**r, "vs_headline": 100 * r["vs_headline"]} for r in rows],
                            [("attack", "attack", "s"), ("steps", "steps", "g"), ("step_size", "step", ".4g"),
                             ("restarts", "restarts", "g"), ("robust_acc", "robust %", "%"),
                             ("vs_headline", "vs headline", "+")])
    lines += ["", "Sanity checks (Carlini et al. 2019):"]
    lines += _table(report.sanity, [("check", "check", "s"), ("attack", "attack", "s"), ("eps", "eps", "g"),
                                    ("value", "value %", "%"), ("reference", "reference %", "%"),
                                    ("ok", "result", "ok")])
    lines += ["", "Robust accuracy against eps:"]
    lines += _table(report.eps_sweep, [("attack", "attack", "s"), ("eps", "eps", "g"), ("robust_acc", "robust %", "%")])
    return "\n".join(lines)


__all__ = ["Grid", "QUICK_ENSEMBLE", "Report", "convergence_report", "format_report"]
