"""What the reproduction runs: the plan of its five tables and the cells (transfers) that fill them.

The five tables are the analogues of the paper's (``CARTL_REFERENCE.md`` §11):

1. ``tradeoff`` — vanilla transfer for every k (accuracy rises with k, robustness falls);
2. ``batchnorm`` — the four BatchNorm cases at one or two k (the 2×2 table);
3. ``lam_beta`` — NEFT β × FDM λ at three k (CARTL's sweep);
4. ``ablation`` — AT→TL, AT→NEFT, AT+FDM→NEFT at the same three k;
5. ``baselines`` — LwF, vanilla and CARTL on the full target set and on the paper's smaller fractions of it
   (50 %, 20 %, 10 %), each trained for the same number of SGD steps as on the full set (``small_data``), so a
   small-data student is trained, not starved.

A ``Plan`` (one of ``PLANS``: ``quick``, ``smoke``, ``fashion``, ``paper``) sets their k, λ, β, seeds and data;
``cells(plan, seed)`` turns it into one ``TransferConfig`` per table cell. Cells of different tables may be
the same run, which then trains once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .config import SourceConfig, TransferConfig, get_preset
from .models import ARCHITECTURES
from .paper_results import BN_CASE_LABELS

BN_CASES_2X2 = ("train-update", "train-reuse", "freeze-update", "vanilla")
BN_LABELS = dict(zip(BN_CASES_2X2, BN_CASE_LABELS.values(), strict=True))  # the columns as the paper writes them
TABLES = ("tradeoff", "batchnorm", "lam_beta", "ablation", "baselines")


@dataclass(frozen=True)
class Plan:
    """What the reproduction runs, per seed (see the module docstring for the five tables).

    ``seeds`` are the teachers' seeds and ``transfer_seeds`` the students' (every teacher seed with every
    transfer seed), so the report can say how much of a cell's spread comes from the teacher and how much from
    the fine-tuning, and judge a claim on pairs of runs that share both seeds.
    ``lams`` are the FDM teachers' weights (the larger first), ``betas`` NEFT's bounds (the largest
    first); the ablation uses ``ablation_lam``/``ablation_beta`` for both NEFT rows, as the paper's
    AT+FDM→NEFT row is its λ = 0.005, β = 0.4 cell. The baselines compare at ``baseline_k`` with CARTL =
    FDM(λ = ablation_lam) + NEFT(β = ablation_beta); LwF fine-tunes ``lwf_k`` blocks with its BatchNorm
    layers updating (``train-update``), weight ``lwf_lam``. ``small_fractions`` are the shares of the target's
    training set of the baselines' small-data columns (the paper's 50 %, 20 %, 10 %), each trained for the full
    set's number of SGD steps.
    """

    preset: str = "quick"
    seeds: tuple[int, ...] = (0, 1, 2)
    transfer_seeds: tuple[int, ...] = (0, 1)
    tradeoff_ks: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    bn_ks: tuple[int, ...] = (3, 4)
    grid_ks: tuple[int, ...] = (3, 4, 5)
    lams: tuple[float, ...] = (0.01, 0.003)
    betas: tuple[float, ...] = (1.0, 0.6, 0.4)
    ablation_lam: float = 0.003
    ablation_beta: float = 0.4
    baseline_k: int = 4
    lwf_k: int = 8
    lwf_lam: float = 0.01
    small_fractions: tuple[float, ...] = (0.5, 0.2, 0.1)

    def __post_init__(self) -> None:
        preset = get_preset(self.preset)
        for name in ("seeds", "transfer_seeds"):
            seeds = getattr(self, name)
            if len(seeds) < 1 or len(set(seeds)) != len(seeds):
                raise ValueError(f"{name} must be distinct, at least one (two or more for a standard deviation), "
                                 f"got {seeds}")
        num_blocks = ARCHITECTURES[preset.arch].num_blocks
        for name in ("tradeoff_ks", "bn_ks", "grid_ks"):
            bad = [k for k in getattr(self, name) if not 1 <= k <= num_blocks]
            if bad or not getattr(self, name):
                raise ValueError(f"{name} must list k in 1..{num_blocks} ({preset.arch} has L = {num_blocks}), got {getattr(self, name)}")
        for k in (self.baseline_k, self.lwf_k):
            if not 1 <= k <= num_blocks:
                raise ValueError(f"k must be in 1..{num_blocks} for {preset.arch}, got {k}")
        if len(self.lams) != 2 or len(self.betas) < 2:
            raise ValueError("lams needs two FDM weights (larger first) and betas at least two NEFT bounds (largest first)")
        if self.ablation_lam not in self.lams:
            raise ValueError(f"ablation_lam must be one of lams {self.lams}, got {self.ablation_lam}")
        if not all(isinstance(f, float) and 0 < f < 1 for f in self.small_fractions):
            raise ValueError(f"small_fractions are shares of the target's training set in (0, 1), e.g. (0.5, 0.2, 0.1), "
                             f"got {self.small_fractions}")


PLANS: dict[str, Plan] = {
    # MNIST digits 0-4 -> 5-9 (the quick preset): the fashion plan's shape, three small-data fractions. 3 teacher seeds
    # x 2 transfer seeds, 9 teachers, 138 transfers, each evaluated under the ensemble (the quick demo's three
    # students took 4.5 min on a 2-core CPU, most of it the ensemble). The earlier plan's 8 k of the trade-off and
    # λ x β grid at k = 3, 4, 5 came to 270 transfers and 21 teachers: about 7 hours of that CPU.
    "quick": Plan(tradeoff_ks=(1, 2, 4, 6, 8), bn_ks=(4,), grid_ks=(4,), betas=(1.0, 0.4)),
    # Seconds, for tests and for trying the command: 8x8 digits, one epoch, PGD-2 training.
    "smoke": Plan(preset="smoke", seeds=(0, 1), transfer_seeds=(0,), tradeoff_ks=(1, 4, 8), bn_ks=(4,),
                  grid_ks=(3, 4), betas=(1.0, 0.4), small_fractions=(0.5,)),
    # Fashion-MNIST 0-4 -> 5-9 (the fashion preset): fewer cells than quick, as its teachers cost about ten CPU
    # minutes each: 3 teacher seeds x 2 transfer seeds, 9 teachers, 120 transfers.
    "fashion": Plan(preset="fashion", tradeoff_ks=(1, 2, 4, 6, 8), bn_ks=(4,), grid_ks=(4,), betas=(1.0, 0.4),
                    small_fractions=(0.5, 0.1)),
    # The paper's scale (for the recipes; it needs a GPU and days).
    "paper": Plan(preset="paper", tradeoff_ks=tuple(range(1, 18)), bn_ks=(8,), grid_ks=(4, 6, 8), lams=(0.01, 0.005),
                  ablation_lam=0.005, baseline_k=8, lwf_k=17),
}


def get_plan(name: str) -> Plan:
    """The plan called ``name`` (a key of ``PLANS``); ValueError naming the choices otherwise."""
    if name not in PLANS:
        raise ValueError(f"unknown reproduction plan {name!r}; choose one of {', '.join(PLANS)}")
    return PLANS[name]


def small_column(fraction: float) -> str:
    """The baselines table's column of a small-data fraction: ``50 %``."""
    return f"{100 * fraction:g} %"


def small_data(config: TransferConfig, fraction: float) -> TransferConfig:
    """``config`` on ``fraction`` of its target's training set (a seeded stratified subset), trained for as many
    SGD steps as on the full set (as near as whole epochs allow; the schedule stretches with the epochs). The
    steps are counted on the two training splits when their data is at hand, else epochs × 1 / fraction. A target
    that is already a subset shrinks by ``fraction``: ``fashion[5-9]@20%`` at 50 % is ``fashion[5-9]@10%``,
    ``mnist5k[5-9]@100/class`` is ``@50/class``."""
    from .data import parse_name
    name = parse_name(config.dataset)
    if name.per_class is not None:
        name = dataclasses.replace(name, per_class=max(1, round(name.per_class * fraction)))
    else:
        name = dataclasses.replace(name, fraction=fraction * (1.0 if name.fraction is None else name.fraction))
    dataset = str(name)
    full, small = (_batches_per_epoch(each, config.optim.batch_size) for each in (config.dataset, dataset))
    scale = full / small if full and small else 1 / fraction
    optim = dataclasses.replace(config.optim, epochs=max(1, round(config.optim.epochs * scale)))
    return dataclasses.replace(config, dataset=dataset, optim=optim)


def _batches_per_epoch(dataset: str, batch_size: int) -> int | None:
    """Batches per epoch of ``dataset``'s training split; None when its data is not on this machine."""
    from .data import load_dataset
    try:
        size = len(load_dataset(dataset, split="train", download=False))
    except (OSError, ValueError):
        return None
    return math.ceil(size / batch_size)


@dataclass(frozen=True)
class Cell:
    """One entry of one table: its row and column labels and the transfer that fills it (for one seed)."""

    table: str
    row: str
    column: str
    config: TransferConfig


def seed_pairs(plan: Plan) -> list[tuple[int, int]]:
    """Every (teacher seed, transfer seed) of the plan."""
    return [(seed, transfer) for seed in plan.seeds for transfer in plan.transfer_seeds]


def cells(plan: Plan, seed: int, transfer_seed: int | None = None) -> list[Cell]:
    """Every cell of the five tables for one teacher seed and one transfer seed (default: the same), cells of
    different tables may share a run."""
    preset = get_preset(plan.preset)
    at = preset.source("at", seed=seed)
    teacher_seed, seed = seed, seed if transfer_seed is None else transfer_seed  # the transfers' seed below

    def fdm(k: int, lam: float) -> SourceConfig:
        return preset.source("fdm", k=k, lam=lam, seed=teacher_seed)

    out = [Cell("tradeoff", f"k = {k}", "vanilla", preset.transfer(at, "tl", k=k, seed=seed)) for k in plan.tradeoff_ks]
    out += [Cell("batchnorm", f"k = {k}", case, preset.transfer(at, "tl", k=k, bn_case=case, seed=seed))
            for k in plan.bn_ks for case in BN_CASES_2X2]
    out += [Cell("lam_beta", f"k = {k}, λ = {lam:g}", f"β = {beta:g}",
                 preset.transfer(fdm(k, lam), "neft", k=k, beta=beta, seed=seed))
            for k in plan.grid_ks for lam in plan.lams for beta in plan.betas]
    for k in plan.grid_ks:
        out += [Cell("ablation", "AT → TL", f"k = {k}", preset.transfer(at, "tl", k=k, seed=seed)),
                Cell("ablation", "AT → NEFT", f"k = {k}", preset.transfer(at, "neft", k=k, beta=plan.ablation_beta, seed=seed)),
                Cell("ablation", "AT+FDM → NEFT", f"k = {k}",
                     preset.transfer(fdm(k, plan.ablation_lam), "neft", k=k, beta=plan.ablation_beta, seed=seed))]
    baselines = {"LwF": preset.transfer(at, "lwf", k=plan.lwf_k, lwf_lam=plan.lwf_lam, bn_case="train-update", seed=seed),
                 "vanilla": preset.transfer(at, "tl", k=plan.baseline_k, seed=seed),
                 "CARTL": preset.transfer(fdm(plan.baseline_k, plan.ablation_lam), "neft", k=plan.baseline_k,
                                          beta=plan.ablation_beta, seed=seed)}
    out += [Cell("baselines", row, "full", config) for row, config in baselines.items()]
    out += [Cell("baselines", row, small_column(fraction), small_data(config, fraction))
            for fraction in plan.small_fractions for row, config in baselines.items()]
    return out


__all__ = ["BN_CASES_2X2", "BN_LABELS", "Cell", "PLANS", "Plan", "TABLES", "cells", "get_plan", "seed_pairs", "small_column",
           "small_data"]
