"""Full-scale recipes: the ``sweep`` commands of the ``paper`` preset that fill the paper's tables, and their compute.

``RECIPES`` lists one command per table of ``CARTL_REFERENCE.md`` §11 with the paper's numbers it fills (read from
``paper_results``); ``recipe_flops`` estimates its FLOPs analytically, and ``recipes_markdown(rates)`` renders the
list, with GPU-hours where ``rates`` (``measured_gpu_rates(path)`` of a ``bench/at_step.py`` result file, given by
the caller) holds a GPU throughput for the architecture.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

from .config import get_preset
from .paper_results import ABLATION, BASELINES, BN_ABLATION, LAM_BETA, row_text

# Image counts of the splits (train, test), for the compute estimates.
SPLIT_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "svhn": (73_257, 26_032),
               "gtsrb": (26_640, 12_630)}

Recipe = tuple[str, str, str, str, str, int, int, int, str]
_C10_SVHN = BASELINES["CIFAR-10 → SVHN"]

# (paper table, source, target, arch, sweep flags, transfers, AT teachers, FDM teachers, the paper's numbers it fills)
RECIPES: list[Recipe] = [
    ("§11.1 BatchNorm, CIFAR-100 → CIFAR-10, k = 8", "cifar100", "cifar10", "wrn34_10",
     "-k 8 --method tl --bn-case train-update train-reuse freeze-update vanilla", 4, 1, 0,
     f"{row_text(BN_ABLATION['CIFAR-100 → CIFAR-10, k = 8'])} (the four cases in the order of the command)"),
    ("§11.1 BatchNorm, CIFAR-10 → SVHN, k = 5, 6 (WRN-28-4)", "cifar10", "svhn", "wrn28_4",
     "-k 5 6 --method tl --bn-case train-update train-reuse freeze-update vanilla", 8, 1, 0,
     "; ".join(f"k = {k}: {row_text(BN_ABLATION[f'CIFAR-10 → SVHN, k = {k}'])}" for k in (5, 6))),
    ("§11.2 λ × β, CIFAR-100 → CIFAR-10", "cifar100", "cifar10", "wrn34_10",
     "-k 4 6 8 --teacher fdm --lam 0.01 0.005 --method neft --beta 1.0 0.6 0.4", 18, 0, 6,
     f"the 18 cells of §11.2 (table 3 of this report), e.g. k = 4, 6, 8 at λ = 0.005, β = 0.4: "
     f"{', '.join(str(LAM_BETA[k, 0.005][0.4]) for k in (4, 6, 8))}"),
    ("§11.3 ablation (TL and NEFT rows; the FDM row is §11.2's λ = 0.005, β = 0.4)", "cifar100", "cifar10",
     "wrn34_10",
     "-k 4 6 8 --method tl neft --beta 0.4", 6, 1, 0,
     f"TL {row_text(ABLATION['AT → TL'])}; NEFT {row_text(ABLATION['AT → NEFT'])} (k = 4, 6, 8)"),
    ("§11.4 CIFAR-10 → SVHN, vanilla and LwF (WRN-28-4, k = 6)", "cifar10", "svhn", "wrn28_4",
     "-k 6 --method tl lwf", 2, 1, 0, f"vanilla {_C10_SVHN['vanilla']}, LwF {_C10_SVHN['LwF']}"),
    ("§11.4 CIFAR-10 → SVHN, CARTL", "cifar10", "svhn", "wrn28_4",
     "-k 6 --teacher fdm --lam 0.005 --method neft --beta 0.4", 1, 0, 1, str(_C10_SVHN["CARTL"])),
]


def measured_gpu_rates(path: str | os.PathLike = "bench/results/at_step.json") -> dict[str, tuple[float, str]]:
    """arch → (FLOP/s of the kit's fastest adversarial-training step, where and when) from the result file of
    ``bench/at_step.py`` at ``path``, if it was measured on a GPU; empty otherwise (or when it is missing)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    machine = data.get("machine", {})
    if machine.get("device") != "cuda":
        return {}
    rates: dict[str, tuple[float, str]] = {}
    for row in data.get("rows", []):
        if str(row.get("candidate", "")).startswith("kit"):
            rate = row["tflop_per_s"] * 1e12
            if rate > rates.get(row["arch"], (0.0, ""))[0]:
                rates[row["arch"]] = (rate, f"{machine.get('gpu')}, {machine.get('date')}")
    return rates


@functools.lru_cache(maxsize=None)
def _forward_flops_32(arch: str) -> int:
    """Forward FLOPs of ``arch`` on one 3x32x32 image (10 classes)."""
    from .models import create_model, forward_flops
    model = create_model(arch, num_classes=10).eval()
    return forward_flops(model, lambda: model(torch.zeros(1, 3, 32, 32)))


def recipe_flops(source: str, target: str, arch: str, transfers: int, at_teachers: int, fdm_teachers: int) -> float:
    """Analytic FLOPs of one recipe at the paper preset's schedule (100 epochs, PGD-7 training, PGD-100 on the
    full test set): teachers 17F per training image-epoch (PGD-7 + update), FDM one more forward and backward;
    transfers 3F (the extractor's part is less; this is an upper estimate); evaluation 201F per test image
    (100 forward + input-gradient passes and the final forward). F is the forward FLOPs at 32x32."""
    preset = get_preset("paper")
    forward = _forward_flops_32(arch)
    (n_src, _), (n_tgt, n_test) = SPLIT_SIZES[source], SPLIT_SIZES[target]
    src_epochs, tgt_epochs = preset.source_optim.epochs, preset.transfer_optim.epochs
    teachers = at_teachers * 17 * forward * n_src * src_epochs + fdm_teachers * 20 * forward * n_src * src_epochs
    tuning = transfers * 3 * forward * n_tgt * tgt_epochs
    evaluation = transfers * 201 * forward * n_test
    return teachers + tuning + evaluation


def recipes_markdown(rates: dict[str, tuple[float, str]] | None = None) -> str:
    """The ``sweep`` commands of the paper preset for each table, with their compute; GPU-hours where ``rates``
    (``measured_gpu_rates``: arch → FLOP/s and where it was measured) has the architecture."""
    lines = ["Each command runs one seed (`--seed 1`, `--seed 2` for more); finished runs are skipped, so shared "
             "teachers train once. Compute is analytic (see `reproduce.recipe_flops`); GPU-hours divide it by the "
             "FLOP rate that `bench/at_step.py` measured for the kit's bf16 adversarial-training step on a GPU, "
             "when such a measurement is in `bench/results/at_step.json`.", "",
             "| paper table | command | the paper's numbers it fills (clean / robust %) | compute (PFLOP) | GPU-hours |",
             "|---|---|---|---|---|"]
    rates = rates or {}
    for title, source, target, arch, flags, transfers, at, fdm, paper in RECIPES:
        command = (f"python -m cartl_kit sweep --preset paper --source {source} --target {target} --arch {arch} {flags}")
        flops = recipe_flops(source, target, arch, transfers, at, fdm)
        rate = rates.get(arch)
        hours = (f"{flops / rate[0] / 3600:.0f} (at {rate[0] / 1e12:.0f} TFLOP/s, {rate[1]})" if rate
                 else "not measured: no GPU benchmark of this architecture yet")
        lines.append(f"| {title} | `{command}` | {paper} | {flops / 1e15:,.0f} | {hours} |")
    return "\n".join(lines)


__all__ = ["RECIPES", "SPLIT_SIZES", "measured_gpu_rates", "recipe_flops", "recipes_markdown"]
