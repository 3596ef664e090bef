"""Benchmark 1: adversarial-training step throughput, the kit against the reference's approach.

    python bench/at_step.py [--archs wrn16_1 wrn16_4] [--batch 128] [--repeats 5]

One step = craft PGD-7 examples (eps 8/255, step 2/255, random start) in eval mode, then one SGD update
on them in train mode: the reference's `ADVTrainer` step at batch 128 on CIFAR-sized inputs (3x32x32).

- reference approach: written here for the comparison, as `CARTL_REFERENCE.md` §3 describes it: fp32,
  NCHW, every parameter set to requires_grad=False while attacking (and back afterwards), a PGD loop
  that calls `loss.backward()` and reads `x.grad`, mean cross-entropy.
- kit: `cartl_kit.fit` for one batch with `cartl_kit.adversarial_step`, with the fastest correct settings
  for the device: channels-last memory format (`fit(..., channels_last=True)`).

Both run on the same model weights and the same batch, alternated (A B A B ...) after a warm-up.
Prints a table and writes bench/results/at_step.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import cartl_kit as ck  # noqa: E402

EPS, STEP, STEPS = 8 / 255, 2 / 255, 7


def reference_step(model, optimizer, x, y):
    """The reference's approach (CARTL_REFERENCE.md §3), written plainly."""
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(False)
    model.eval()
    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(STEPS):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        with torch.no_grad():
            x_adv = x_adv + STEP * x_adv.grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    for p in params:
        p.requires_grad_(True)
    model.train()
    loss = F.cross_entropy(model(x_adv.detach()), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def kit_step_fn(model, optimizer, step, x, y):
    """One SGD step through ``cartl_kit.fit`` itself (one batch, one epoch, constant rate, channels-last)."""
    return ck.fit(model, [(x, y)], step, epochs=1, base_lr=0.01, warmup_epochs=0, milestones=(), device=x.device,
                  progress=False, optimizer=optimizer, channels_last=True)


def bench_arch(arch: str, batch: int, repeats: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    base = ck.create_model(arch, num_classes=10).to(device)

    ref_model = ck.create_model(arch, num_classes=10).to(device)
    ref_model.load_state_dict(base.state_dict())
    ref_model.train()
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    kit_model = ck.create_model(arch, num_classes=10).to(device, memory_format=torch.channels_last)
    kit_model.load_state_dict(base.state_dict())
    kit_model.train()
    kit_opt = torch.optim.SGD(kit_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    step = ck.adversarial_step(eps=EPS, step_size=STEP, steps=STEPS)

    times = common.interleaved({
        "reference": lambda: reference_step(ref_model, ref_opt, x, y),
        "kit": lambda: kit_step_fn(kit_model, kit_opt, step, x, y),
    }, repeats=repeats, warmup=1, device=device)
    ref_s, kit_s = common.median(times["reference"]), common.median(times["kit"])
    return {"arch": arch, "batch": batch, "repeats": repeats, "reference_s": round(ref_s, 4), "kit_s": round(kit_s, 4),
            "reference_img_per_s": round(batch / ref_s, 1), "kit_img_per_s": round(batch / kit_s, 1),
            "speedup": round(ref_s / kit_s, 2), "kit_settings": "channels_last", "times": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=None,
                        help="default: wrn16_1 wrn16_4 on a CPU; also wrn28_4 wrn34_10 on a GPU")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = ck.default_device()
    archs = args.archs or (["wrn16_1", "wrn16_4"] + (["wrn28_4", "wrn34_10"] if device.type == "cuda" else []))
    rows = []
    for arch in archs:
        row = bench_arch(arch, args.batch, args.repeats, device)
        rows.append(row)
        print(f"{arch}: reference {row['reference_img_per_s']} img/s, kit {row['kit_img_per_s']} img/s, "
              f"×{row['speedup']}", flush=True)
    info = common.machine()
    path = common.write("at_step", {"benchmark": "adversarial-training step (PGD-7, batch %d)" % args.batch,
                                     "command": "python " + " ".join(sys.argv), "machine": info, "rows": rows})
    print()
    print(common.table(rows, ["arch", "batch", "reference_img_per_s", "kit_img_per_s", "speedup", "kit_settings"]))
    print(f"\n{info['date']}, {info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}; wrote {path}")


if __name__ == "__main__":
    main()
