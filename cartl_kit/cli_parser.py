"""The command line's argument parser: flags, types, choices and help (the commands live in ``__main__``).

A usage error is one line on stderr with exit status 2, naming the allowed values.
"""

from __future__ import annotations

import argparse
from typing import Callable, Mapping, NoReturn


def finite_float(text: str) -> float:
    """argparse type: a finite number ('inf' and 'nan' would reach the attack as NaN pixels)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def dataset_name(text: str) -> str:
    """argparse type: a dataset name the kit reads, in its one spelling (``DIGITS[5-9]`` -> ``digits[5-9]``)."""
    from .config import canonical_dataset
    try:
        return canonical_dataset(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), naming the allowed values."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}\n")


def build_parser(commands: Mapping[str, Callable]) -> argparse.ArgumentParser:
    """The argument parser; ``commands`` maps each command name to the function that runs it."""
    from .config import EVAL_METHODS, PRESETS, SOURCE_METHODS, TRANSFER_METHODS
    from .models import ARCHITECTURES
    from .transfer import BN_CASE_ALIASES, BN_CASES

    top = OneLineParser(prog="python -m cartl_kit", description="CARTL teaching and analysis kit")
    sub = top.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    def common(p, *, runs=True):
        p.add_argument("--preset", default="quick", choices=list(PRESETS), help="experiment scale (default quick)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
        if runs:
            p.add_argument("--runs-dir", default=None, help="runs folder (default $CARTL_RUNS or ./runs)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    def sync_bn(p):
        p.add_argument("--sync-bn", action="store_true",
                       help="under torchrun on CUDA: SyncBatchNorm (BatchNorm statistics of the global batch, not each "
                            "rank's shard); off by default")

    def parallel(p):
        p.add_argument("--jobs", type=int, default=1,
                       help="run the cells as this many parallel processes (teachers first; default 1: in this process)")
        p.add_argument("--devices", nargs="+", default=None,
                       help="with --jobs: devices the jobs take in turn, e.g. cuda:0 cuda:1 (default: the kit's; on "
                            "the CPU each job gets cores/jobs threads unless OMP_NUM_THREADS is set)")
        p.add_argument("--print-commands", action="store_true",
                       help="print one self-contained `python -m cartl_kit cell ...` command per cell (teachers first) "
                            "for a job array or GNU parallel, and run nothing")

    p = sub.add_parser("demo", help="the main job: AT and FDM teachers; vanilla, NEFT and CARTL transfer; "
                                    "table and HTML report")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the teachers too instead of using the shipped ones (runs go to <runs-dir>/from-scratch)")
    p.add_argument("--report", default="reports/demo-{preset}.html", help="HTML report path (default %(default)s)")
    common(p)
    p.set_defaults(func=commands["demo"])

    p = sub.add_parser("info", help="blocks, FDM feature and trainable parameters for each k")
    p.add_argument("--arch", default="wrn34_10", choices=list(ARCHITECTURES))
    p.add_argument("-k", type=int, default=None)
    p.add_argument("--channels", type=int, default=3, help="input channels (quick preset: 1)")
    p.add_argument("--size", type=int, default=32, help="input height and width (quick preset: 28)")
    p.add_argument("--classes", type=int, default=10, help="classes of the head (quick preset: 5)")
    p.add_argument("--bn-case", default="train-update", choices=[*BN_CASES, *BN_CASE_ALIASES],
                   help="BatchNorm case of the trainable-parameter count (default train-update: BatchNorm "
                        "affine parameters train, as in the reference's table; vanilla: they stay frozen)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["info"])

    p = sub.add_parser("datasets", help="the dataset names the kit knows")
    p.set_defaults(func=commands["datasets"])

    p = sub.add_parser("source", help="train (or load) a robust source model")
    p.add_argument("--method", default="at", choices=SOURCE_METHODS)
    p.add_argument("-k", type=int, default=None, help="FDM: fine-tuning depth the feature is taken for")
    p.add_argument("--lam", type=finite_float, default=None, help="FDM weight λ")
    common(p)
    sync_bn(p)
    p.set_defaults(func=commands["source"])

    p = sub.add_parser("transfer", help="fine-tune the last k blocks of a teacher on the target and evaluate")
    p.add_argument("--method", default="tl", choices=TRANSFER_METHODS,
                   help="tl, neft (--beta), lwf (--lwf-lam), lpft, bitfit, or aft (adversarial fine-tuning, an upper bound)")
    p.add_argument("-k", type=int, default=None)
    p.add_argument("--beta", type=finite_float, default=None, help="NEFT bound β")
    p.add_argument("--bn-case", default="vanilla", choices=[*BN_CASES, *BN_CASE_ALIASES])
    p.add_argument("--lwf-lam", type=finite_float, default=None, help="LwF weight λ_d")
    p.add_argument("--teacher", default="at", choices=SOURCE_METHODS, help="teacher training method")
    p.add_argument("--teacher-k", type=int, default=None, help="FDM teacher's k (default: the student's k)")
    p.add_argument("--lam", type=finite_float, default=None, help="FDM teacher's λ (default: the preset's)")
    p.add_argument("--no-teacher-training", action="store_true", help="fail instead of training a missing teacher")
    common(p)
    sync_bn(p)
    p.set_defaults(func=commands["transfer"])

    p = sub.add_parser("evaluate", help="clean and robust accuracy of a finished run (default: the preset's ensemble)")
    p.add_argument("run", help="a run folder")
    p.add_argument("--eps", type=finite_float, default=None)
    p.add_argument("--step-size", type=finite_float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("-n", type=int, default=None, help="evaluate a seeded random subset of n test examples (default: all)")
    p.add_argument("--attack", default=None, choices=list(EVAL_METHODS),
                   help="ensemble: worst case over large-step PGD with restarts, APGD-CE and APGD-T (the preset's "
                        "headline); pgd: the paper's PGD-k (--steps, --step-size); autoattack: the official standard "
                        "AutoAttack through pyautoattack")
    p.add_argument("--any-iterate", action="store_true",
                   help="with --attack pgd, the fast path: an example counts as broken at its first misclassified PGD "
                        "iterate and leaves the batch (never a higher robust accuracy than the paper's final-iterate metric)")
    p.add_argument("--convergence", action="store_true",
                   help="report whether the robust accuracy is converged (steps, step sizes, losses, restarts, a doubled "
                        "ensemble) and the sanity checks of Carlini et al. (2019); flags gradient masking")
    p.add_argument("--full", action="store_true", help="with --convergence: the full grid (slow) instead of the quick one")
    common(p, runs=False)
    p.set_defaults(func=commands["evaluate"])

    p = sub.add_parser("sweep", help="a grid of transfers over k, method, β, λ and BatchNorm case (finished runs are skipped)")
    p.add_argument("-k", type=int, nargs="+", default=None, help="fine-tuned blocks (default: the preset's k)")
    p.add_argument("--method", nargs="+", default=["tl"], choices=TRANSFER_METHODS)
    p.add_argument("--beta", type=finite_float, nargs="+", default=None, help="NEFT bounds β (neft only)")
    p.add_argument("--teacher", default="at", choices=SOURCE_METHODS)
    p.add_argument("--lam", type=finite_float, nargs="+", default=None, help="FDM teachers' λ (with --teacher fdm)")
    p.add_argument("--bn-case", nargs="+", default=["vanilla"], choices=[*BN_CASES, *BN_CASE_ALIASES])
    p.add_argument("--source", type=dataset_name, default=None, help="source dataset (default: the preset's), e.g. cifar10")
    p.add_argument("--target", type=dataset_name, default=None, help="target dataset (default: the preset's), e.g. svhn")
    p.add_argument("--arch", default=None, choices=list(ARCHITECTURES), help="architecture (default: the preset's)")
    p.add_argument("--pgd", action="store_true", help="also show robust accuracy under the paper's PGD-k beside the headline")
    parallel(p)
    common(p)
    p.set_defaults(func=commands["sweep"])

    p = sub.add_parser("reproduce", help="the paper's five tables at small scale over seeds, its claims judged, "
                                         "a Markdown report and the full-scale recipes")
    p.add_argument("--preset", default="quick", choices=["quick", "fashion", "smoke"],
                   help="quick: MNIST digits, about 2.5 hours on a 2-core CPU with --jobs 2 (measured); fashion: "
                        "Fashion-MNIST, about 6 hours (estimated from its demo); smoke: 8x8 digits, about a minute")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="teacher seeds (default: the plan's, 0 1 2)")
    p.add_argument("--transfer-seeds", type=int, nargs="+", default=None,
                   help="transfer seeds, each with every teacher seed (default: the plan's, 0 1)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the teachers too instead of using the shipped ones (runs go to <runs-dir>/from-scratch)")
    p.add_argument("--report", default="reports/reproduction-{preset}.md", help="Markdown report (default %(default)s)")
    p.add_argument("--recipes", action="store_true", help="only print the full-scale sweep commands and their compute")
    p.add_argument("--report-only", action="store_true",
                   help="train and evaluate nothing: render the report from what the runs store holds and list the "
                        "missing runs (e.g. while the jobs of --print-commands are still running)")
    p.add_argument("--gpu-benchmark", default="bench/results/at_step.json",
                   help="bench/at_step.py's result file, for GPU-hours in the recipes (default %(default)s; ignored when missing)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--runs-dir", default=None, help="runs folder (default $CARTL_RUNS or ./runs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    parallel(p)
    p.set_defaults(func=commands["reproduce"])

    p = sub.add_parser("cell", help="run (or load) one run from its JSON config and record its evaluations: the "
                                    "job that sweep/reproduce --print-commands prints and --jobs starts")
    p.add_argument("--config", required=True, help="the run's config as JSON (a run folder's config.json)")
    p.add_argument("--evaluation", action="append", default=[], help="an evaluation config as JSON (repeatable)")
    p.add_argument("--runs-dir", default=None, help="runs folder (default $CARTL_RUNS or ./runs)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--no-shipped", action="store_true", help="ignore the teachers shipped with the kit")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sync_bn(p)
    p.set_defaults(func=commands["cell"])

    p = sub.add_parser("pretrain", help="train and evaluate the preset's shipped teachers (writes cartl_kit/shipped_runs)")
    p.add_argument("--out", default=None, help="folder to write them to (default: the kit's cartl_kit/shipped_runs)")
    p.add_argument("--remeasure", action="store_true",
                   help="train nothing: measure the evaluations they have recorded again and replace them")
    common(p, runs=False)
    p.set_defaults(func=commands["pretrain"])

    for kind, what in (("notebooks", "the notebook series (00-08), ready for JupyterLab"),
                       ("labs", "the course labs' nbgrader sources and configuration, for instructors")):
        p = sub.add_parser(kind, help=f"copy {what} into a folder of yours")
        p.add_argument("dest", help="folder to copy them into (created if missing)")
        p.add_argument("--force", action="store_true", help="overwrite files of the same name")
        p.set_defaults(func=commands["copy"], kind=kind)

    p = sub.add_parser("runs", help="the table of finished runs (yours and the shipped teachers)")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--no-shipped", action="store_true", help="leave out the teachers shipped in cartl_kit/shipped_runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands["runs"])
    return top


__all__ = ["OneLineParser", "build_parser", "dataset_name", "finite_float"]
