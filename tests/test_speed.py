"""The GPU-oriented fast-path switches, checked on the CPU: bf16 autocast (training and attacks, losses in
float32), the fp32/bf16 agreement check, torch.compile in fit, and the cuDNN autotuner's default."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cartl_kit as ck
from cartl_kit.speed import autocast, configure_cuda
from conftest import EPS, Batches


def _conv_output_dtypes(model: nn.Module) -> tuple[list, object]:
    seen = []
    handle = model.stem.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    return seen, handle


@pytest.mark.parametrize("step", ["natural", "adversarial"])
def test_bf16_training_runs_its_forward_passes_in_bf16_and_stays_close_to_fp32(digits, step):
    x, y = digits[0][:64], digits[1][:64]
    make_step = {"natural": lambda: ck.natural_step,
                 "adversarial": lambda: ck.adversarial_step(attack=ck.AttackConfig(eps=EPS, step_size=EPS / 3,
                                                                                   steps=2))}[step]
    models, losses, dtypes = {}, {}, {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = ck.create_model("wrn16_1", num_classes=10, in_channels=1)
        seen, handle = _conv_output_dtypes(model)
        torch.manual_seed(1)
        history = ck.fit(model, Batches(x, y), make_step(),
                         ck.OptimConfig(epochs=1, warmup_epochs=0, milestones=(), base_lr=0.05), device="cpu",
                         progress=False, precision=precision)
        handle.remove()
        models[precision], losses[precision], dtypes[precision] = model, history[-1]["loss"], set(seen)
    assert dtypes == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    assert all(p.dtype == torch.float32 for p in models["bf16"].parameters())  # master weights stay fp32
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)
    moved = [(b - a).abs().max().item() for a, b in zip(models["fp32"].parameters(), models["bf16"].parameters())]
    assert max(moved) < 0.05


def test_step_losses_are_float32_under_bf16_autocast(digits, robust_model):
    x, y = digits[0][:16], digits[1][:16]
    with autocast(torch.device("cpu"), "bf16"):
        assert robust_model(x).dtype == torch.bfloat16
        loss, _ = ck.natural_step(robust_model, x, y)
        fdm = ck.fdm_step(k=3, lam=0.01, attack=ck.AttackConfig(eps=EPS, step_size=EPS / 3, steps=1))
        robust_model.train()
        try:
            fdm_loss, _ = fdm(robust_model, x, y)
        finally:
            robust_model.eval()
    assert loss.dtype == torch.float32 and fdm_loss.dtype == torch.float32


def test_bf16_evaluation_agrees_with_fp32_on_a_robust_model(digits, robust_model):
    loader = Batches(digits[2][:200], digits[3][:200], batch_size=100)
    report = ck.compare_precision(robust_model, loader, max_examples=200,
                                  attack=ck.AttackConfig(eps=EPS, step_size=EPS / 4, steps=10),
                                  device="cpu", tolerance=0.03)
    assert report["fp32"].n == report["bf16"].n == 200
    assert report["robust_diff"] == pytest.approx(report["bf16"].robust_acc - report["fp32"].robust_acc)
    assert report["agree"], report
    assert report["fp32"].robust_acc < report["fp32"].clean_acc  # the attack did something in both
    assert report["bf16"].robust_acc < report["bf16"].clean_acc


def test_bad_precision_and_tolerance_are_refused(digits, robust_model):
    batches = [(digits[0][:8], digits[1][:8])]
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16'"):
        ck.fit(robust_model, batches, ck.natural_step, ck.OptimConfig(epochs=1), device="cpu", progress=False,
               precision="fp16")
    with pytest.raises(ValueError, match="precision must be"):
        ck.robust_accuracy(robust_model.eval(), batches, attack=ck.AttackConfig(eps=EPS, step_size=EPS, steps=1),
                           device="cpu", progress=False, precision="half")
    with pytest.raises(ValueError, match="tolerance is a fraction"):
        ck.compare_precision(robust_model.eval(), batches, tolerance=1.0, device="cpu")


def test_compiled_training_matches_eager(digits):
    x, y = digits[0][:128], digits[1][:128]
    models = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        ck.fit(model, Batches(x, y, batch_size=32), ck.natural_step,
               ck.OptimConfig(epochs=2, warmup_epochs=0, milestones=(), base_lr=0.05), device="cpu", progress=False,
               compile=compiled)
        models.append(model)
    eager, compiled = models
    assert compiled._compiled_call_impl is not None  # the forward really went through torch.compile
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_cudnn_autotuner_is_on_for_cuda_unless_determinism_is_asked_for():
    flag, deterministic = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    try:
        torch.backends.cudnn.benchmark = False
        assert configure_cuda(torch.device("cpu")) is False and torch.backends.cudnn.benchmark is False
        assert configure_cuda(torch.device("cuda")) is True
        assert configure_cuda(torch.device("cuda"), cudnn_benchmark=False) is False
        torch.use_deterministic_algorithms(True)
        assert configure_cuda(torch.device("cuda")) is False
    finally:
        torch.backends.cudnn.benchmark = flag
        torch.use_deterministic_algorithms(deterministic)


def test_gpu_check_script_parses_fails_fast_without_cuda_and_its_entries_run_on_the_cpu(tmp_path, monkeypatch, capsys):
    """bench/gpu_check.sh is for a CUDA machine; here: it parses, stops with one line when CUDA is absent, and
    every Python entry it calls answers --help (gpu_check.py also runs its checks, tiny, with --dry-run)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "bench"
    env = {**os.environ, "CARTL_BENCH_RESULTS": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    assert subprocess.run(["bash", "-n", str(bench / "gpu_check.sh")]).returncode == 0
    if not torch.cuda.is_available():
        done = subprocess.run(["bash", str(bench / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.strip().count("\n") == 0 and "no CUDA device" in done.stderr
    script = (bench / "gpu_check.sh").read_text()
    for entry, flags in [("at_step.py", ["--ablation", "--threads", "--compile", "--bf16"]),
                         ("eval_ensemble.py", ["--device"])]:
        assert f"bench/{entry}" in script
        done = subprocess.run([sys.executable, str(bench / entry), "--help"], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0 and all(flag in done.stdout for flag in flags), done.stderr[-2000:]
    monkeypatch.syspath_prepend(str(bench))
    monkeypatch.setenv("CARTL_BENCH_RESULTS", str(tmp_path))
    import gpu_check

    assert "bench/gpu_check.py" in script
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--help"])
    assert exit_.value.code == 0 and "--dry-run" in capsys.readouterr().out
    assert gpu_check.main(["all", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "gpu_check: all checks passed" in out and "'bitwise_equal': True" in out
    assert not list(tmp_path.glob("*.json"))  # a dry run leaves bench/results alone
