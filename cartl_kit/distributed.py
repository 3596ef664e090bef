"""One run on several processes: torch DistributedDataParallel (DDP), launched by ``torchrun``.

    torchrun --nproc-per-node 2 -m cartl_kit source --method at
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m cartl_kit transfer ...

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``from_env()`` then joins the process group (gloo
on a CPU, NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``). What changes for a run, and what does not:

- **Data.** Every rank draws the same global batch (one seeded permutation and augmentation, the config's
  batch size) and keeps its contiguous shard (``ShardedBatches``): together the ranks see exactly the batch
  one process would. The per-rank batch is recorded in ``env.json``. BatchNorm normalises each shard with
  its own statistics ("ghost batches" of B / world), which changes the noise of training; the running
  statistics kept are rank 0's (DDP syncs buffers from rank 0 before each forward), and so are NEFT's power
  iteration vectors.
- **SyncBatchNorm** (``--sync-bn``, CUDA only): the trained BatchNorm layers normalise with the global batch's
  statistics instead; off by default (no mainstream adversarial-training codebase uses it), recorded in
  ``env.json``.
- **Loss.** Each rank's loss is weighted by its share of the batch (``scaled_step``), so DDP's gradient
  average equals the gradient of the global batch's loss; FDM's batch-summed term is weighted by the world
  size instead (it needs shards of equal size: ``check_shards``).
- **Attacks.** PGD crafts its examples through the DDP wrapper in eval mode with ``torch.autograd.grad``
  on the input (no gradient all-reduce per attack step); random starts come from seed + rank.
- **Writes.** Only rank 0 holds the run folder's lock and writes config, checkpoints, history and model;
  the others wait for it at a barrier. A run resumes under the same world size (``env.json`` records it).
- **Config hash.** Unchanged: the global batch is the config's, so a DDP run and a single-process run of
  one config share their folder (and one may resume the other's checkpoint under the same world size).
- **Evaluation** (``cartl_kit.measure``): each rank attacks a contiguous run of the test split's batches;
  random starts are seeded per batch, so the combined counts are exactly a single process's. Rank 0 decides
  whether a result is cached and records it. AutoAttack and the convergence report run on rank 0 alone.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

_CURRENT: "World | None" = None


@dataclass(frozen=True)
class World:
    """This process's place in a distributed run."""

    rank: int
    world_size: int
    local_rank: int
    sync_bn: bool = False  # SyncBatchNorm: BatchNorm statistics over the global batch (CUDA only)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """The device of this rank: ``cuda:LOCAL_RANK`` when ``requested`` is CUDA, else ``requested``."""
        return torch.device("cuda", self.local_rank) if requested.type == "cuda" else requested


def current() -> World | None:
    """The distributed world joined by ``from_env`` (None: a single process)."""
    return _CURRENT


def from_env(device: torch.device | str | None = None, *, sync_bn: bool = False) -> World | None:
    """Join the process group that ``torchrun`` describes in the environment; None when not under torchrun.

    The backend is NCCL for a CUDA ``device`` (default: CUDA when present) and gloo otherwise. ``sync_bn``
    turns every trained BatchNorm into ``torch.nn.SyncBatchNorm`` (statistics of the global batch instead of
    each rank's shard); it needs CUDA and torchrun, and is off by default, as in mainstream adversarial
    training code.
    """
    global _CURRENT
    wanted = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if sync_bn and wanted.type != "cuda":
        raise ValueError("--sync-bn needs CUDA: SyncBatchNorm does not run on the CPU (gloo); leave it out, or add "
                         "--device cuda on a GPU machine")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        if sync_bn:
            raise ValueError("--sync-bn syncs BatchNorm across the processes of torchrun; launch with "
                             "`torchrun --nproc-per-node N -m cartl_kit ...`, or leave it out")
        return None
    import torch.distributed as dist
    if _CURRENT is not None:
        return _CURRENT
    world = World(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")), sync_bn=sync_bn)
    if not dist.is_initialized():
        if wanted.type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo")
    _CURRENT = world
    return world


def leave(*, wait: bool = True) -> None:
    """Leave the process group (at the end of a command).

    With ``wait`` (a command that succeeded) the ranks first meet at a barrier, so that none tears down its
    connections while another still has a collective in flight; gloo aborts a process (SIGABRT) whose peer
    closes a connection under a pending operation. A command that failed leaves at once (its peers may never
    reach the barrier); a peer that has gone already is not an error here.
    """
    global _CURRENT
    import torch.distributed as dist
    if dist.is_initialized():
        if wait:
            try:
                dist.barrier()
            except RuntimeError:  # a peer left first (its command failed): nothing is in flight to protect
                pass
        dist.destroy_process_group()
    _CURRENT = None


def barrier() -> None:
    if _CURRENT is not None:
        import torch.distributed as dist
        dist.barrier()


def agree(value: Any) -> Any:
    """Rank 0's ``value``, on every rank (a collective); ``value`` itself in a single process."""
    if _CURRENT is None:
        return value
    import torch.distributed as dist
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list:
    """Every rank's ``value``, in rank order, on every rank (a collective); ``[value]`` in a single process."""
    if _CURRENT is None:
        return [value]
    import torch.distributed as dist
    found: list = [None] * _CURRENT.world_size
    dist.all_gather_object(found, value)
    return found


def on_main(work: Callable[[], Any]) -> Any:
    """``work()`` run on rank 0 only, its result given to every rank (the others wait for it)."""
    if _CURRENT is None:
        return work()
    return agree(work() if _CURRENT.main else None)


@contextlib.contextmanager
def main_holds(lock: Callable[[], Any]) -> Iterator[None]:
    """Rank 0 holds ``lock()`` (a context manager, e.g. a run folder's lock) while every rank runs the block;
    the others start once rank 0 has it and leave once every rank is done."""
    if _CURRENT is None:
        with lock():
            yield
        return
    held = lock() if _CURRENT.main else contextlib.nullcontext()
    with held:
        barrier()
        yield
        barrier()


def bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share [lo, hi) of ``n`` examples (sizes differ by at most one)."""
    return n * rank // world_size, n * (rank + 1) // world_size


class ShardedBatches:
    """This rank's shard of every global batch of ``loader`` (which every rank draws identically).

    ``global_size`` is the size of the global batch last served. ``state_dict`` is the loader's, so a
    checkpoint resumes the same sequence of batches.
    """

    def __init__(self, loader: Any, world: World):
        self.loader, self.world, self.global_size = loader, world, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            self.global_size = len(x)
            lo, hi = bounds(len(x), self.world.rank, self.world.world_size)
            yield x[lo:hi], y[lo:hi]

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def check_shards(train_size: int, batch_size: int, world_size: int) -> None:
    """FDM's summed term needs every global batch split into equal shards: refuse other world sizes."""
    sizes = {batch_size} | ({train_size % batch_size} - {0})
    uneven = sorted(s for s in sizes if s % world_size)
    if uneven:
        fits = [w for w in range(1, 17) if all(s % w == 0 for s in sizes)]
        raise ValueError(f"FDM under DDP needs batches that split evenly over the {world_size} processes; the "
                         f"global batches of this run have {', '.join(map(str, sorted(sizes)))} images; use "
                         f"--nproc-per-node with a world size in {fits}")


StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]


def scaled_step(step: StepFn, batches: ShardedBatches) -> StepFn:
    """``step`` with its loss weighted by this rank's share of the global batch × world size, so that DDP's
    average over ranks of the gradients is the gradient of the global batch's mean loss. Metrics are the
    shard's (``fit`` averages them over batches; ``reduce_record`` over ranks)."""
    world = batches.world.world_size

    def step_(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss, metrics = step(model, x, y)
        return loss * (len(x) * world / batches.global_size), metrics
    return step_


def reduce_record(record: dict) -> dict:
    """An epoch's record with each metric averaged over the ranks (a collective: every rank calls it)."""
    if _CURRENT is None:
        return record
    import torch.distributed as dist
    names = [k for k, v in record.items() if isinstance(v, float) and k not in ("lr", "seconds")]
    values = torch.tensor([record[k] for k in names], dtype=torch.float64)
    dist.all_reduce(values)
    return {**record, **{k: float(v) / _CURRENT.world_size for k, v in zip(names, values)}}


class _Routed(nn.Module):
    """One ``forward`` for every way the steps call a block model, so all of them pass through DDP."""

    def __init__(self, net: Any):  # a model with forward_features / forward_from (train.BlockModel)
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, upto: int | None = None, start: int | None = None) -> torch.Tensor:
        if upto is not None:
            return self.net.forward_features(x, upto=upto)
        if start is not None:
            return self.net.forward_from(x, start=start)
        return self.net(x)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """Turn every BatchNorm layer of ``model`` into ``nn.SyncBatchNorm`` in place (weights, statistics and
    ``requires_grad`` kept; frozen ``FrozenBatchNorm2d`` statistics stay as they are); returns ``model``."""
    for name, child in list(model.named_children()):
        setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return model


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel, keeping the block interface (``forward_features``,
    ``forward_from``, ``split_index``, ``num_blocks``) when the model has one. Freeze parameters and
    register NEFT before calling it: DDP fixes the set of trainable parameters when it wraps."""
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    if _CURRENT is not None and _CURRENT.sync_bn:
        sync_batchnorm(model)
    if not hasattr(model, "forward_features"):
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=True)
    return BlockDDP(_Routed(model), device_ids=ids, forward_sync_buffers=True)


class BlockDDP(nn.parallel.DistributedDataParallel):
    """DDP over a block model: its block calls go through DDP's ``forward`` (see ``_Routed``)."""

    @property
    def num_blocks(self) -> int:
        return self.module.net.num_blocks

    def split_index(self, k: int) -> int:
        return self.module.net.split_index(k)

    def forward_features(self, x: torch.Tensor, *, upto: int) -> torch.Tensor:
        return self(x, upto=upto)

    def forward_from(self, features: torch.Tensor, *, start: int) -> torch.Tensor:
        return self(features, start=start)


__all__ = ["BlockDDP", "ShardedBatches", "World", "agree", "barrier", "bounds", "check_shards", "current",
           "from_env", "leave", "main_holds", "on_main", "reduce_record", "scaled_step", "wrap"]
