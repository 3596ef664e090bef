"""The benchmarks run end to end (tiny settings) and write their JSON. No timing is asserted here:
speed is measured by running bench/ itself, side by side, on an otherwise idle machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script, args, rows", [
    ("at_step.py", ["--archs", "wrn16_1", "--batch", "4", "--repeats", "1", "--bf16"], 3),
    ("eval_pgd.py", ["--n", "32", "--steps", "2", "--repeats", "1"], 3),
    ("transfer_epoch.py", ["--ks", "2", "--repeats", "1"], 1),
    ("fashion_sizing.py", ["--batches", "1", "--repeats", "1", "--widths", "wrn16_1"], 1),
])
def test_benchmark_runs_and_writes_its_table(tmp_path, script, args, rows):
    env = {**os.environ, "CARTL_BENCH_RESULTS": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads((tmp_path / script.replace(".py", ".json")).read_text())
    assert len(written["rows"]) == rows and written["machine"]["cores"] and written["command"].endswith(" ".join(args))
    assert "|" in done.stdout  # the Markdown table


def test_forward_flops_counts_two_per_multiply_add():
    sys.path.insert(0, str(BENCH))
    import common

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1, bias=False), torch.nn.Flatten(), torch.nn.Linear(32, 3))
    x = torch.rand(5, 1, 4, 4)
    # conv: 5 images x 2x4x4 outputs x 1x3x3 weights; linear: 5 x 3 outputs x 32 inputs; 2 FLOPs each
    assert common.forward_flops(model, lambda: model(x)) == 2 * (5 * 32 * 9 + 5 * 3 * 32)
    assert common.peak_bf16("NVIDIA H100 80GB HBM3") == 989e12 and common.peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert common.peak_bf16("Some Other GPU") is None
