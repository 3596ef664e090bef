"""LP-FT (method 'lpft': the linear probe's head, then the last k blocks) and the weight-interpolation front."""

from __future__ import annotations

import pytest
import torch

from cartl_kit import runs
from cartl_kit.interpolate import interpolate, interpolation_front, probe_run
from conftest import TINY_PRESET

PRESET = TINY_PRESET


def test_interpolation_is_linear_in_every_float_tensor_and_keeps_the_step_counters():
    from cartl_kit import create_model
    torch.manual_seed(0)
    a, b = create_model("wrn16_1", num_classes=3), create_model("wrn16_1", num_classes=3)
    for module in b.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.add_(1.0)
            module.num_batches_tracked.fill_(7)
    sa, sb = a.state_dict(), b.state_dict()
    for alpha in (0.0, 0.3, 1.0):
        mixed = interpolate(a, b, alpha).state_dict()
        for key, value in mixed.items():
            if value.is_floating_point():
                assert torch.allclose(value, (1 - alpha) * sa[key] + alpha * sb[key], atol=1e-6), key
            else:
                assert torch.equal(value, sb[key]), key
    assert torch.equal(interpolate(a, b, 0.0).state_dict()["stem.weight"], sa["stem.weight"])
    with pytest.raises(ValueError, match=r"alpha is a number in \[0, 1\]"):
        interpolate(a, b, 1.5)
    with pytest.raises(ValueError, match="differ in their layers"):
        interpolate(a, create_model("wrn16_1", num_classes=4), 0.5)


def test_lpft_configs_name_their_probe_and_refuse_k_1():
    teacher = PRESET.source("at")
    config = PRESET.transfer(teacher, "lpft", k=3)
    assert config.probe == PRESET.transfer(teacher, "tl", k=1)
    assert config.slug.startswith("lpft-k3-")
    with pytest.raises(ValueError, match="k = 1 is the probe itself"):
        PRESET.transfer(teacher, "lpft", k=1)


@pytest.fixture(scope="module")
def lpft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    config = PRESET.transfer(PRESET.source("at"), "lpft", k=3)
    return root, runs.run(config, root=root, device="cpu", progress=False, shipped=False)


def test_an_lpft_run_trains_its_probe_first_and_starts_from_the_probes_head(lpft_run):
    root, tuned = lpft_run
    probe = probe_run(tuned)
    assert probe.path.parent == root and probe.config == tuned.config.probe
    teacher = runs.load_run(runs.find_run(tuned.config.teacher, root, shipped=False)).model
    start = runs.build_student(tuned.config, teacher, runs.load_dataset(tuned.config.dataset, split="train"),
                               generator=torch.Generator().manual_seed(0), probe=probe.model)
    assert torch.equal(start.head.weight, probe.model.head.weight)
    # LP-FT trained the last k = 3 blocks (units 5-6 and the final norm) and kept the teacher's extractor
    assert not torch.equal(tuned.model.blocks[5].conv1.weight, teacher.blocks[5].conv1.weight)
    assert torch.equal(tuned.model.blocks[4].conv1.weight, teacher.blocks[4].conv1.weight)
    assert torch.equal(tuned.model.stem.weight, teacher.stem.weight)


def test_the_front_ends_at_the_probe_and_the_tuned_run_and_records_the_points_between(lpft_run):
    root, tuned = lpft_run
    evaluation = PRESET.evaluation
    front = interpolation_front(tuned, evaluation, alphas=[0, 0.5, 1], device="cpu", progress=False)
    assert [row["alpha"] for row in front] == [0.0, 0.5, 1.0]
    assert front[0]["robust_acc"] == runs.evaluate_run(probe_run(tuned), evaluation, device="cpu")["robust_acc"]
    assert front[2]["clean_acc"] == runs.evaluate_run(tuned, evaluation, device="cpu")["clean_acc"]
    again = runs.load_run(tuned.path)
    assert f"interp-a0.5-{evaluation.name}" in again.metrics
    assert interpolation_front(again, evaluation, alphas=[0.5], device="cpu", progress=False) == front[1:2]
    table = runs.load_runs(root, include_shipped=False)
    assert not table["evaluation"].fillna("").str.startswith("interp-a").any(), "θ(α) is not the run's own model"


def test_front_dominance_counts_both_ways_and_gives_the_verdict():
    from cartl_kit.findings import front_dominance

    def front(*points):
        return [{"clean_acc": c, "robust_acc": r} for c, r in points]
    high, low = front((0.9, 0.5), (0.95, 0.4)), front((0.88, 0.45), (0.9, 0.45))
    assert "2 of B's 2 points are dominated" in front_dominance(high, low, name="A", other_name="B")
    assert front_dominance(high, low, name="A", other_name="B").endswith(": on these numbers A dominates B.")
    assert front_dominance(low, high, name="B", other_name="A").endswith(": on these numbers A dominates B.")
    assert front_dominance(high, low, name="A", other_name="B", n=100).endswith("so this run does not settle it.")
    assert "2 of its robust gaps exceed 2 s.e. on 2000" in front_dominance(high, low, name="A", other_name="B", n=2000)
    crossing = front((0.99, 0.1))
    assert front_dominance(high, crossing, name="A", other_name="C", n=100).endswith(
        "neither front dominates the other.")
    assert front_dominance([], low, name="A", other_name="B") == "Not judged: A has no point."
