"""BitFit (method 'bitfit'): of the last k blocks only the biases and BatchNorm affine parameters train, and the head."""

from __future__ import annotations

import pytest
import torch

from cartl_kit import create_model, runs
from cartl_kit.transfer import make_student, restrict_to_bitfit
from conftest import TINY_PRESET

PRESET = TINY_PRESET


def test_only_the_last_blocks_batchnorm_affine_and_the_head_stay_trainable():
    teacher = create_model("wrn16_1", num_classes=5, in_channels=1)
    student = restrict_to_bitfit(make_student(teacher, k=4, num_classes=3, bn_case="train-reuse"), k=4)
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    # blocks 5-8 of 8 (indices 4-7): two units' BatchNorms, the final BatchNorm, the head
    assert trainable == {f"blocks.{i}.bn{j}.{p}" for i in (4, 5) for j in (1, 2) for p in ("weight", "bias")} | {
        "blocks.6.bn.weight", "blocks.6.bn.bias", "blocks.7.weight", "blocks.7.bias"}
    tuned = make_student(teacher, k=4, num_classes=3, bn_case="train-reuse")
    assert sum(p.numel() for p in student.parameters() if p.requires_grad) < \
        sum(p.numel() for p in tuned.parameters() if p.requires_grad) / 50  # convolutions are most of the weights
    # k = 1 is the head alone: a linear probe
    probe = restrict_to_bitfit(make_student(teacher, k=1, num_classes=3, bn_case="train-reuse"), k=1)
    assert {name for name, p in probe.named_parameters() if p.requires_grad} == {"blocks.7.weight", "blocks.7.bias"}


def test_bitfit_refuses_a_batchnorm_case_that_freezes_the_affine_parameters():
    teacher = PRESET.source("at")
    for case in ("vanilla", "freeze-update"):
        with pytest.raises(ValueError, match="use bn_case 'train-reuse'"):
            PRESET.transfer(teacher, "bitfit", k=3, bn_case=case)
    config = PRESET.transfer(teacher, "bitfit", k=3, bn_case="train-reuse")
    assert config.slug.startswith("bitfit-k3-train-reuse-")


def test_a_bitfit_run_changes_only_the_biases_batchnorm_affine_and_head(tmp_path):
    teacher_config = PRESET.source("at")
    teacher = runs.run(teacher_config, root=tmp_path, device="cpu", progress=False, shipped=False).model
    finished = runs.run(PRESET.transfer(teacher_config, "bitfit", k=3, bn_case="train-reuse"), root=tmp_path,
                        device="cpu", progress=False, shipped=False)
    before = dict(teacher.named_parameters())
    changed = {key for key, value in finished.model.named_parameters()
               if not key.startswith("blocks.7.") and not torch.equal(value, before[key])}  # blocks.7: the new head
    assert changed, "nothing trained"
    assert all(key.startswith(("blocks.5.bn", "blocks.6.bn")) for key in changed), changed  # no weight but BN's
    assert {"blocks.5.bn1.weight", "blocks.5.bn2.bias", "blocks.6.bn.weight"} <= changed, changed
