"""Scaling out on one machine: DDP training throughput at 1 and 2 processes, and a grid as parallel jobs.

1. Adversarial training of the quick preset's AT source (wrn16_1, PGD-7 ... as the preset says) for ``--batches``
   global batches, timed inside the worker after a 2-batch warm-up, three ways in alternation:
   - ``1 process``: plain ``fit`` (no process group), all the machine's threads;
   - ``DDP, 1 process``: the same under ``torchrun --nproc-per-node 1`` (the DDP path's overhead);
   - ``DDP, 2 processes``: ``torchrun --nproc-per-node 2``, half the threads each.
2. ``python -m cartl_kit sweep --preset smoke`` over a grid of transfers, ``--jobs 1`` against ``--jobs 2``,
   wall time of the whole command (process starts included), each in a fresh runs folder holding only the
   grid's teacher.

Writes bench/results/scaling.json and prints two tables.

    .venv/bin/python bench/scaling.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GRID = ["-k", "1", "2", "3", "4", "--method", "tl", "neft"]


def worker(batches: int) -> None:
    """Time ``batches`` global batches of the quick AT source's training; rank 0 prints images/s as JSON."""
    from cartl_kit import distributed
    from cartl_kit.config import get_preset
    from cartl_kit.data import load_dataset, make_loader
    from cartl_kit.runs import build_source_model
    from cartl_kit.train import adversarial_step, fit
    world = distributed.from_env("cpu")
    config = get_preset("quick").source("at")
    data = load_dataset(config.dataset, split="train")
    loader = make_loader(data, batch_size=config.optim.batch_size, seed=0)
    fixed = [batch for _, batch in zip(range(batches + 2), loader)]
    model = build_source_model(config, data, generator=torch.Generator().manual_seed(0))
    rank = world.rank if world else 0
    step = adversarial_step(attack=config.attack, generator=torch.Generator().manual_seed(rank))
    optim = replace(config.optim, epochs=1, warmup_epochs=0, milestones=())
    trained: torch.nn.Module = model
    if world is not None:
        trained = distributed.wrap(model, torch.device("cpu"))

    def feed(part):
        if world is None:
            return part, step
        sharded = distributed.ShardedBatches(part, world)
        return sharded, distributed.scaled_step(step, sharded)

    batches_, step_ = feed(fixed[:2])
    fit(trained, batches_, step_, optim, device="cpu", progress=False)  # warm-up
    batches_, step_ = feed(fixed[2:])
    distributed.barrier()
    start = time.perf_counter()
    fit(trained, batches_, step_, optim, device="cpu", progress=False)
    distributed.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        images = sum(len(x) for x, _ in fixed[2:])
        print(json.dumps({"seconds": seconds, "images_per_s": images / seconds}))
    distributed.leave()


def _training(batches: int, repeats: int) -> list[dict]:
    cores = os.cpu_count() or 1
    script = [str(Path(__file__).resolve()), "--worker", "--batches", str(batches)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    candidates = {
        "1 process": ([sys.executable, *script], cores),
        "DDP, 1 process": ([*torchrun, "--nproc-per-node", "1", *script], cores),
        "DDP, 2 processes": ([*torchrun, "--nproc-per-node", "2", *script], max(1, cores // 2)),
    }
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, (argv, threads) in candidates.items():
            done = subprocess.run(argv, capture_output=True, text=True, timeout=3600,
                                  env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{done.stderr[-2000:]}")
            rates[name].append(json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"])
    base = common.median(rates["1 process"])
    return [{"candidate": name, "threads per process": candidates[name][1],
             "img/s (median)": round(common.median(r), 1), "vs 1 process": f"{common.median(r) / base:.2f}x",
             "runs": [round(v, 1) for v in r]} for name, r in rates.items()]


def _grid(repeats: int) -> list[dict]:
    base = Path(tempfile.mkdtemp(prefix="cartl-scaling-"))
    cli = [sys.executable, "-m", "cartl_kit", "sweep", "--preset", "smoke", *GRID]
    subprocess.run([sys.executable, "-m", "cartl_kit", "source", "--preset", "smoke", "--runs-dir",
                    str(base / "teacher")], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # --jobs shares the cores itself
    times: dict[str, list[float]] = {"--jobs 1": [], "--jobs 2": []}
    try:
        for repeat in range(repeats):
            for name in times:
                root = base / f"{name[-1]}-{repeat}"
                shutil.copytree(base / "teacher", root)
                start = time.perf_counter()
                subprocess.run([*cli, "--runs-dir", str(root), "--jobs", name[-1]], check=True, capture_output=True,
                               env=env, timeout=3600)
                times[name].append(time.perf_counter() - start)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    one = common.median(times["--jobs 1"])
    return [{"command": f"sweep --preset smoke {' '.join(GRID)} {name}", "wall s (median)": round(common.median(t), 1),
             "speed-up": f"{one / common.median(t):.2f}x", "runs": [round(v, 1) for v in t]} for name, t in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="timed global batches of source training")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-grid", action="store_true", help="only the training throughput")
    args = parser.parse_args()
    if args.worker:
        worker(args.batches)
        return
    machine = common.machine()
    training = _training(args.batches, args.repeats)
    grid = [] if args.skip_grid else _grid(args.repeats)
    print(common.table(training, ["candidate", "threads per process", "img/s (median)", "vs 1 process"]))
    if grid:
        print()
        print(common.table(grid, ["command", "wall s (median)", "speed-up"]))
    path = common.write("scaling", {"command": "python bench/scaling.py " + " ".join(sys.argv[1:]),
                                    "machine": machine, "rows": training, "grid": grid})
    print(f"\n{path}")


if __name__ == "__main__":
    main()
