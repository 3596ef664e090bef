"""Shared helpers of the benchmarks: side-by-side timing, the machine's description, JSON and tables."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

# Where the JSON goes: bench/results/, or CARTL_BENCH_RESULTS (the smoke tests write to a temporary folder).
RESULTS = Path(os.environ.get("CARTL_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def machine() -> dict:
    """What the numbers were measured on (``cartl_kit.store.machine``) and how busy the machine was."""
    from cartl_kit.store import machine as kit_machine
    info = kit_machine()
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(candidates: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
                device: torch.device = torch.device("cpu")) -> dict[str, list[float]]:
    """Seconds per call of each candidate, measured in alternation (A B A B ...) after ``warmup`` rounds,
    so that a slow phase of the machine hits every candidate alike."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def write(name: str, payload: dict, folder: Path | None = None) -> Path:
    """Write ``bench/results/<name>.json`` (or ``<folder>/<name>.json``) and return its path."""
    folder = RESULTS if folder is None else folder
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (dicts) in ``columns`` order."""
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


from cartl_kit.models import forward_flops  # noqa: E402,F401  (the benchmarks' FLOP counter)


# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets, by device name.
PEAK_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12,
             "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def peak_bf16(device_name: str) -> float | None:
    """The data-sheet bf16 peak of a GPU named ``device_name``, or None if unknown."""
    for key, value in PEAK_BF16.items():
        if key in device_name:
            return value
    return None
