"""DDP on the CPU (gloo, world size 2, one spawn for every case): a run on two processes equals one process.

Evaluation shared out over the ranks (``measure.measure_split``) equals one process's exactly; a DDP run killed
after a checkpoint resumes to the bit-identical model of an uninterrupted one.

Without BatchNorm, DDP over 2 shards of B/2 equals a single process on the global batch B. With BatchNorm each
shard normalises with its own statistics, so the reference is a single-process "ghost batch" step: each shard's
forward separately from the same state, its loss weighted by its share of the batch, the gradients summed, and
only shard 0's running-statistics update kept (DDP keeps rank 0's buffers). Attacks are deterministic here (no
random start), so both sides craft the same examples.
"""

from __future__ import annotations

import json
import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

pytestmark = pytest.mark.slow
WORLD = 2
TOL = 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loader(n: int = 20, batch: int = 8, channels: int = 1, size: int = 8, classes: int = 4):
    """Re-iterable fixed batches (the last one smaller), the same on every rank."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, channels, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _ghost_fit(model, batches, step, optim, world: int):
    """``train.fit`` on one process, each global batch as ``world`` ghost shards (see the module docstring)."""
    from cartl_kit.distributed import bounds
    from cartl_kit.train import lr_at
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=optim.base_lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    for epoch in range(1, optim.epochs + 1):
        model.train()
        for index, (x, y) in enumerate(batches):
            lr = lr_at(epoch, index, batches_per_epoch=len(batches), epochs=optim.epochs, base_lr=optim.base_lr,
                       warmup_epochs=optim.warmup_epochs, milestones=optim.milestones, gamma=optim.gamma)
            for group in opt.param_groups:
                group["lr"] = lr
            start = {name: b.clone() for name, b in model.named_buffers()}
            opt.zero_grad(set_to_none=True)
            kept = None
            for rank in range(world):
                model.load_state_dict({**model.state_dict(), **start}, strict=True)
                lo, hi = bounds(len(x), rank, world)
                loss, _ = step(model, x[lo:hi], y[lo:hi])
                (loss * (hi - lo) / len(x)).backward()
                if rank == 0:
                    kept = {name: b.clone() for name, b in model.named_buffers()}
            model.load_state_dict({**model.state_dict(), **kept}, strict=True)
            opt.step()
    return model


def _cases():
    """name -> (model builder, step builder(world_size), loader, fdm?)."""
    from cartl_kit import AttackConfig, adversarial_step, create_model, fdm_step, make_student, natural_step
    from cartl_kit.neft import apply_neft
    attack = AttackConfig(eps=0.1, step_size=0.05, steps=2, random_start=False)

    def mlp():
        torch.manual_seed(1)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))

    def wrn():
        torch.manual_seed(1)
        return create_model("wrn16_1", num_classes=4, in_channels=1)

    def student(neft: bool):
        def build():
            teacher = wrn()
            model = make_student(teacher, k=2 if not neft else 3, num_classes=4, half_residual=neft)
            if neft:
                apply_neft(model, k=3, beta=0.6, generator=torch.Generator().manual_seed(2))
            return model
        return build

    return {
        "natural, no BatchNorm": (mlp, lambda w: natural_step, _loader(20), False),
        "natural, BatchNorm": (wrn, lambda w: natural_step, _loader(20), False),
        "PGD-AT": (wrn, lambda w: adversarial_step(attack=attack), _loader(20), False),
        "FDM": (wrn, lambda w: fdm_step(k=3, lam=0.01 * w, attack=attack), _loader(16), True),
        "frozen-prefix transfer": (student(False), lambda w: natural_step, _loader(20), False),
        "NEFT transfer": (student(True), lambda w: natural_step, _loader(20), False),
    }


def _evaluation_cases():
    """name -> (model, data, evaluation, batch size): the ranks get different numbers of batches."""
    from cartl_kit import AttackConfig, create_model
    from cartl_kit.config import EvalConfig
    from cartl_kit.ensemble import EnsembleConfig
    from cartl_kit.images import ImageData
    torch.manual_seed(1)
    model = create_model("wrn16_1", num_classes=4, in_channels=1).eval()
    (x, y), = _loader(40, batch=40)
    data = ImageData("toy", "test", x, y, ("a", "b", "c", "d"))
    attack = AttackConfig(eps=0.03, step_size=0.01, steps=3)
    small = EnsembleConfig(guard_steps=2, guard_restarts=2, apgd_ce_steps=3, apgd_t_steps=2, n_targets=2)
    cases = {method: (model, data.take(range(20)), EvalConfig(attack=attack, method=method, ensemble=small), 8)
             for method in ("pgd", "ensemble")}  # 3 batches: 1 on rank 0, 2 on rank 1
    # a random start over a large ball, barely moved: which examples survive is decided by the random starts
    cases["random starts"] = (model, data, EvalConfig(attack=AttackConfig(eps=1.0, step_size=1e-4, steps=1)), 2)
    return cases


def _measured(seed: int = 0) -> dict:
    from cartl_kit.measure import measure_split
    return {f"evaluation: {name}": measure_split(model, data, evaluation, device="cpu", progress=False,
                                                 batch_size=batch, seed=seed)
            for name, (model, data, evaluation, batch) in _evaluation_cases().items()}


def _worker(rank: int, port: int, out: str) -> None:
    os.dup2(os.open(f"{out}.rank{rank}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)  # what a crash printed
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from cartl_kit import distributed
    from cartl_kit.config import OptimConfig
    from cartl_kit.train import fit
    world = distributed.from_env("cpu")
    optim = OptimConfig(epochs=2, base_lr=0.05, warmup_epochs=0, milestones=())
    found = {}
    for name, (build, step_for, batches, _) in _cases().items():
        model = build()
        sharded = distributed.ShardedBatches(batches, world)
        fit(distributed.wrap(model, torch.device("cpu")), sharded,
            distributed.scaled_step(step_for(WORLD), sharded), optim, device="cpu", progress=False)
        # the reference weights each shard's whole loss by its share, so it also needs FDM's summed term at λ·world
        reference = _ghost_fit(build(), batches, step_for(WORLD), optim, WORLD)
        diff = max((a - b).abs().max().item() for a, b in zip(model.state_dict().values(),
                                                                reference.state_dict().values()) if a.is_floating_point())
        found[name] = diff
    found.update(_measured())
    if rank == 0:
        with open(out, "w") as f:
            json.dump(found, f)
    distributed.leave()


def _last_words(out) -> str:
    """The last line each rank wrote to its stderr (a C++ abort prints its exception there)."""
    words = []
    for rank in range(WORLD):
        err = out.with_name(f"{out.name}.rank{rank}.err")
        lines = [line for line in err.read_text(errors="replace").splitlines() if line.strip()] if err.exists() else []
        words.append(f"rank {rank}: {' / '.join(lines[-2:]) or '(nothing)'}")
    return "; ".join(words)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Both ranks' results; a rank killed by a signal (a gloo teardown abort, seen once in CI) gets one more
    spawn, with what the crash printed in a warning; a second death, or any exit with a status, fails."""
    out = tmp_path_factory.mktemp("ddp") / "found.json"
    for attempt in (1, 2):
        try:
            mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD)
            break
        except mp.ProcessExitedException as error:
            if attempt == 2 or error.signal_name is None:
                raise AssertionError(f"{error}; {_last_words(out)}") from error
            warnings.warn(f"DDP spawn retried once: {error}; {_last_words(out)}", stacklevel=1)
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", list(_cases()))
def test_ddp_equals_one_process_on_the_same_global_batch(ddp_results, name):
    assert ddp_results[name] < TOL, f"{name}: largest weight difference {ddp_results[name]:.2e}"


def test_evaluation_shared_out_over_ranks_equals_one_process_exactly(ddp_results):
    alone = _measured()
    for name, result in alone.items():
        assert ddp_results[name] == json.loads(json.dumps(result)), name
    assert 0 < alone["evaluation: pgd"]["clean_acc"] and alone["evaluation: ensemble"]["n"] == 20
    assert len(set(alone["evaluation: ensemble"]["broken_by"])) > 1, "every example ended alike: the check is weak"
    assert _measured(seed=1)["evaluation: random starts"] != alone["evaluation: random starts"], \
        "the random starts decide nothing here: the check is weak"


def test_shards_cover_the_batch_without_padding():
    from cartl_kit.distributed import bounds, check_shards
    for n in (1, 7, 8, 64):
        parts = [bounds(n, r, 3) for r in range(3)]
        assert parts[0][0] == 0 and parts[-1][1] == n and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    check_shards(2500, 64, 2)  # 39 batches of 64 and one of 4: all split in two
    with pytest.raises(ValueError, match=r"world size in \[1, 2, 4\]"):
        check_shards(2500, 64, 3)


def test_torchrun_trains_one_run_in_the_single_process_folder_and_rank_0_writes(tmp_path):
    """`torchrun --nproc-per-node 2 -m cartl_kit source`: the same config hash as one process, one printed line,
    the per-rank batch in env.json, nothing else in the folder."""
    import subprocess
    import sys

    from cartl_kit.config import get_preset
    from cartl_kit.store import run_path
    config = get_preset("smoke").source("at", seed=0)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "cartl_kit",
                           "source", "--preset", "smoke", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    folder = run_path(config, tmp_path)
    assert done.stdout.strip() == str(folder), "rank 0 prints, once"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "env.json", "history.json", "model.pt"]
    env = json.loads((folder / "env.json").read_text())
    assert env["world_size"] == 2 and env["per_rank_batch"] == config.optim.batch_size / 2


def test_the_scaling_benchmark_runs_and_writes_its_table(tmp_path):
    """bench/scaling.py end to end with tiny settings (no timing asserted: see bench/README.md)."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "bench" / "scaling.py"
    done = subprocess.run([sys.executable, str(script), "--batches", "1", "--repeats", "1", "--skip-grid"],
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, CARTL_BENCH_RESULTS=str(tmp_path), OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["candidate"] for r in written["rows"]] == ["1 process", "DDP, 1 process", "DDP, 2 processes"]
    assert all(r["img/s (median)"] > 0 for r in written["rows"]) and "|" in done.stdout


def _cell_argv(config, root) -> list[str]:
    import sys

    from cartl_kit.config import get_preset
    from cartl_kit.grid import Cell, cell_argv
    evaluation = get_preset("smoke").evaluation
    return cell_argv(Cell(config, (evaluation, evaluation.as_pgd())), root=root, python=sys.executable)[1:]


def test_a_killed_ddp_run_resumes_to_the_same_model_and_records_the_single_process_evaluation(tmp_path):
    """torchrun, 2 ranks: killed (SIGKILL) after its first checkpoint, refused by one process, resumed by two;
    it ends bit-identical to an uninterrupted DDP run, and its recorded evaluations (rank 1 had no batch of
    the test split) equal a single process's."""
    import dataclasses
    import signal
    import subprocess
    import sys
    import time

    from cartl_kit import runs
    from cartl_kit.config import get_preset
    from cartl_kit.measure import measure_split
    base = get_preset("smoke").source("at", seed=0)
    config = dataclasses.replace(base, optim=dataclasses.replace(base.optim, epochs=3))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]

    def train(root, **popen):
        return subprocess.Popen(torchrun + _cell_argv(config, root), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **popen)

    done = train(tmp_path / "straight")
    assert done.wait(timeout=600) == 0, done.stderr.read()[-3000:]
    straight = runs.run_path(config, tmp_path / "straight")
    folder = runs.run_path(config, tmp_path / "killed")
    killed = train(tmp_path / "killed")
    deadline = time.monotonic() + 600
    while not (folder / runs.CHECKPOINT_FILE).exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    import psutil  # torchrun starts each rank in a session of its own: kill the whole tree, as a scheduler would
    for process in [psutil.Process(killed.pid), *psutil.Process(killed.pid).children(recursive=True)]:
        process.send_signal(signal.SIGKILL)
    killed.wait()
    assert (folder / runs.CHECKPOINT_FILE).exists() and not runs.is_finished(folder), "no kill landed mid-run"
    alone = subprocess.run([sys.executable] + _cell_argv(config, tmp_path / "killed"), env=env,
                           capture_output=True, text=True, timeout=600)
    assert alone.returncode == 2 and "resume it with torchrun --nproc-per-node 2" in alone.stderr, alone.stderr
    resumed = train(tmp_path / "killed")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    a, b = (torch.load(f / runs.MODEL_FILE, weights_only=True) for f in (straight, folder))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert [r["epoch"] for r in runs.load_run(folder).history] == [1, 2, 3]
    recorded = json.loads((straight / "metrics.json").read_text())
    assert json.loads((folder / "metrics.json").read_text()) == recorded
    finished = runs.load_run(straight)
    test = runs.load_dataset(config.dataset, split="test")
    for evaluation in (get_preset("smoke").evaluation, get_preset("smoke").evaluation.as_pgd()):
        alone_result = measure_split(finished.model.eval(), test, evaluation, device="cpu", progress=False)
        assert recorded[evaluation.name] == json.loads(json.dumps(alone_result)), evaluation.name


def test_sync_bn_converts_the_trained_batchnorms_only_and_is_refused_without_cuda():
    from cartl_kit import create_model, make_student
    from cartl_kit.distributed import from_env, sync_batchnorm
    from cartl_kit.transfer import FrozenBatchNorm2d
    torch.manual_seed(0)
    student = make_student(create_model("wrn16_1", num_classes=4), k=3, num_classes=4, bn_case="freeze-reuse")
    before = {name: value.clone() for name, value in student.state_dict().items()}
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    synced = sync_batchnorm(student)
    assert synced is student and any(isinstance(m, nn.SyncBatchNorm) for m in student.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in student.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in student.modules()), "reused statistics stay frozen"
    after = student.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[n], before[n]) for n in before)
    assert {name for name, p in student.named_parameters() if p.requires_grad} == trainable
    with pytest.raises(ValueError, match="--sync-bn needs CUDA"):
        from_env("cpu", sync_bn=True)
