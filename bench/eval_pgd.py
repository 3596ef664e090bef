"""Benchmark 2: robust evaluation with PGD-100, the kit against foolbox's LinfPGD (the paper's evaluator).

    python bench/eval_pgd.py [--n 500] [--steps 100] [--repeats 3]

The model is the kit's shipped AT teacher of the quick preset (WRN-16-1, MNIST digits 0-4); the data is
its test split (500 images); the attack is L-inf PGD with the preset's eps 0.3 and step 0.04, random
start, `--steps` steps, on the whole split as one batch for every candidate:

- foolbox: `foolbox.attacks.LinfPGD(steps, abs_stepsize, random_start=True)` on `PyTorchModel(bounds=(0, 1))`;
  robust accuracy = 1 - success rate (final iterate);
- kit, exact: `robust_accuracy(mode="final")`, the same final-iterate metric;
- kit, fast: `robust_accuracy(mode="any", channels_last=True)`: misclassified examples leave the batch
  (any-iterate success, at least as strong as final-iterate), channels-last convolutions.

Candidates alternate (A B C A B C ...) after a warm-up on 64 images. Prints the table (median seconds,
ratio to foolbox, robust accuracy of each: mean over the repetitions, which draw different random
starts, with the range) and writes bench/results/eval_pgd.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import cartl_kit as ck  # noqa: E402
from cartl_kit.config import get_preset  # noqa: E402
from cartl_kit.data import as_float, load_dataset, sample  # noqa: E402
from cartl_kit.runs import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="test images (a seeded random sample; 500 = all)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import foolbox as fb

    device = ck.default_device()
    preset = get_preset("quick")
    attack = dataclasses.replace(preset.evaluation.attack, steps=args.steps)
    teacher = run(preset.source("at"), root="runs", progress=False)  # shipped with the kit: loads at once
    test = sample(load_dataset(preset.source_dataset, split="test"), args.n)
    x, y = as_float(test.images).to(device), test.labels.to(device)

    fast_model = run(preset.source("at"), root="runs", progress=False).model.to(device).eval()
    model = teacher.model.to(device).eval()
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=device)
    pgd = fb.attacks.LinfPGD(steps=args.steps, abs_stepsize=attack.step_size, random_start=True)
    results: dict[str, list[float]] = {}

    def foolbox_run(images=x, labels=y, name="foolbox"):
        _, _, success = pgd(fmodel, images, labels, epsilons=attack.eps)
        results.setdefault(name, []).append(1 - success.float().mean().item())

    def kit(mode, net, channels_last, name, images=x, labels=y):
        def call():
            result = ck.robust_accuracy(net, [(images, labels)], attack=attack, device=device, progress=False,
                                        mode=mode, channels_last=channels_last)
            results.setdefault(name, []).append(result.robust_acc)
            results["clean"] = [result.clean_acc]
        return call

    candidates = {
        "foolbox": foolbox_run,
        "kit exact (final iterate)": kit("final", model, False, "kit exact (final iterate)"),
        "kit fast (any iterate, channels-last)": kit("any", fast_model, True, "kit fast (any iterate, channels-last)"),
    }
    # Warm-up on 64 images (allocator, kernels), then the measured rounds on the full batch.
    small = (x[:64], y[:64])
    foolbox_run(*small, name="warm")
    kit("final", model, False, "warm", *small)()
    kit("any", fast_model, True, "warm", *small)()
    torch.manual_seed(0)
    times = common.interleaved(candidates, repeats=args.repeats, warmup=0, device=device)
    base = common.median(times["foolbox"])
    def percent(values):  # mean over the repetitions (each with its own random starts), and the range
        mean = 100 * sum(values) / len(values)
        return f"{mean:.2f} ({100 * min(values):.1f}-{100 * max(values):.1f})"
    rows = [{"evaluator": name, "median_s": round(common.median(t), 2), "speedup_vs_foolbox": round(base / common.median(t), 2),
             "robust_acc_%": percent(results[name])} for name, t in times.items()]
    info = common.machine()
    payload = {"benchmark": f"PGD-{args.steps} robust evaluation, eps {attack.eps}, step {attack.step_size}, "
                            f"random start, {len(y)} images of {preset.source_dataset} test, AT teacher",
               "command": "python " + " ".join(sys.argv), "machine": info, "clean_acc_%": round(100 * results["clean"][0], 1),
               "rows": rows, "times": times, "robust_acc_per_repetition": {n: results[n] for n in candidates},
               "note": "robust accuracy: mean over the repetitions (min-max in brackets); every repetition draws new random starts"}
    path = common.write("eval_pgd", payload)
    print(common.table(rows, ["evaluator", "median_s", "speedup_vs_foolbox", "robust_acc_%"]))
    print(f"\nclean accuracy {payload['clean_acc_%']} %; {info['date']}, {info['cpu']}, {info['torch_threads']} threads, "
          f"torch {info['torch']}; wrote {path}")


if __name__ == "__main__":
    main()
