"""Command line: ``python -m cartl_kit <command>`` (the commands; their flags are in ``cli_parser``; the library returns values).

Commands: ``demo`` (the main job: teachers, vanilla / NEFT / CARTL transfer, table and HTML report),
``info`` (what k means for an architecture), ``datasets``, ``source`` (train or load a robust teacher),
``transfer`` (fine-tune a student from a teacher), ``evaluate`` (clean and robust accuracy of a run),
``sweep`` (a grid of transfers), ``runs`` (the table of finished runs), ``pretrain`` (the shipped
teachers). Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


MIN_IMAGE_SIZE = 8  # the smallest images the kit's datasets have (8x8 digits); WRN halves them twice


def cmd_info(args) -> None:
    from .models import ARCHITECTURES
    from .config import check_arch_k
    from .params import check_int
    if args.k is not None:
        check_arch_k(args.arch, args.k)
    check_int("--size", args.size, low=MIN_IMAGE_SIZE)
    check_int("--channels", args.channels, low=1)
    check_int("--classes", args.classes, low=1)
    spec = ARCHITECTURES[args.arch]
    from .transfer import k_table
    rows = k_table(args.arch, k=args.k, in_channels=args.channels, size=args.size, num_classes=args.classes,
                   bn_case=args.bn_case)
    if args.json:
        print(json.dumps({"arch": args.arch, "L": spec.num_blocks, "rows": rows}, indent=2))
        return
    print(f"{args.arch}: L = {spec.num_blocks} blocks (3x{spec.units_per_group} residual units, final BN+LeakyReLU, fc); "
          f"{args.channels}x{args.size}x{args.size} input, {args.classes} classes; trainable parameters in BatchNorm "
          f"case {args.bn_case}")
    print(f"{'k':>3} {'fine-tuned':>11} {'FDM feature':>12} {'d':>8} {'trainable':>12}")
    for r in rows:
        print(f"{r['k']:>3} {r['fine_tuned_blocks']:>11} {r['fdm_feature']:>12} {r['d']:>8} {r['trainable_params']:>12,}")


def cmd_datasets(args) -> None:
    from .data import list_datasets
    for name, line in list_datasets().items():
        print(f"{name:10} {line}")


def _source_config(args):
    from .config import get_preset
    preset = get_preset(args.preset)
    return preset, preset.source(args.method, k=args.k, lam=args.lam, seed=args.seed)


def cmd_source(args) -> None:
    from .runs import run
    _, config = _source_config(args)
    finished = run(config, root=args.runs_dir, device=args.device)
    print(finished.path)


def _transfer_config(args):
    from .config import FDM_METHODS, get_preset
    preset = get_preset(args.preset)
    teacher_k = args.teacher_k if args.teacher_k is not None else args.k  # CARTL pairs the FDM teacher's k with the student's
    fdm = args.teacher in FDM_METHODS
    if not fdm and (args.teacher_k is not None or args.lam is not None):
        raise ValueError("--teacher-k and --lam describe an FDM teacher; add --teacher fdm (or fdm-rel)")
    teacher = preset.source(args.teacher, k=teacher_k if fdm else None, lam=args.lam, seed=args.seed)
    return preset, preset.transfer(teacher, args.method, k=args.k, beta=args.beta, bn_case=args.bn_case,
                                   lwf_lam=args.lwf_lam, seed=args.seed)


def _robust_line(result: dict) -> str:
    return (f"clean {100 * result['clean_acc']:.2f} %  robust {100 * result['robust_acc']:.2f} %  "
            f"(attack: {result.get('label', result.get('attack'))}, n = {result['n']})")


def cmd_transfer(args) -> None:
    from .runs import evaluate_run, run
    preset, config = _transfer_config(args)
    finished = run(config, root=args.runs_dir, device=args.device, train_teacher=not args.no_teacher_training)
    result = evaluate_run(finished, preset.evaluation, device=args.device)
    print(json.dumps({"run": str(finished.path), **result}) if args.json else f"{finished.path}\n{_robust_line(result)}")


def _evaluation(args):
    from dataclasses import replace
    from .config import AttackConfig, get_preset
    from .params import check_int
    if args.n is not None:
        check_int("-n", args.n, low=1)
    preset = get_preset(args.preset)
    attack = preset.evaluation.attack
    pgd_flags = args.any_iterate or args.steps is not None or args.step_size is not None  # only PGD has them
    method = args.attack or ("pgd" if pgd_flags else preset.evaluation.method)
    if method != "pgd" and (args.steps is not None or args.step_size is not None):
        raise ValueError("--steps and --step-size belong to --attack pgd (the ensemble sets its own budgets)")
    if args.any_iterate and method != "pgd":
        raise ValueError("--any-iterate belongs to --attack pgd")
    return replace(preset.evaluation, method=method, max_examples=args.n, mode="any" if args.any_iterate else "final",
                   attack=AttackConfig(eps=args.eps if args.eps is not None else attack.eps,
                                       step_size=args.step_size if args.step_size is not None else attack.step_size,
                                       steps=args.steps if args.steps is not None else attack.steps))


def _check_sample_size(n: int | None, dataset: str) -> None:
    """-n must not exceed the test split: a larger n would evaluate the whole split under a name that says n."""
    if n is None:
        return
    from .data import load_dataset
    size = len(load_dataset(dataset, split="test"))
    if n > size:
        raise ValueError(f"-n {n} is larger than the test split of {dataset} ({size} images); "
                         f"use -n {size} or less, or leave -n out to evaluate all")


def cmd_evaluate(args) -> None:
    from .runs import evaluate_run, load_run
    evaluation = _evaluation(args)
    finished = load_run(args.run)
    _check_sample_size(args.n, finished.config.dataset)
    if args.convergence:
        from .runs import convergence
        report, text = convergence(finished, evaluation, device=args.device, quick=not args.full)
        print(json.dumps(report) if args.json else text)
        return
    result = evaluate_run(finished, evaluation, device=args.device)
    if args.json:
        print(json.dumps({key: value for key, value in result.items() if key != "broken_by"}))
        return
    print(_robust_line(result))
    for name, left in result.get("after", {}).items():
        print(f"  robust after {name:<24} {100 * left:6.2f} %")
    print(f"  recorded as {evaluation.name!r} in {finished.path / 'metrics.json'}")


def cmd_copy(args) -> None:
    from .bundled import copy_bundle
    copied = copy_bundle(args.kind, args.dest, force=args.force)
    print(f"copied {len(copied)} files into {args.dest}")
    print(f"open them with: jupyter lab {args.dest}" if args.kind == "notebooks" else
          f"then, in {args.dest}: nbgrader generate_assignment <lab> (see README.md there)")


def cmd_runs(args) -> None:
    from .runs import load_runs
    table = load_runs(args.runs_dir, include_shipped=not args.no_shipped)
    if args.json:
        print(table.to_json(orient="records"))
        return
    if table.empty:
        print("no finished runs")
        return
    columns = [c for c in ("run", "kind", "method", "k", "lam", "beta", "bn_case", "shipped", "clean_acc", "robust_acc")
               if c in table.columns]
    print(_percent_table(table, columns))


def _cell(column: str, value) -> str:
    import pandas as pd
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    if "%" in column:
        return f"{value:.1f}"
    if column == "k":
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _percent_table(table, columns, **names) -> str:
    """``plots.percent_table`` as text: '-' for missing values, k as an integer, λ and β by their letters."""
    from .plots import percent_table
    shown = percent_table(table, columns, missing=None, **names).astype(object)
    for column in shown.columns:
        shown[column] = [_cell(column, value) for value in shown[column]]
    return shown.rename(columns={"lam": "λ", "beta": "β"}).to_string(index=False)


def _plain(table) -> str:
    return table.to_string(index=False)


def _records(table) -> list[dict]:
    return json.loads(table.to_json(orient="records"))


def cmd_demo(args) -> None:
    from .experiments import demo
    result = demo(args.preset, root=args.runs_dir, device=args.device, from_scratch=args.from_scratch,
                  seed=args.seed, report=args.report)
    if args.json:
        print(json.dumps({"students": _records(result.table), "teachers": _records(result.teachers),
                          "report": str(result.report) if result.report else None,
                          "seconds": round(result.seconds, 1), "notes": result.notes}, indent=2))
        return
    if result.evaluation is None:
        raise RuntimeError("the demo returned no evaluation")  # demo() always sets it
    names = dict(headline=result.evaluation.short, pgd=result.evaluation.as_pgd().short)
    print("\n".join(result.notes))
    print("\nTeachers on the source task:")
    print(_percent_table(result.teachers, ["label", "k", "lam", "clean_acc", "robust_acc", "pgd_acc"], **names))
    print("\nTransfer to the target task:")
    print(_percent_table(result.table, ["label", "method", "k", "lam", "beta", "clean_acc", "robust_acc", "pgd_acc"],
                         **names))
    print("\nWhat these numbers say:")
    print("\n".join(f"- {line}" for line in result.findings))
    if result.report:
        print(f"\nreport: {result.report}")
    print(f"({result.seconds:.0f} s)")


def _check_sweep_flags(args) -> None:
    """The flags ``transfer`` refuses are refused here too, by their names (the grid would ignore them)."""
    from .config import FDM_METHODS
    if args.beta is not None and "neft" not in args.method:
        raise ValueError(f"--beta {' '.join(f'{b:g}' for b in args.beta)} belongs to --method neft; add neft to --method")
    if args.lam is not None and args.teacher not in FDM_METHODS:
        raise ValueError(f"--lam {' '.join(f'{lam:g}' for lam in args.lam)} describes FDM teachers; add --teacher fdm")


def _print_commands(cells, args, *, shipped: bool = True) -> None:
    from .grid import check_jobs, commands
    check_jobs(args.jobs, args.devices)
    if args.devices and len(args.devices) > 1:
        raise ValueError("--print-commands writes one command per cell for one device (--devices D, or none): "
                         "a scheduler gives each job its device")
    print("\n".join(commands(cells, root=args.runs_dir, device=(args.devices or [args.device])[0], shipped=shipped)))


def cmd_sweep(args) -> None:
    from .experiments import sweep, sweep_cells
    _check_sweep_flags(args)
    grid = dict(ks=args.k, methods=args.method, betas=args.beta, teacher=args.teacher, lams=args.lam,
                bn_cases=args.bn_case, seed=args.seed, source=args.source, target=args.target, arch=args.arch)
    if args.print_commands:
        _print_commands(sweep_cells(args.preset, pgd=args.pgd, **grid), args)
        return
    table = sweep(args.preset, root=args.runs_dir, device=args.device, pgd=args.pgd, jobs=args.jobs,
                  devices=args.devices, **grid)
    if args.json:
        print(json.dumps(_records(table), indent=2))
    else:
        from .config import get_preset
        evaluation = get_preset(args.preset).evaluation
        print(_percent_table(table, ["method", "teacher", "k", "lam", "beta", "bn_case", "clean_acc", "robust_acc",
                                     "pgd_acc"], headline=evaluation.short, pgd=evaluation.as_pgd().short))
        print(f"robust %: {evaluation.label}, ε = {evaluation.attack.eps:.4g}")


def cmd_cell(args) -> None:
    from .grid import parse_cell, run_cell
    cell = parse_cell(args.config, args.evaluation)
    result = run_cell(cell, root=args.runs_dir, device=args.device, shipped=not args.no_shipped)
    if args.json:
        print(json.dumps(result))
        return
    print(result["run"])
    for result_ in result["evaluations"].values():
        print(_robust_line(result_))


def cmd_reproduce(args) -> None:
    from dataclasses import replace
    from .experiments import FROM_SCRATCH_DIR
    from .reproduce import get_plan, measured_gpu_rates, recipes_markdown, reproduce
    from .runs import runs_root
    rates = measured_gpu_rates(args.gpu_benchmark)
    if args.recipes:
        print(recipes_markdown(rates))
        return
    plan = get_plan(args.preset)
    if args.seeds is not None:
        plan = replace(plan, seeds=tuple(args.seeds))
    if args.transfer_seeds is not None:
        plan = replace(plan, transfer_seeds=tuple(args.transfer_seeds))
    root = runs_root(args.runs_dir) / FROM_SCRATCH_DIR if args.from_scratch else args.runs_dir
    if args.print_commands:
        from .reproduce import reproduce_cells
        args.runs_dir = root
        _print_commands(reproduce_cells(plan), args, shipped=not args.from_scratch)
        return
    command = "python -m cartl_kit " + " ".join(args.argv)
    result = reproduce(plan, root=root, device=args.device, shipped=not args.from_scratch, report=args.report,
                       command=command, gpu_rates=rates, jobs=args.jobs, devices=args.devices,
                       train=not args.report_only)
    if args.json:
        print(json.dumps({"claims": [c.__dict__ for c in result.claims], "summary": _records(result.summary),
                          "report": str(result.report) if result.report else None, "seconds": round(result.seconds, 1),
                          "trained": result.trained, "loaded": result.loaded,
                          "teachers_trained": result.teachers_trained, "missing": result.missing}, indent=2))
        return
    for index, claim in enumerate(result.claims, 1):
        print(f"{index:2}. [{claim.verdict}] {claim.claim}")
    if result.missing:
        print(f"\nmissing from the runs store (or not evaluated), left out of the report: {len(result.missing)} runs")
    print(f"\n{result.trained} transfers trained, {result.loaded} loaded; {result.teachers_trained} of "
          f"{result.teachers} teachers trained; {result.seconds / 60:.1f} min")
    if result.report:
        print(f"report: {result.report}")


def cmd_pretrain(args) -> None:
    from .experiments import pretrain
    from .runs import SHIPPED_RUNS
    if args.remeasure:
        from .experiments import remeasure
        found = remeasure(args.preset, root=args.out or SHIPPED_RUNS, device=args.device or "cpu")
        print(json.dumps(_records(found), indent=2) if args.json else _plain(found))
        return
    table = pretrain(args.preset, root=args.out or SHIPPED_RUNS, device=args.device or "cpu")
    if args.json:
        print(json.dumps(_records(table), indent=2))
    else:
        print(_percent_table(table, ["run", "method", "k", "lam", "clean_acc", "robust_acc"]))


def _check_flags(args) -> None:
    """Flags every command shares, checked before any work: --seed(s), --device, --runs-dir, --out."""
    from .params import check_device, check_runs_dir, check_seed
    if getattr(args, "seed", None) is not None:
        check_seed(args.seed, name="--seed")
    for seed in getattr(args, "seeds", None) or []:
        check_seed(seed, name="--seeds")
    check_device(getattr(args, "device", None), name="--device")
    for device in getattr(args, "devices", None) or []:
        check_device(device, name="--devices")
    for flag in ("runs_dir", "out"):
        if getattr(args, flag, None) is not None:
            check_runs_dir(getattr(args, flag), name="--" + flag.replace("_", "-"))


def parser() -> argparse.ArgumentParser:
    """The command line's parser, wired to this module's commands."""
    from .cli_parser import build_parser
    return build_parser({"demo": cmd_demo, "info": cmd_info, "datasets": cmd_datasets, "source": cmd_source,
                         "transfer": cmd_transfer, "evaluate": cmd_evaluate, "sweep": cmd_sweep,
                         "reproduce": cmd_reproduce, "cell": cmd_cell, "pretrain": cmd_pretrain, "copy": cmd_copy, "runs": cmd_runs})


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as given, for reports
    from .distributed import from_env, leave
    finished = False
    try:
        _check_flags(args)
        world = from_env(getattr(args, "device", None), sync_bn=getattr(args, "sync_bn", False))  # under torchrun: DDP
        if world is not None and not world.main:
            sys.stdout = open(os.devnull, "w")  # rank 0 prints the results
        args.func(args)
        finished = True
    except ValueError as error:  # includes RunError, SanityCheckError, DatasetCorrupt
        print(f"error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:  # DatasetNotAvailable
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        leave(wait=finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
