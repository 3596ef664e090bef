"""Benchmark 4: the kit's attack ensemble against pyautoattack's APGD-CE + APGD-T, with PGD-20 for scale.

    python bench/eval_ensemble.py [--n 500] [--repeats 1] [--models at fdm] [--device cpu]

Models: the quick preset's shipped teachers (WRN-16-1, MNIST digits 0-4, 5 classes): the AT teacher and
the FDM teacher (k 4, lambda 0.01; its gradients are masked). Data: a seeded sample of `--n` images of
the source test split (500 = all of it), one batch for every candidate. eps 0.3 (the preset's).

- kit ensemble: `cartl_kit.ensemble.ensemble_accuracy` with the default `EnsembleConfig` (PGD-25x3
  step=eps, APGD-CE-50, APGD-T-25x3 as a cascade; examples retire at their first misclassified iterate);
- pyautoattack: `cartl_kit.autoattack.autoattack_accuracy(version="custom", attacks=("apgd-ce", "apgd-t"))`
  with pyautoattack's default 100 iterations, one APGD-CE restart and n_target_classes = classes - 1 = 4
  (what AutoAttack's standard cascade runs, its 9 targets capped for 5 classes);
- kit PGD-20: `cartl_kit.attacks.pgd_linf_any`, step 0.04, random start (the kit's fast PGD evaluation).

Per model, the candidates alternate (A B C A B C ...) after a warm-up of the kit's PGD on 32 images.
Besides wall and CPU seconds, it counts the images each candidate passes through the model (a forward
pre-hook): the work, which the load of a shared machine does not change.
Every repetition r draws new random starts (kit generators and pyautoattack's seed set to r). Prints
the table (median seconds, robust accuracy: mean over the repetitions with the range, the ratios
pyautoattack / ensemble and ensemble / PGD-20) and writes bench/results/eval_ensemble.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from cartl_kit.attacks import pgd_linf_any  # noqa: E402
from cartl_kit.autoattack import autoattack_accuracy  # noqa: E402
from cartl_kit.data import as_float, load_dataset, sample  # noqa: E402
from cartl_kit.ensemble import EnsembleConfig, ensemble_accuracy  # noqa: E402
from cartl_kit.runs import SHIPPED_RUNS, load_run  # noqa: E402

MODELS = {"at": "at-wrn16_1-mnist5k_0-4_-s0-e237b6eece", "fdm": "fdm-k4-lam0.01-wrn16_1-mnist5k_0-4_-s0-cd664a656f"}
DATASET, EPS, PGD_STEP, PGD_STEPS = "mnist5k[0-4]", 0.3, 0.04, 20
ENSEMBLE, AUTOATTACK, PGD = "kit ensemble", "pyautoattack APGD-CE + APGD-T", f"kit PGD-{PGD_STEPS}"


def bench_model(name: str, x: torch.Tensor, y: torch.Tensor, repeats: int,
                device: torch.device = torch.device("cpu")) -> tuple[list[dict], dict]:
    model = load_run(SHIPPED_RUNS / MODELS[name]).model.eval().to(device)
    x, y = x.to(device), y.to(device)
    config = EnsembleConfig()
    robust: dict[str, list[float]] = {ENSEMBLE: [], AUTOATTACK: [], PGD: []}
    clean: list[float] = []
    details: dict[str, object] = {}
    round_ = {"r": 0}

    def ensemble():
        generator = torch.Generator().manual_seed(round_["r"])
        result = ensemble_accuracy(model, [(x, y)], eps=EPS, config=config, device=device, generator=generator,
                                   progress=False)
        robust[ENSEMBLE].append(result.robust_acc)
        clean.append(result.clean_acc)
        details.setdefault("ensemble_after", []).append(result.after)

    def autoattack():
        result = autoattack_accuracy(model, x, y, eps=EPS, version="custom", attacks=("apgd-ce", "apgd-t"),
                                     n_targets=4, seed=round_["r"], batch_size=len(y))
        robust[AUTOATTACK].append(result["robust_acc"])
        details["autoattack_label"] = result["attack"]
        details.setdefault("autoattack_robust_masks", []).append(result["robust"])

    def pgd():
        generator = torch.Generator().manual_seed(round_["r"])
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        _, broken = pgd_linf_any(model, x, y, eps=EPS, step_size=PGD_STEP, steps=PGD_STEPS, generator=generator,
                                 active=correct)
        robust[PGD].append((correct & ~broken).float().mean().item())

    pgd_linf_any(model, x[:32], y[:32], eps=EPS, step_size=PGD_STEP, steps=2)  # warm-up
    # The work, independent of the machine's load: images passed through the model (a forward pre-hook;
    # an attack step is one forward and one input-gradient backward, the checks are forwards only).
    seen = {"images": 0}
    hook = model.register_forward_pre_hook(lambda module, args: seen.__setitem__("images", seen["images"] + len(args[0])))
    candidates = {ENSEMBLE: ensemble, AUTOATTACK: autoattack, PGD: pgd}
    times: dict[str, list[float]] = {c: [] for c in candidates}
    cpu: dict[str, list[float]] = {c: [] for c in candidates}
    forwards: dict[str, list[int]] = {c: [] for c in candidates}
    for r in range(repeats):  # alternated, as common.interleaved, but with a new seed per round
        round_["r"] = r
        for candidate, fn in candidates.items():
            seen["images"] = 0
            common.sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            common.sync(device)
            times[candidate].append(time.perf_counter() - start)
            cpu[candidate].append(time.process_time() - start_cpu)
            forwards[candidate].append(seen["images"])
            print(f"  {name} round {r}: {candidate} {times[candidate][-1]:.1f} s (cpu {cpu[candidate][-1]:.1f} s), "
                  f"{seen['images']} image-forwards, robust {100 * robust[candidate][-1]:.2f} %", flush=True)
    hook.remove()

    def percent(values):
        mean = 100 * sum(values) / len(values)
        return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ({100 * min(values):.1f}-{100 * max(values):.1f})"

    med = {c: common.median(t) for c, t in times.items()}
    work = {c: common.median(f) for c, f in forwards.items()}
    rows = [{"model": name, "evaluator": c, "median_s": round(med[c], 1), "cpu_s": round(common.median(cpu[c]), 1),
             "image_forwards": int(work[c]), "robust_acc_%": percent(robust[c]),
             "time_vs_ensemble": f"{med[c] / med[ENSEMBLE]:.2f}x", "work_vs_ensemble": f"{work[c] / work[ENSEMBLE]:.2f}x"}
            for c in candidates]
    summary = {"model": name, "run": MODELS[name], "clean_acc_%": round(100 * clean[0], 2), "times": times,
               "cpu_times": cpu, "image_forwards": forwards,
               "robust_acc_per_repetition": robust, "autoattack_over_ensemble": round(med[AUTOATTACK] / med[ENSEMBLE], 2),
               "autoattack_over_ensemble_work": round(work[AUTOATTACK] / work[ENSEMBLE], 2),
               "ensemble_over_pgd20": round(med[ENSEMBLE] / med[PGD], 2),
               "ensemble_not_weaker": sum(robust[ENSEMBLE]) <= sum(robust[AUTOATTACK]),
               "ensemble_after": details.get("ensemble_after"), "autoattack_label": details.get("autoattack_label"),
               "autoattack_robust_masks": details.get("autoattack_robust_masks")}
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="test images (a seeded random sample; 500 = all)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    info = common.machine()
    test = sample(load_dataset(DATASET, split="test"), args.n)
    x, y = as_float(test.images), test.labels
    rows, summaries = [], []
    for name in args.models:
        model_rows, summary = bench_model(name, x, y, args.repeats, device)
        rows += model_rows
        summaries.append(summary)
    try:
        import os
        info["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    payload = {"benchmark": f"robust evaluation at eps {EPS}, {len(y)} images of {DATASET} test: kit ensemble "
                            f"({EnsembleConfig().label}) vs pyautoattack custom APGD-CE + APGD-T (100 iterations, "
                            f"4 targets, 1 restart) vs kit PGD-{PGD_STEPS} (step {PGD_STEP})",
               "command": "python " + " ".join(sys.argv), "machine": info, "rows": rows, "models": summaries,
               "note": "median seconds over the repetitions; robust accuracy: mean (min-max) over the repetitions, "
                       "each with its own random starts (seed = repetition)"}
    path = common.write("eval_ensemble", payload)
    print(common.table(rows, ["model", "evaluator", "median_s", "cpu_s", "image_forwards", "robust_acc_%",
                              "time_vs_ensemble", "work_vs_ensemble"]))
    for s in summaries:
        print(f"{s['model']}: clean {s['clean_acc_%']} %, pyautoattack/ensemble {s['autoattack_over_ensemble']}x time, "
              f"{s['autoattack_over_ensemble_work']}x image-forwards, "
              f"ensemble/PGD-20 {s['ensemble_over_pgd20']}x time, ensemble not weaker: {s['ensemble_not_weaker']}")
    gpu = f"{torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
    print(f"\n{info['date']}, {gpu}{info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}, "
          f"load average {info.get('load_average_1min')} -> {info.get('load_average_1min_end')}; wrote {path}")


if __name__ == "__main__":
    main()
