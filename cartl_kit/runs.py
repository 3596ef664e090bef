"""Runs: every trained model is a folder named by its config (DESIGN.md "Data flow").

``runs/<slug>-<hash>/`` holds ``config.json``, ``history.json`` (one record per epoch), ``env.json``
(package versions and device), ``metrics.json`` (evaluations, keyed by attack) and ``model.pt`` (the
final weights, NEFT baked in: a plain state dict). ``model.pt`` is written last, so a folder without it
is unfinished; while training, ``checkpoint.pt`` (model, optimiser, epoch, history, random states) is
replaced atomically after every epoch, so an interrupted run resumes from its last finished epoch.
Training draws its randomness (weights, NEFT's power-iteration start, PGD's random starts, the loader's
shuffling and augmentation) from ``torch.Generator`` streams seeded by the config's seed, never from the
global random state, so a run is repeatable whatever the caller seeded.
Running a config whose folder is complete loads it instead of training. Checkpoints are read with
``torch.load(weights_only=True)``: no arbitrary objects are unpickled. How the folders are written,
locked and checked is ``store``'s business; ``load_runs`` warns about a bad folder and skips it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn

from .config import FDM_METHODS, NEEDS_IMAGES, EvalConfig, SourceConfig, TransferConfig, config_hash, to_dict
from .data import ImageData, dataset_stats, load_dataset, make_loader, sample
from . import distributed
from .cache import CachedFeatures, TunedTail, extract, feature_cache_blocker
from .measure import measure, measure_split  # noqa: F401  (measure: also the runs API's)
from .models import ARCHITECTURES, WideResNet, create_model, set_half_residual
from .neft import apply_neft, remove_neft
from .store import (CHECKPOINT_FILE, CONVERGENCE_PREFIX, INTERPOLATION_PREFIX, MODEL_FILE,  # noqa: F401
                    SHIPPED_RUNS, Config, RunError, check_root, environment, epoch_seconds, find_run, is_finished,
                    is_shipped, load_tensors, locked, read_config, read_history, read_json, read_metrics,
                    remove_temporaries, run_path, runs_root, save_tensors, write_json)
from .runtime import default_device
from .train import Batches, StepFn, adversarial_step, fdm_step, fit, lwf_step, natural_step
from .transfer import make_student, restrict_to_bitfit

T = TypeVar("T")


@dataclass
class Run:
    """A finished run: its folder, config, model (eval mode), per-epoch history and evaluations."""

    path: Path
    config: Config
    model: WideResNet
    history: list[dict]
    metrics: dict

    @property
    def train_seconds(self) -> float:
        """Seconds its training epochs took (``store.epoch_seconds`` of its history); compare runs timed on the same
        machine and threads (``env.json``)."""
        return epoch_seconds(self.history)

    @property
    def threads(self) -> int | None:
        """The torch threads it trained with (``env.json``; None when not recorded, e.g. a shipped run's)."""
        return read_json(self.path / "env.json", missing={}).get("torch_threads")


# --- building models for configs ----------------------------------------------------------------

def _data(name: str, split: str) -> ImageData:
    return load_dataset(name, split=split)


def _given(value: T | None, what: str) -> T:
    """``value``, narrowed from Optional; a config that passed validation always has it."""
    if value is None:
        raise ValueError(f"the config lacks {what}")
    return value


def build_source_model(config: SourceConfig, data: ImageData, *,
                       generator: torch.Generator | None = None) -> WideResNet:
    """The untrained source model of ``config`` (weights from ``generator``, default the global state)."""
    mean, std = dataset_stats(config.dataset)
    return create_model(config.arch, num_classes=data.num_classes, in_channels=data.channels, mean=mean, std=std,
                        generator=generator)


def build_student(config: TransferConfig, teacher: WideResNet, data: ImageData, *,
                  generator: torch.Generator | None = None, probe: WideResNet | None = None) -> WideResNet:
    """The untrained student of ``config``: a new head and NEFT's power-iteration start drawn from ``generator``;
    for ``lpft`` the head is the trained linear probe's (``probe``, the finished run of ``config.probe``)."""
    if data.channels != teacher.in_channels:
        raise ValueError(f"target {config.dataset} has {data.channels} channel(s) but the teacher takes "
                         f"{teacher.in_channels}; pick a target with matching channels")
    student = make_student(teacher, k=config.k, num_classes=data.num_classes, bn_case=config.bn_case,
                           half_residual=_given(config.half_residual, "half_residual"), generator=generator)
    if config.method == "lpft":
        student.head.load_state_dict(_given(probe, "the linear probe's model (method 'lpft')").head.state_dict())
    if config.method == "bitfit":
        restrict_to_bitfit(student, k=config.k)
    if config.method == "neft":
        apply_neft(student, k=config.k, beta=_given(config.beta, "beta (method 'neft')"),
                   power_iterations=config.power_iterations, generator=generator)
    return student


def _source_of(config: Config) -> SourceConfig:
    return config if isinstance(config, SourceConfig) else config.teacher


def plain_model(config: Config, *, num_classes: int, in_channels: int) -> WideResNet:
    """The architecture a finished run's ``model.pt`` loads into (NEFT baked in, BN frozen or not)."""
    source = _source_of(config)
    mean, std = dataset_stats(source.dataset, channels=in_channels)
    model = create_model(source.arch, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
    if isinstance(config, TransferConfig) and config.half_residual:
        set_half_residual(model, k=config.k)
    return model


# --- training -----------------------------------------------------------------------------------

def _step_for(config: Config, teacher: WideResNet | None, *, generator: torch.Generator, world_size: int = 1) -> StepFn:
    if isinstance(config, SourceConfig):
        if config.method in FDM_METHODS:  # its term sums over the batch: under DDP, each rank's shard counts world_size times
            return fdm_step(k=_given(config.k, "k (method 'fdm')"),
                            lam=_given(config.lam, "lam (method 'fdm')") * world_size,
                            attack=config.attack, generator=generator, distance=FDM_METHODS[config.method])
        return adversarial_step(attack=config.attack, generator=generator)
    if config.method == "lwf":
        return lwf_step(_given(teacher, "the teacher model (method 'lwf')"),
                        lam=_given(config.lwf_lam, "lwf_lam (method 'lwf')"))
    if config.method == "aft":  # the teacher's training attack, now on the target's images
        return adversarial_step(attack=config.teacher.attack, generator=generator)
    return natural_step


def _generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(weights, attacks): CPU and device generators seeded with ``seed``; one generator on a CPU.

    They draw what ``torch.manual_seed(seed)`` followed by the global-state path would draw: the weights on
    the CPU, PGD's random starts on the device (on a CPU, the same stream after the weights).
    """
    weights = torch.Generator().manual_seed(seed)
    attacks = weights if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    return weights, attacks


def _train(config: Config, *, root, device: torch.device, progress: bool, callback,
           teacher: WideResNet | None = None, cache_features: bool = True, channels_last: bool = False,
           probe: WideResNet | None = None) -> Path:
    """Train ``config`` into its folder (call it holding the folder's lock), resuming from ``checkpoint.pt``.

    A transfer run whose frozen extractor's output cannot change (see ``cache.feature_cache_blocker``)
    trains its last k blocks on features computed once, unless ``cache_features=False``.
    """
    path = run_path(config, root)
    world = distributed.current()
    main = world is None or world.main  # only rank 0 writes the run folder
    if main:
        remove_temporaries(path)  # left by a process killed while writing
    train_data = _data(config.dataset, "train")
    weights_rng, attack_rng = _generators(config.seed, device)  # model init, NEFT's start; PGD's random starts
    if world is not None and world.rank:  # random starts differ between ranks: seed + rank
        attack_rng = torch.Generator(device=device).manual_seed(config.seed + world.rank)
    if isinstance(config, SourceConfig):
        model = build_source_model(config, train_data, generator=weights_rng)
    else:
        model = build_student(config, _given(teacher, "the teacher model"), train_data, generator=weights_rng,
                              probe=probe)
    model.to(device)
    loader = make_loader(train_data, batch_size=config.optim.batch_size, augment=config.augment, device=device,
                         seed=config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = config.optim
    optimizer = torch.optim.SGD(params, lr=optim.base_lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    history: list[dict] = []
    start = 1
    if (path / CHECKPOINT_FILE).exists():
        if (path / "config.json").exists():
            read_config(path)  # a swapped config.json is refused, not trained on
        elif main:
            write_json(path / "config.json", to_dict(config))
        state = load_tensors(path / CHECKPOINT_FILE)
        _check_world(state, world, path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        weights_rng.set_state(state["rng"])
        if attack_rng is not weights_rng and "attack_rng" in state:
            attack_rng.set_state(state["attack_rng"])
        if world is not None and "rank_attack_rngs" in state:  # every rank's random starts go on where they were
            attack_rng.set_state(state["rank_attack_rngs"][world.rank])
        history, start = state["history"], state["epoch"] + 1
    elif main:
        write_json(path / "config.json", to_dict(config))

    def save_epoch(record: dict) -> None:
        record = distributed.reduce_record(record)  # the metrics of the global batch (mean over ranks)
        history.append(record)
        rank_rngs = distributed.gather(attack_rng.get_state()) if world is not None else None
        if not main:
            return
        rng = {"rng": weights_rng.get_state(), "world_size": world.world_size if world else 1}
        if attack_rng is not weights_rng:
            rng["attack_rng"] = attack_rng.get_state()
        if rank_rngs is not None:
            rng["rank_attack_rngs"] = rank_rngs
        save_tensors(path / CHECKPOINT_FILE, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                              "loader": loader.state_dict(), **rng,
                                              "history": history, "epoch": record["epoch"]})
        if callback is not None:
            callback(record)

    trained: nn.Module = model
    batches: Batches = loader
    if start <= optim.epochs and cache_features and isinstance(config, TransferConfig):
        if feature_cache_blocker(model, k=config.k, loader=loader, needs_images=config.method in NEEDS_IMAGES) is None:
            features = extract(model, loader, k=config.k)
            if channels_last and features.dim() == 4:  # batches indexed from it stay channels-last
                features = features.contiguous(memory_format=torch.channels_last)
            trained, batches = TunedTail(model, k=config.k), CachedFeatures(loader, features)
    step = _step_for(config, teacher, generator=attack_rng, world_size=world.world_size if world else 1)
    env = environment(device)
    if start > 1:  # resumed: the epochs before ran in another process (and perhaps by other code)
        env.update(resumed_after_epoch=start - 1)
    if world is not None:  # DDP (see cartl_kit.distributed): shards of one global batch, losses weighted
        if isinstance(config, SourceConfig) and config.method in FDM_METHODS:
            distributed.check_shards(len(train_data), optim.batch_size, world.world_size)
        trained, batches = distributed.wrap(trained, device), distributed.ShardedBatches(batches, world)
        step = distributed.scaled_step(step, batches)
        env.update(world_size=world.world_size, per_rank_batch=optim.batch_size / world.world_size,
                   sync_batchnorm=world.sync_bn)
    if start <= optim.epochs:
        fit(trained, batches, step, optim, device=device, callback=save_epoch, progress=progress and main,
            start_epoch=start, optimizer=optimizer, channels_last=channels_last)
    model.to(memory_format=torch.contiguous_format)
    remove_neft(model)
    if main:
        write_json(path / "history.json", history)
        write_json(path / "env.json", env)
        save_tensors(path / MODEL_FILE, {k: v.cpu() for k, v in model.state_dict().items()})
        (path / CHECKPOINT_FILE).unlink(missing_ok=True)
    return path


def _check_world(state: dict, world: "distributed.World | None", path: Path) -> None:
    """Refuse to resume a checkpoint under another number of processes (its shards and random starts differ)."""
    saved, now = state.get("world_size"), world.world_size if world else 1
    if saved is not None and saved != now:
        how = "plain python (one process)" if saved == 1 else f"torchrun --nproc-per-node {saved} (in all)"
        raise RunError(f"{path / CHECKPOINT_FILE} was written by {saved} process(es), not {now}; resume it with "
                       f"{how}, or delete it to train from the start")


def run(config: Config, *, root=None, device: torch.device | str | None = None, progress: bool = True,
        callback: Callable[[dict], None] | None = None, train_teacher: bool = True, shipped: bool = True,
        cache_features: bool = True, channels_last: bool = False) -> Run:
    """Load the finished run of ``config``, or train it (resuming if interrupted) and then load it.

    For a transfer config the teacher's run is found (or, with ``train_teacher``, trained) first.
    ``shipped=False`` ignores the runs shipped in ``cartl_kit/shipped_runs`` (everything is found in or
    trained into ``root``).
    ``cache_features=False`` turns off the transfer fast path (``cartl_kit.cache``), which trains on cached
    extractor features where that gives the same result up to rounding. ``channels_last=True`` trains in
    the channels-last memory format (faster convolutions on many CPUs and GPUs; the same run up to
    floating-point rounding, so not bit-identical to one trained without it).

    Example:
        >>> teacher = run(get_preset("quick").source("at"))
    """
    device = torch.device(device) if device is not None else default_device()
    world = distributed.current()
    if world is not None:
        device = world.device(device)  # CUDA: this rank's GPU
    path = find_run(config, root, shipped=shipped)
    if path is None:
        check_root(root)
        teacher = None
        if isinstance(config, TransferConfig):
            if find_run(config.teacher, root, shipped=shipped) is None and not train_teacher:
                raise RunError(f"the teacher run {config.teacher.slug}-{config_hash(config.teacher)} does not exist "
                               f"in {runs_root(root)}; train it first (`python -m cartl_kit source`)")
            teacher = run(config.teacher, root=root, device=device, progress=progress, shipped=shipped).model
        probe = None
        if isinstance(config, TransferConfig) and config.method == "lpft":  # LP-FT starts from its linear probe
            probe = run(config.probe, root=root, device=device, progress=progress, shipped=shipped).model
        path = run_path(config, root)
        with distributed.main_holds(lambda: locked(path)):  # under DDP: rank 0 holds the lock, every rank trains
            # else another process finished it while this one waited for the lock
            if not distributed.agree(is_finished(path)):
                try:
                    _train(config, root=root, device=device, progress=progress, callback=callback, teacher=teacher,
                           cache_features=cache_features, channels_last=channels_last, probe=probe)
                except BaseException:
                    if world is None or world.main:
                        discard_unstarted(path)
                    raise
    return load_run(path)


def discard_unstarted(folder: Path) -> None:
    """Empty a run folder that holds no checkpoint and no model (only its config): there is nothing to resume.

    Call it holding the lock; ``locked`` then removes the emptied folder on release.
    """
    if not (folder / CHECKPOINT_FILE).exists() and not (folder / MODEL_FILE).exists():
        remove_temporaries(folder)
        (folder / "config.json").unlink(missing_ok=True)


def load_run(path: str | os.PathLike) -> Run:
    """A finished run's model (eval mode, CPU), config, history and metrics."""
    path = Path(path)
    config = read_config(path)
    state = load_tensors(path / MODEL_FILE)
    try:
        # Head size and channel count come from the weights themselves: loading a model reads no data.
        head = state[f"blocks.{ARCHITECTURES[_source_of(config).arch].num_blocks - 1}.weight"]  # (classes, features)
        model = plain_model(config, num_classes=head.shape[0], in_channels=state["normalize.mean"].shape[1])
        model.load_state_dict(state)
    except (KeyError, IndexError, AttributeError) as error:
        raise RunError(f"{path / MODEL_FILE} does not match the architecture of its config "
                       f"({config.slug}): missing or malformed {error}") from None
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise RunError(f"{path / MODEL_FILE} does not match the architecture of its config "
                       f"({config.slug}): {first}") from None
    history, metrics = read_history(path), read_metrics(path)
    return Run(path=path, config=config, model=model.eval(), history=history, metrics=metrics)


def evaluate_run(finished: Run, evaluation: EvalConfig, *, device=None, progress: bool = True,
                 save: bool | None = None, cached: bool = True) -> dict:
    """Clean and robust accuracy of a run on its test split, cached in its ``metrics.json``.

    ``save`` (default: unless the run is a shipped one, which stays read-only) writes the result to
    ``metrics.json``; ``cached=False`` evaluates again even when a result is recorded. Under DDP every rank
    attacks its share of the batches (``measure.measure_split``), rank 0 decides whether a result is cached
    and records it, and every rank returns it.
    """
    world = distributed.current()
    recorded = finished.metrics.get(evaluation.name) if cached else None
    if world is not None:
        recorded = distributed.agree(recorded)  # rank 0's store decides: the ranks must all measure, or none
    if recorded is not None:
        finished.metrics.setdefault(evaluation.name, recorded)
        return recorded
    device = torch.device(device) if device is not None else default_device()
    if world is not None:
        device = world.device(device)  # CUDA: this rank's GPU
    test = _data(finished.config.dataset, "test")
    if evaluation.max_examples is not None:  # a seeded random subset: the test splits are ordered by class
        if evaluation.max_examples > len(test):  # the result would be named after a sample it did not use
            raise RunError(f"max_examples = {evaluation.max_examples} is more than the {len(test)} test images of "
                           f"{finished.config.dataset}; pass at most {len(test)}, or None for all of them")
        test = sample(test, evaluation.max_examples)
    result = measure_split(finished.model.to(device).eval(), test, evaluation, device=device, progress=progress)
    finished.model.cpu()
    if save is None:
        save = not is_shipped(finished.path)
    if not save:
        return result
    if world is not None and not world.main:
        finished.metrics[evaluation.name] = result
        distributed.barrier()  # rank 0 records it
        return result
    result = record_metric(finished, evaluation.name, result)
    distributed.barrier()
    return result


def record_metric(finished: Run, name: str, result: dict) -> dict:
    """Add ``result`` under ``name`` to the run's ``metrics.json`` and to ``finished.metrics``; returns it.

    The file is read again, updated and replaced under the folder's lock, so evaluations recorded at the
    same time by other processes are kept (and appear in ``finished.metrics``).
    """
    with locked(finished.path):
        remove_temporaries(finished.path)
        metrics = read_metrics(finished.path)
        metrics[name] = result
        write_json(finished.path / "metrics.json", metrics)
    finished.metrics.clear()
    finished.metrics.update(metrics)
    return result


def convergence(finished: Run, evaluation: EvalConfig, *, device=None, quick: bool = True, n: int | None = None,
                save: bool | None = None) -> tuple[dict, str]:
    """The convergence and sanity report (``convergence.convergence_report``) of a run's headline evaluation.

    It attacks a seeded random sample of the run's test split (``n``; default ``evaluation.max_examples``,
    else 100 with ``quick`` and 500 without) with the grid of attacks, ``evaluation``'s ensemble and the same
    ensemble doubled, and records the result in ``metrics.json`` under ``"convergence-" + evaluation.name``
    (unless the run is shipped, or ``save=False``), where every table that shows the run finds its flags.
    Returns the report as a dict and as text. Under DDP rank 0 makes it and every rank gets it.
    """
    if distributed.current() is not None:
        return distributed.on_main(lambda: _convergence_alone(finished, evaluation, device, quick, n, save))
    return _convergence_alone(finished, evaluation, device, quick, n, save)


def _convergence_alone(finished: Run, evaluation: EvalConfig, device, quick: bool, n: int | None,
                       save: bool | None) -> tuple[dict, str]:
    from .convergence import convergence_report, format_report
    device = torch.device(device) if device is not None else default_device()
    test = _data(finished.config.dataset, "test")
    size = n or evaluation.max_examples or (100 if quick else 500)
    test = sample(test, min(size, len(test)))
    images = (test.images.float() / 255 if test.images.dtype == torch.uint8 else test.images).to(device)
    model = finished.model.to(device).eval()
    report = convergence_report(model, images, test.labels.to(device), eps=evaluation.attack.eps,
                                config=evaluation.ensemble, quick=quick)
    finished.model.cpu()
    data = report.as_dict()
    if save is None:
        save = not is_shipped(finished.path)
    if save:
        record_metric(finished, CONVERGENCE_PREFIX + evaluation.name, data)
    return data, format_report(report)


def load_runs(root: str | os.PathLike | None = None, *, include_shipped: bool = True):
    """A pandas DataFrame with one row per (finished run, evaluation): flattened config fields and metrics.

    A folder that cannot be read (damaged model, config or metrics) is skipped with a warning naming it.
    """
    import pandas as pd
    rows = []
    bases = [runs_root(root)] + ([SHIPPED_RUNS] if include_shipped else [])
    for base in bases:
        for path in sorted(base.glob("*/" + MODEL_FILE)) if base.is_dir() else []:
            try:
                rows += _table_rows(path.parent, shipped=base == SHIPPED_RUNS)
            except RunError as error:
                warnings.warn(f"skipping {path.parent}: {error}", stacklevel=2)
    return pd.DataFrame(rows)


def _table_rows(folder: Path, *, shipped: bool) -> list[dict]:
    import pandas as pd
    if not is_finished(folder):
        raise RunError(f"{folder / MODEL_FILE} is truncated or damaged, so the run is not finished; "
                       f"delete it and train again")
    config, metrics = read_config(folder), read_metrics(folder)
    read_history(folder)  # a folder load_run refuses is not tabulated either
    flat = pd.json_normalize(to_dict(config), sep=".").iloc[0].to_dict()
    flat.update({"run": folder.name, "path": str(folder), "shipped": shipped})
    rows = []
    for name, result in (metrics or {"": {}}).items():
        if name.startswith((CONVERGENCE_PREFIX, INTERPOLATION_PREFIX)):  # not evaluations of the run's own model
            continue
        shown = {key: value for key, value in result.items() if key not in ("broken_by", "config", "after")}
        rows.append({**flat, "evaluation": name or None, **shown})
    return rows
