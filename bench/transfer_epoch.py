"""Benchmark 3: one fine-tuning epoch for several k, on cached extractor features against recomputing them.

    python bench/transfer_epoch.py [--ks 1 2 4 6 8] [--repeats 5]

The quick preset's transfer: its shipped AT teacher (WRN-16-1, L = 8 blocks), the target split
mnist5k[5-9] train, batch 64, vanilla fine-tuning of the last k blocks (BatchNorm case vanilla =
freeze-reuse, no augmentation: the case where `cartl_kit.cache` applies).

- plain: `fit` for one epoch on the images: every step runs the frozen stem and blocks 1..L-k again;
- cached: `fit` for one epoch on `CachedFeatures` through `TunedTail`: only blocks L-k+1..L run.
  Computing the features (`extract`, once per run) is timed apart, and the table also gives the
  whole run of the preset's epochs, extraction included.
- cached-cl: the same in the channels-last memory format (features stored channels-last once), the
  kit's fastest setting: `run(..., channels_last=True)`.

What caching can buy at most is set by FLOPs: a step of the plain path runs the extractor forward
(E FLOPs) and the tuned blocks forward and backward (about 3T, T their forward FLOPs); the cached path
runs only the 3T. `flop_bound` = (E + 3T) / 3T, with E and T counted by `common.forward_flops`.

Both candidates train their own copy of the same student and alternate (A B A B ...) after a warm-up
epoch. Prints a table and writes bench/results/transfer_epoch.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import cartl_kit as ck  # noqa: E402
from cartl_kit.cache import CachedFeatures, TunedTail, extract  # noqa: E402
from cartl_kit.config import get_preset  # noqa: E402
from cartl_kit.data import as_float, load_dataset, make_loader  # noqa: E402
from cartl_kit.runs import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 6, 8])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = ck.default_device()
    preset = get_preset("quick")
    teacher = run(preset.source("at"), root="runs", progress=False).model
    data = load_dataset(preset.target_dataset, split="train")
    optim = preset.transfer_optim
    epochs = optim.epochs

    def one_epoch(model, batches, channels_last=False):
        return lambda: ck.fit(model, batches, ck.natural_step,
                              ck.OptimConfig(epochs=1, base_lr=optim.base_lr, warmup_epochs=0, milestones=()),
                              device=device, progress=False, channels_last=channels_last)

    rows = []
    for k in args.ks:
        students = [ck.make_student(teacher, k=k, num_classes=data.num_classes, bn_case="vanilla").to(device)
                    for _ in range(3)]
        for student in students[1:]:
            student.load_state_dict(students[0].state_dict())
        plain_loader = make_loader(data, batch_size=optim.batch_size, device=device, seed=0)
        cached_loader = make_loader(data, batch_size=optim.batch_size, device=device, seed=0)
        cl_loader = make_loader(data, batch_size=optim.batch_size, device=device, seed=0)
        extract_times = []
        for _ in range(3):
            start = time.perf_counter()
            features = extract(students[1], cached_loader, k=k)
            common.sync(device)
            extract_times.append(time.perf_counter() - start)
        cached = CachedFeatures(cached_loader, features)
        cached_cl = CachedFeatures(cl_loader, features.contiguous(memory_format=torch.channels_last)
                                   if features.dim() == 4 else features)  # k = 1: pooled vectors
        times = common.interleaved({"plain": one_epoch(students[0], plain_loader),
                                    "cached": one_epoch(TunedTail(students[1], k=k), cached),
                                    "cached-cl": one_epoch(TunedTail(students[2], k=k), cached_cl, channels_last=True)},
                                   repeats=args.repeats, warmup=1, device=device)
        plain_s, cached_s, cl_s, extract_s = (common.median(times["plain"]), common.median(times["cached"]),
                                              common.median(times["cached-cl"]), common.median(extract_times))
        x = as_float(cached_loader.images[:optim.batch_size].to(device))
        start = teacher.num_blocks - k
        extractor_flops = common.forward_flops(students[0], lambda: students[0].forward_features(x, upto=start))
        f = students[0].forward_features(x, upto=start)
        tuned_flops = common.forward_flops(students[0], lambda: students[0].forward_from(f, start=start))
        rows.append({"k": k, "plain_epoch_s": round(plain_s, 3), "cached_epoch_s": round(cached_s, 3),
                     "epoch_speedup": round(plain_s / cached_s, 2), "cached_cl_epoch_s": round(cl_s, 3),
                     "cl_epoch_speedup": round(plain_s / cl_s, 2),
                     "flop_bound": round((extractor_flops + 3 * tuned_flops) / (3 * tuned_flops), 2),
                     "extract_s": round(extract_s, 3),
                     f"run_{epochs}_epochs_speedup": round(epochs * plain_s / (extract_s + epochs * cl_s), 2),
                     "times": times})
        print(f"k={k}: plain {plain_s:.3f} s/epoch, cached {cached_s:.3f} s/epoch (×{plain_s / cached_s:.2f}), "
              f"cached channels-last {cl_s:.3f} (×{plain_s / cl_s:.2f}), FLOP bound ×{rows[-1]['flop_bound']}, "
              f"extraction {extract_s:.3f} s", flush=True)
    info = common.machine()
    path = common.write("transfer_epoch", {
        "benchmark": f"one vanilla fine-tuning epoch, {preset.arch} (L = {teacher.num_blocks}), {data.name} train "
                     f"({len(data)} images), batch {optim.batch_size}",
        "command": "python " + " ".join(sys.argv), "machine": info, "rows": rows})
    print()
    print(common.table(rows, ["k", "plain_epoch_s", "cached_epoch_s", "epoch_speedup", "cached_cl_epoch_s",
                              "cl_epoch_speedup", "flop_bound", "extract_s", f"run_{epochs}_epochs_speedup"]))
    print(f"\n{info['date']}, {info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}; wrote {path}")


if __name__ == "__main__":
    main()
