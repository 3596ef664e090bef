"""Where an adversarial-training step's time goes: the share of the convolutions (forward and backward).

    python bench/profile_step.py [--archs wrn16_4] [--threads N] [--batch 128]

Profiles (torch.profiler, CPU) one step of `at_step.py`'s reference and of its kit candidate (fp32,
channels-last, BatchNorm folded for the attack) after one warm-up step each, and prints, per candidate, the
total self time, the convolutions' part (`mkldnn_convolution` and `convolution_backward`, plus the slow
fallbacks) and the eight largest operators. No trick outside the convolutions can make a step faster than
its convolutions alone: reference total / kit convolution time bounds the speed-up of such tricks.
Writes bench/results/profile_step.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import at_step  # noqa: E402
import common  # noqa: E402

import cartl_kit as ck  # noqa: E402

CONVOLUTIONS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
                "aten::_slow_conv2d_backward", "aten::thnn_conv2d")


def profile_arch(arch: str, batch: int) -> list[dict]:
    torch.manual_seed(0)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    base = ck.create_model(arch, num_classes=10)
    step = ck.adversarial_step(attack=ck.AttackConfig(eps=at_step.EPS, step_size=at_step.STEP, steps=at_step.STEPS),
                               fold_bn=True)
    kit_model, kit_opt = at_step._copy(arch, base, torch.device("cpu"), memory_format=torch.channels_last)
    ref_model, ref_opt = at_step._copy(arch, base, torch.device("cpu"))
    candidates = {"reference": lambda: at_step.reference_step(ref_model, ref_opt, x, y),
                  "kit": lambda: at_step.kit_step_fn(kit_model, kit_opt, step, x, y)}
    rows = []
    for name, fn in candidates.items():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e6
        conv = sum(e.self_cpu_time_total for e in events if e.key in CONVOLUTIONS) / 1e6
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
        rows.append({"arch": arch, "candidate": name, "total_s": round(total, 3), "convolutions_s": round(conv, 3),
                     "convolutions_%": round(100 * conv / total, 1),
                     "largest": ", ".join(f"{e.key.removeprefix('aten::')} {100 * e.self_cpu_time_total / 1e6 / total:.1f}%"
                                          for e in top)})
    reference_total = rows[0]["total_s"]
    for row in rows:
        row["bound_if_only_convolutions_left"] = f"{reference_total / row['convolutions_s']:.2f}x"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["wrn16_4"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_start = common.machine().get("load_average_1min")
    rows = [row for arch in args.archs for row in profile_arch(arch, args.batch)]
    info = common.machine()
    info["load_average_1min_start"] = load_start
    path = common.write("profile_step", {"command": "python " + " ".join(sys.argv), "machine": info, "rows": rows})
    print(common.table(rows, ["arch", "candidate", "total_s", "convolutions_s", "convolutions_%",
                              "bound_if_only_convolutions_left", "largest"]))
    print(f"\n{info['date']}, {info['cpu']}, {info['torch_threads']} threads, load average {load_start} -> "
          f"{info.get('load_average_1min')}; wrote {path}")


if __name__ == "__main__":
    main()
