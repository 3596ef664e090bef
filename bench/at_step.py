"""Benchmark 1: adversarial-training step throughput, the kit against the reference's approach.

    python bench/at_step.py [--archs wrn16_1 wrn16_4] [--batch 128] [--repeats 5] [--bf16] [--compile]
                            [--ablation] [--threads N]

One step = craft PGD-7 examples (eps 8/255, step 2/255, random start) in eval mode, then one SGD update
on them in train mode: the reference's `ADVTrainer` step at batch 128 on CIFAR-sized inputs (3x32x32).

- reference approach: written here for the comparison, as `CARTL_REFERENCE.md` §3 describes it: fp32,
  NCHW, every parameter set to requires_grad=False while attacking (and back afterwards), a PGD loop
  that calls `loss.backward()` and reads `x.grad`, mean cross-entropy.
- kit: `cartl_kit.fit` for one batch with `cartl_kit.adversarial_step(fold_bn=True)`, with the fastest
  correct settings for the device: channels-last memory format (`fit(..., channels_last=True)`) and the
  attack crafted on the eval-mode model with BatchNorm folded away (`cartl_kit.fold`: the same examples up
  to rounding). On a GPU, also `kit-bf16`: the same plus bf16 autocast (`precision="bf16"`) and cuDNN's
  autotuner (fit's default on CUDA); `--bf16` times it on a CPU too. With `--compile`, also
  `kit-bf16-compiled` (`compile=True`; its attack runs through the compiled model, not the fold).
- `--ablation` adds `kit-no-fold` (fp32, channels-last, no fold: the previous kit setting), on a CPU
  `kit-slices` (the fold with the attack in slices of 32 examples, `attack_chunk=32`: exact, faster for
  the attack alone in a side run, not for the whole step) and, with bf16, `kit-bf16-nchw` (bf16 without
  channels-last), to see what each switch gives.
- `--threads N` sets torch's intra-op threads for every candidate (default: torch's, one per core).

All run on the same model weights and the same batch, alternated (A B A B ...) after a warm-up.
FLOPs per step are analytic: F = the forward FLOPs of the convolutions and the head at this batch
(`common.forward_flops`); a PGD iteration costs a forward and an input-gradient backward (2F), the
update a forward and a full backward (3F), so a PGD-7 step is 17F. The table gives the achieved
TFLOP/s and, on a GPU with a known data-sheet bf16 peak, the model FLOPs utilisation (MFU) against it.
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


def kit_step_fn(model, optimizer, step, x, y, channels_last: bool = True, **settings):
    """One SGD step through ``cartl_kit.fit`` itself (one batch, one epoch, constant rate, channels-last)."""
    return ck.fit(model, [(x, y)], step, ck.OptimConfig(epochs=1, base_lr=0.01, warmup_epochs=0, milestones=()),
                  device=x.device, progress=False, optimizer=optimizer, channels_last=channels_last, **settings)


def _copy(arch: str, base, device: torch.device, **memory):
    model = ck.create_model(arch, num_classes=10).to(device, **memory)
    model.load_state_dict(base.state_dict())
    return model.train(), torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def bench_arch(arch: str, batch: int, repeats: int, device: torch.device, bf16: bool = False,
               compile_: bool = False, ablation: bool = False) -> list[dict]:
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    base = ck.create_model(arch, num_classes=10).to(device)
    flops = 17 * common.forward_flops(base, lambda: base.eval()(x))
    attack = ck.AttackConfig(eps=EPS, step_size=STEP, steps=STEPS)
    steps = {(fold, c): ck.adversarial_step(attack=attack, fold_bn=fold, attack_chunk=c)
             for fold, c in ((False, None), (True, None), (True, 32))}

    ref_model, ref_opt = _copy(arch, base, device)
    candidates = {"reference": (lambda: reference_step(ref_model, ref_opt, x, y), "fp32, NCHW")}
    folded = "BN folded"
    kit_settings = {"kit": ({}, f"fp32, channels-last, {folded}")}
    if ablation:
        kit_settings["kit-no-fold"] = ({"fold_bn": False}, "fp32, channels-last")
    if ablation and device.type == "cpu":
        kit_settings["kit-slices"] = ({"attack_chunk": 32}, "fp32, channels-last, BN folded, attack in slices of 32")
    if bf16:
        kit_settings["kit-bf16"] = ({"precision": "bf16"}, f"bf16 autocast, channels-last, {folded}, cudnn.benchmark")
    if bf16 and ablation:
        kit_settings["kit-bf16-nchw"] = ({"precision": "bf16", "channels_last": False},
                                         f"bf16 autocast, NCHW, {folded}, cudnn.benchmark")
    if bf16 and compile_:
        kit_settings["kit-bf16-compiled"] = ({"precision": "bf16", "compile": True, "fold_bn": False},
                                             "bf16, channels-last, cudnn.benchmark, torch.compile")
    for name, (settings, described) in kit_settings.items():
        settings = dict(settings)
        fold = settings.pop("fold_bn", True)
        step = steps[(fold, settings.pop("attack_chunk", None) if fold else None)]
        memory = torch.channels_last if settings.get("channels_last", True) else torch.contiguous_format
        model, opt = _copy(arch, base, device, memory_format=memory)
        candidates[name] = (lambda m=model, o=opt, st=step, s=settings: kit_step_fn(m, o, st, x, y, **s), described)
    times = common.interleaved({name: fn for name, (fn, _) in candidates.items()},
                               repeats=repeats, warmup=2 if compile_ else 1, device=device)
    peak = common.peak_bf16(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    ref_s = common.median(times["reference"])
    rows = []
    for name, (_, settings) in candidates.items():
        seconds = common.median(times[name])
        rows.append({"arch": arch, "batch": batch, "candidate": name, "settings": settings, "seconds": round(seconds, 4),
                     "img_per_s": round(batch / seconds, 1), "speedup": round(ref_s / seconds, 2),
                     "tflop_per_s": round(flops / seconds / 1e12, 3),
                     "mfu_bf16_%": round(100 * flops / seconds / peak, 1) if peak else "n/a",
                     "flops_per_step": flops, "times": times[name]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=None,
                        help="default: wrn16_1 wrn16_4 on a CPU; also wrn28_4 wrn34_10 on a GPU")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the kit with bf16 autocast (default: on a GPU only)")
    parser.add_argument("--compile", action="store_true", help="with bf16, also time the kit with torch.compile")
    parser.add_argument("--ablation", action="store_true",
                        help="also time the kit without the BatchNorm fold (and, with bf16, without channels-last)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for every candidate (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_start = common.machine().get("load_average_1min")
    device = ck.default_device()
    archs = args.archs or (["wrn16_1", "wrn16_4"] + (["wrn28_4", "wrn34_10"] if device.type == "cuda" else []))
    rows = []
    for arch in archs:
        arch_rows = bench_arch(arch, args.batch, args.repeats, device, compile_=args.compile, ablation=args.ablation,
                               bf16=device.type == "cuda" if args.bf16 is None else args.bf16)
        rows.extend(arch_rows)
        print(f"{arch}: " + ", ".join(f"{r['candidate']} {r['img_per_s']} img/s (×{r['speedup']}, MFU {r['mfu_bf16_%']})"
                                      for r in arch_rows), flush=True)
    info = common.machine()
    info["load_average_1min_start"] = load_start
    path = common.write("at_step", {"benchmark": "adversarial-training step (PGD-7, batch %d)" % args.batch,
                                     "command": "python " + " ".join(sys.argv), "machine": info, "rows": rows})
    print()
    print(common.table(rows, ["arch", "batch", "candidate", "settings", "img_per_s", "speedup", "tflop_per_s",
                              "mfu_bf16_%"]))
    print(f"\n{info['date']}, {info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}, load average "
          f"{load_start} -> {info.get('load_average_1min')}; wrote {path}")


if __name__ == "__main__":
    main()
