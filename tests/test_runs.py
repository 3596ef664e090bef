"""Configs round-trip through JSON; the runs store caches, writes atomically, resumes exactly, loads safely."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cartl_kit import config as cfg
from cartl_kit import runs
from cartl_kit.data import load_dataset, make_loader, sample
from cartl_kit.evaluate import accuracy

TINY_ATTACK = cfg.AttackConfig(eps=0.1, step_size=0.05, steps=1)
TINY_OPTIM = cfg.OptimConfig(epochs=3, batch_size=128, milestones=(0.5,))


def tiny_source(**kwargs) -> cfg.SourceConfig:
    return cfg.SourceConfig(dataset="digits[0-4]", arch="wrn16_1", attack=TINY_ATTACK, optim=TINY_OPTIM, **kwargs)


def tiny_transfer(**kwargs) -> cfg.TransferConfig:
    defaults = dict(teacher=tiny_source(), dataset="digits[5-9]", k=3,
                    optim=cfg.OptimConfig(epochs=2, batch_size=128, base_lr=0.05, milestones=()))
    return cfg.TransferConfig(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory):
    """A runs folder holding one finished tiny teacher, trained once for this module."""
    root = tmp_path_factory.mktemp("runs")
    runs.run(tiny_source(), root=root, device="cpu", progress=False)
    return root


def copy_of(trained_root, folder):
    shutil.copytree(trained_root, folder, dirs_exist_ok=True)
    return folder


@pytest.mark.parametrize("config", [
    tiny_source(), tiny_source(method="fdm", k=3, lam=0.01), tiny_transfer(), tiny_transfer(method="neft", beta=0.6),
    tiny_transfer(method="lwf", lwf_lam=0.01, bn_case="train-update"), cfg.EvalConfig(max_examples=100),
    cfg.get_preset("paper").transfer(cfg.get_preset("paper").source("fdm"), "neft"),
])
def test_configs_round_trip_through_json(config):
    again = cfg.from_json(cfg.to_json(config))
    assert again == config and cfg.config_hash(again) == cfg.config_hash(config)


def test_hash_depends_on_every_field_and_on_the_teacher():
    base = tiny_transfer()
    variants = [tiny_transfer(k=2), tiny_transfer(seed=1), tiny_transfer(bn_case="train-update"),
                tiny_transfer(teacher=tiny_source(seed=1))]
    hashes = {cfg.config_hash(c) for c in [base, *variants]}
    assert len(hashes) == 5
    assert tiny_transfer(method="neft", beta=0.6).half_residual and not base.half_residual


@pytest.mark.parametrize("make, message", [
    (lambda: tiny_transfer(k=0), "k must be an integer in 1..8"),
    (lambda: tiny_transfer(k=9), "k must be an integer in 1..8"),
    (lambda: tiny_source(method="fdm", k=3, lam=-0.1), "must be a finite number >= 0"),
    (lambda: tiny_source(method="fdm"), "needs k .* and lam"),
    (lambda: tiny_transfer(method="neft", beta=0.0), "beta .* must be > 0"),
    (lambda: tiny_transfer(method="neft"), "needs beta"),
    (lambda: tiny_transfer(bn_case="frozen"), "unknown BatchNorm case 'frozen'"),
    (lambda: tiny_transfer(method="ft"), "unknown transfer method 'ft'"),
    (lambda: cfg.SourceConfig(dataset="digits", arch="wrn99"), "unknown architecture 'wrn99'"),
    (lambda: cfg.get_preset("huge"), "unknown preset 'huge'; choose one of quick, shift, fashion, smoke, paper"),
])
def test_bad_configs_fail_on_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_finished_run_is_loaded_not_retrained(trained_root, tmp_path):
    first = runs.run(tiny_source(), root=copy_of(trained_root, tmp_path), device="cpu", progress=False)
    assert sorted(p.name for p in first.path.iterdir()) == ["config.json", "env.json", "history.json", "model.pt"]
    assert [r["epoch"] for r in first.history] == [1, 2, 3]
    stamp = (first.path / "model.pt").stat().st_mtime_ns
    again = runs.run(tiny_source(), root=tmp_path, device="cpu", progress=False, callback=lambda r: pytest.fail("retrained"))
    assert (again.path / "model.pt").stat().st_mtime_ns == stamp
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))


def test_an_interrupted_run_resumes_and_ends_like_an_uninterrupted_one(trained_root, tmp_path):
    config = tiny_transfer(method="neft", beta=0.6)
    straight = runs.run(config, root=copy_of(trained_root, tmp_path / "a"), device="cpu", progress=False)
    copy_of(trained_root, tmp_path / "b")

    def interrupt(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runs.run(config, root=tmp_path / "b", device="cpu", progress=False, callback=interrupt)
    folder = runs.run_path(config, tmp_path / "b")
    assert runs.find_run(config, tmp_path / "b") is None  # never looks complete
    assert (folder / "checkpoint.pt").exists() and not (folder / "model.pt").exists()
    assert not list(folder.glob(".*.tmp"))
    resumed = runs.run(config, root=tmp_path / "b", device="cpu", progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.history[-1]["loss"] == resumed.history[-1]["loss"]
    env = lambda run: json.loads((run.path / "env.json").read_text())  # noqa: E731
    assert env(resumed)["resumed_after_epoch"] == 1 and "resumed_after_epoch" not in env(straight)


def test_evaluations_are_cached_and_tabulated(trained_root, tmp_path, monkeypatch):
    finished = runs.run(tiny_transfer(), root=copy_of(trained_root, tmp_path), device="cpu", progress=False)
    evaluation = cfg.EvalConfig(attack=cfg.AttackConfig(eps=0.1, step_size=0.05, steps=3), max_examples=60)
    sampled = []
    monkeypatch.setattr(runs, "sample", lambda data, n: sampled.append(n) or sample(data, n))
    result = runs.evaluate_run(finished, evaluation, device="cpu", progress=False)
    assert sampled == [60]
    assert result["n"] == 60 and 0 <= result["robust_acc"] <= result["clean_acc"] <= 1
    # n examples means a seeded random subset of the (class-ordered) test split, not its first n
    subset = sample(load_dataset(finished.config.dataset, split="test"), 60)
    assert result["clean_acc"] == accuracy(finished.model.eval(), make_loader(subset, batch_size=256), device="cpu")
    assert evaluation.name.endswith("-sample60")
    stored = json.loads((finished.path / "metrics.json").read_text())
    assert stored[evaluation.name] == result
    table = runs.load_runs(tmp_path, include_shipped=False)
    assert set(table["kind"]) == {"source", "transfer"}
    row = table[table["kind"] == "transfer"].iloc[0]
    assert row["k"] == 3 and row["teacher.method"] == "at" and row["robust_acc"] == result["robust_acc"]


def test_corrupt_and_mismatched_checkpoints_are_refused(trained_root, tmp_path):
    finished = runs.run(tiny_source(), root=copy_of(trained_root, tmp_path), device="cpu", progress=False)
    model_file = finished.path / "model.pt"
    good = model_file.read_bytes()
    model_file.write_bytes(good[: len(good) // 2])
    with pytest.raises(runs.RunError, match="corrupt or not a cartl_kit checkpoint"):
        runs.load_run(finished.path)
    state = torch.load(__import__("io").BytesIO(good), weights_only=True)
    state["blocks.7.weight"] = torch.zeros(3, 64)
    torch.save(state, model_file)
    with pytest.raises(runs.RunError, match="does not match the architecture"):
        runs.load_run(finished.path)
    torch.save({"blocks": torch.nn.Linear(2, 2)}, model_file)  # a pickled module: never unpickled
    with pytest.raises(runs.RunError, match="corrupt or not a cartl_kit checkpoint"):
        runs.load_run(finished.path)


def test_a_missing_teacher_is_reported(tmp_path):
    with pytest.raises(runs.RunError, match="teacher run .* does not exist"):
        runs.run(tiny_transfer(), root=tmp_path, device="cpu", progress=False, train_teacher=False)
    assert not any(tmp_path.iterdir())  # nothing written for a refused run


def test_freeze_reuse_and_vanilla_are_one_config():
    assert tiny_transfer(bn_case="freeze-reuse") == tiny_transfer(bn_case="vanilla")
    assert cfg.config_hash(tiny_transfer(bn_case="freeze-reuse")) == cfg.config_hash(tiny_transfer())
