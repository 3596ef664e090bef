"""GPU checks that are not timings: bf16 against fp32, and the paper preset end to end on CUDA (issue 20).

    python bench/gpu_check.py precision   [--device cuda] [--n 500]
    python bench/gpu_check.py paper-epoch [--device cuda] [--train 1024] [--eval-n 64]
    python bench/gpu_check.py all --dry-run     # both, tiny, on the CPU: checks this script, not a GPU

- precision: `cartl_kit.compare_precision` on the quick preset's shipped AT teacher (WRN-16-1) and the
  first `--n` images of its test split (a seeded sample), PGD-20 at eps 0.3 (step 0.04), fp32 against bf16
  autocast, the same random starts: do their robust accuracies agree within one point?
  Writes bench/results/gpu_precision.json.
- paper-epoch: the `paper` preset (WRN-34-10, CIFAR-100, PGD-7 adversarial training, batch 128) on random
  CIFAR-100-shaped images written in the real on-disk format (`cifar-100-python/{train,test,meta}` pickles)
  into a temporary `$CARTL_DATA`, through `cartl_kit.run` as a user would run it:
  1. one epoch with the defaults (cuDNN autotuner on) and channels-last, then `evaluate_run` with the
     preset's ensemble on `--eval-n` test images (device placement, autotuner, the ensemble on CUDA);
  2. deterministic algorithms on (`torch.use_deterministic_algorithms(True, warn_only=True)`, which turns
     the kit's autotuner off): two epochs straight, and two epochs interrupted after the first and resumed
     from `checkpoint.pt`; are the final weights equal? (warnings about nondeterministic CUDA kernels are
     recorded: with any, equality is only up to their rounding)
  Writes bench/results/gpu_paper_epoch.json. Images are random, so the accuracies mean nothing: this
  checks that it runs, not what it learns.

`--dry-run` runs on the CPU with WRN-16-1 instead of WRN-34-10, 16 training images, 2 evaluation images,
n = 16 and PGD-2 for the precision check, and writes nothing to bench/results (a temporary folder).
Exit status 1 when a check fails, with the failed checks on the last line.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: deterministic cuBLAS

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TEACHER = "at-wrn16_1-mnist5k_0-4_-s0-e237b6eece"  # the quick preset's shipped AT teacher


def write_random_cifar100(root: Path, *, train: int, test: int, seed: int = 0) -> None:
    """Random images and labels in CIFAR-100's python format (the pickles torchvision downloads) under ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("test", test)):
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        fine[:100] = list(range(min(n, 100)))  # every class present when n >= 100
        batch = {"filenames": [f"{name}_{k}.png" for k in range(n)], "batch_label": name, "fine_labels": fine,
                 "coarse_labels": [label // 5 for label in fine],
                 "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"fine{k}" for k in range(100)],
                                                "coarse_label_names": [f"coarse{k}" for k in range(20)]}))


def check_precision(device: torch.device, n: int, steps: int) -> dict:
    import cartl_kit as ck
    from cartl_kit.data import as_float, load_dataset, sample
    from cartl_kit.runs import SHIPPED_RUNS, load_run

    model = load_run(SHIPPED_RUNS / TEACHER).model.eval()
    test = sample(load_dataset("mnist5k[0-4]", split="test"), n)
    x, y = as_float(test.images), test.labels
    batches = [(x[i:i + 250], y[i:i + 250]) for i in range(0, len(y), 250)]
    attack = ck.AttackConfig(eps=0.3, step_size=0.04, steps=steps)
    started = time.perf_counter()
    report = ck.compare_precision(model, batches, attack=attack, max_examples=n, device=device, tolerance=0.01)
    return {"model": TEACHER, "examples": n, "attack": dataclasses.asdict(attack), "device": str(device),
            "fp32": dataclasses.asdict(report["fp32"]), "bf16": dataclasses.asdict(report["bf16"]),
            "clean_diff": report["clean_diff"], "robust_diff": report["robust_diff"], "agree_within_1_point": report["agree"],
            "seconds": round(time.perf_counter() - started, 1)}


def _state(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in run.model.state_dict().items()}


class Interrupted(Exception):
    pass


def check_paper_epoch(device: torch.device, *, train: int, eval_n: int, arch: str | None) -> dict:
    from cartl_kit.config import get_preset

    preset = get_preset("paper").with_eval_examples(eval_n)
    out: dict = {"device": str(device), "train_images": train, "eval_images": eval_n}
    data_before = os.environ.get("CARTL_DATA")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CARTL_DATA"] = str(Path(tmp) / "data")
        try:
            _paper_runs(out, Path(tmp), preset, device, train=train, eval_n=eval_n, arch=arch)
        finally:
            if data_before is None:
                os.environ.pop("CARTL_DATA", None)
            else:
                os.environ["CARTL_DATA"] = data_before
    return out


def _paper_runs(out: dict, tmp: Path, preset, device: torch.device, *, train: int, eval_n: int, arch: str | None) -> None:
    from cartl_kit.runs import evaluate_run, run

    write_random_cifar100(tmp / "data", train=train, test=max(eval_n, 100))
    source = preset.source("at", arch=arch)
    one = dataclasses.replace(source, optim=dataclasses.replace(source.optim, epochs=1))
    out["config"] = {"arch": one.arch, "dataset": one.dataset, "batch_size": one.optim.batch_size,
                     "attack": dataclasses.asdict(one.attack)}

    # 1. one epoch, defaults (autotuner on on CUDA), channels-last; the preset's evaluation
    started = time.perf_counter()
    finished = run(one, root=tmp / "runs", device=device, progress=False, channels_last=True, shipped=False)
    out["epoch_seconds"] = round(time.perf_counter() - started, 1)
    out["cudnn_benchmark_after_epoch"] = torch.backends.cudnn.benchmark
    out["history"] = finished.history
    started = time.perf_counter()
    result = evaluate_run(finished, preset.evaluation, device=device, progress=False)
    out["evaluation"] = {"name": preset.evaluation.name, "result": result,
                         "seconds": round(time.perf_counter() - started, 1)}

    # 2. determinism and resume: two epochs straight against one epoch, an interruption, and a resume
    two = dataclasses.replace(source, optim=dataclasses.replace(source.optim, epochs=2))
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            straight = run(two, root=tmp / "straight", device=device, progress=False, shipped=False)
            out["cudnn_benchmark_when_deterministic"] = torch.backends.cudnn.benchmark

            def stop_after_first(record: dict) -> None:
                if record["epoch"] == 1:
                    raise Interrupted

            try:
                run(two, root=tmp / "resumed", device=device, progress=False, shipped=False, callback=stop_after_first)
                out["interrupted"] = False
            except Interrupted:
                out["interrupted"] = True
            out["checkpoint_left"] = any((tmp / "resumed").glob("*/checkpoint.pt"))
            resumed = run(two, root=tmp / "resumed", device=device, progress=False, shipped=False)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    out["nondeterminism_warnings"] = sorted({str(w.message).splitlines()[0][:200] for w in caught
                                             if "deterministic" in str(w.message)})
    a, b = _state(straight), _state(resumed)
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    out["resume"] = {"epochs": [r["epoch"] for r in resumed.history], "bitwise_equal": all(torch.equal(a[k], b[k]) for k in a),
                     "max_abs_diff": diff}


def failed_checks(name: str, result: dict) -> list[str]:
    if name == "precision":
        return [] if result["agree_within_1_point"] else ["precision: bf16 and fp32 robust accuracy differ by more than 1 point"]
    failed = []
    if not result["interrupted"] or not result["checkpoint_left"] or result["resume"]["epochs"] != [1, 2]:
        failed.append("paper-epoch: the interrupted run did not leave a checkpoint and resume from it")
    exact = result["resume"]["bitwise_equal"]
    if not exact and (not result["nondeterminism_warnings"] or result["resume"]["max_abs_diff"] > 1e-3):
        failed.append(f"paper-epoch: resumed weights differ from the straight run's by {result['resume']['max_abs_diff']:.3g}")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=["precision", "paper-epoch", "all"])
    parser.add_argument("--device", default=None, help="default: cuda (refused when absent), cpu with --dry-run")
    parser.add_argument("--n", type=int, default=500, help="precision: test images (500 = all)")
    parser.add_argument("--train", type=int, default=1024, help="paper-epoch: random training images")
    parser.add_argument("--eval-n", type=int, default=64, help="paper-epoch: test images for the ensemble")
    parser.add_argument("--dry-run", action="store_true", help="tiny settings on the CPU, results to a temporary folder")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU", file=sys.stderr)
        return 2
    results_dir = Path(tempfile.mkdtemp()) if args.dry_run else common.RESULTS
    names = ["precision", "paper-epoch"] if args.check == "all" else [args.check]
    failed: list[str] = []
    for name in names:
        if name == "precision":
            result = check_precision(device, 16 if args.dry_run else args.n, 2 if args.dry_run else 20)
        else:
            result = check_paper_epoch(device, train=16 if args.dry_run else args.train,
                                       eval_n=2 if args.dry_run else args.eval_n, arch="wrn16_1" if args.dry_run else None)
        payload = {"check": name, "command": "python " + " ".join(sys.argv), "machine": common.machine(),
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "result": result}
        path = common.write("gpu_" + name.replace("-", "_"), payload, results_dir)
        failed += failed_checks(name, result)
        summary = {k: v for k, v in result.items() if k not in ("history", "fp32", "bf16", "config")}
        print(f"{name}: {summary}\n  wrote {path}", flush=True)
    if failed:
        print("FAILED: " + "; ".join(failed))
        return 1
    print("gpu_check: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
