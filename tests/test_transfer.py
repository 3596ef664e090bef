"""make_student and the four BatchNorm cases: what is frozen stays bit-identical after training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cartl_kit as ck
from cartl_kit.transfer import FrozenBatchNorm2d, extractor_modules, submodel_modules

K = 3  # WRN-16-1: blocks 1..5 frozen, 6 (a residual unit), 7 (final BN) and 8 (fc) fine-tuned


def snapshot(modules):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def stats_and_affine(modules):
    stats, affine = [], []
    for module in modules:
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                stats.append(torch.cat([m.running_mean, m.running_var]).clone())
                affine.append(torch.cat([m.weight.detach(), m.bias.detach()]).clone())
    return stats, affine


def one_training_step(student, digits):
    x, y = digits[0][:64], digits[1][:64] % 5
    ck.fit(student, [(x, y)], ck.natural_step, ck.OptimConfig(epochs=1, warmup_epochs=0, base_lr=0.1), device="cpu",
           progress=False)


@pytest.mark.parametrize("case", ["train-update", "train-reuse", "freeze-update", "freeze-reuse"])
def test_frozen_parts_are_bit_identical_after_a_training_step(robust_model, digits, case):
    student = ck.make_student(robust_model, k=K, num_classes=5, bn_case=case)
    bn_case = ck.get_bn_case(case)
    extractor, submodel = extractor_modules(student, k=K), submodel_modules(student, k=K)
    frozen_params_before = [p.detach().clone() for m in extractor for p in m.parameters()]
    ext_stats_before, ext_affine_before = stats_and_affine(extractor)
    sub_stats_before, sub_affine_before = stats_and_affine(submodel)
    sub_weights_before = [m.weight.detach().clone() for b in submodel for m in b.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    one_training_step(student, digits)

    assert all(torch.equal(a, p) for a, p in zip(frozen_params_before, [p for m in extractor for p in m.parameters()]))
    ext_stats, ext_affine = stats_and_affine(extractor)
    sub_stats, sub_affine = stats_and_affine(submodel)
    assert all(torch.equal(a, b) for a, b in zip(ext_affine_before, ext_affine))  # always frozen
    same_ext_stats = all(torch.equal(a, b) for a, b in zip(ext_stats_before, ext_stats))
    assert same_ext_stats == bn_case.reuse_extractor_stats
    same_sub_affine = all(torch.equal(a, b) for a, b in zip(sub_affine_before, sub_affine))
    assert same_sub_affine == bn_case.freeze_submodel_affine
    assert not any(torch.equal(a, b) for a, b in zip(sub_stats_before, sub_stats))  # sub-model BN in train mode
    sub_weights = [m.weight for b in submodel for m in b.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert not any(torch.equal(a, b) for a, b in zip(sub_weights_before, sub_weights))  # the sub-model learns


def test_reused_statistics_survive_model_train(robust_model, digits):
    student = ck.make_student(robust_model, k=K, num_classes=5, bn_case="vanilla")
    student.train()
    before, _ = stats_and_affine(extractor_modules(student, k=K))
    with torch.no_grad():
        student(digits[0][:32] * 0.5 + 0.5)  # shifted data: live BatchNorm statistics would move
    after, _ = stats_and_affine(extractor_modules(student, k=K))
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_student_copies_the_teacher_and_leaves_it_alone(robust_model):
    before = {k: v.clone() for k, v in robust_model.state_dict().items()}
    student = ck.make_student(robust_model, k=K, num_classes=5)
    assert all(torch.equal(before[k], v) for k, v in robust_model.state_dict().items())
    assert all(p.requires_grad for p in robust_model.parameters())
    assert student.num_classes == 5 and torch.equal(student.blocks[-1].bias, torch.zeros(5))
    # the last k blocks start from the teacher's weights (not re-initialised), like the reference
    assert torch.equal(student.blocks[5].conv1.weight, robust_model.blocks[5].conv1.weight)
    x = torch.rand(4, 1, 8, 8)
    robust_model.eval(), student.eval()
    assert torch.allclose(student.forward_features(x, upto=7), robust_model.forward_features(x, upto=7), atol=1e-6)


@pytest.mark.parametrize("case, trainable_tensors, bn_train, bn_frozen", [
    ("train-update", 29, 25, 0), ("train-reuse", 29, 9, 16), ("freeze-update", 11, 25, 0), ("freeze-reuse", 11, 9, 16),
])
def test_batchnorm_mode_counts_match_reference(case, trainable_tensors, bn_train, bn_frozen):
    """spec §7: WRN-28-4, k = 6, 25 BN layers (9 in the sub-model, 16 in the extractor)."""
    with torch.device("meta"):
        teacher = ck.create_model("wrn28_4", num_classes=10)
    summary = ck.trainable_summary(ck.make_student(teacher, k=6, num_classes=10, bn_case=case))
    assert (summary["trainable_tensors"], summary["bn_train"], summary["bn_frozen_stats"]) == (trainable_tensors, bn_train, bn_frozen)
    assert summary["trainable"] + summary["frozen"] == 5_849_050


def test_frozen_batchnorm_matches_batchnorm_in_eval_mode():
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    frozen = FrozenBatchNorm2d.from_batchnorm(bn).train()
    x = torch.randn(3, 4, 5, 5)
    assert torch.allclose(frozen(x), bn.eval()(x), atol=1e-6)
    assert set(frozen.state_dict()) == set(bn.state_dict())


def test_bad_case_and_k_are_refused(tiny_model):
    with pytest.raises(ValueError, match="unknown BatchNorm case 'frozen'.*freeze-reuse.*vanilla"):
        ck.make_student(tiny_model, k=2, num_classes=3, bn_case="frozen")
    for k in (0, 9):
        with pytest.raises(ValueError, match="k must be an integer in 1..8"):
            ck.make_student(tiny_model, k=k, num_classes=3)


def test_k_table_and_block_table_say_what_k_means():
    from cartl_kit.transfer import block_table, k_table
    rows = k_table("wrn16_1", in_channels=1, size=28, num_classes=5, bn_case="train-update")
    assert [r["k"] for r in rows] == list(range(1, 9))
    assert [r["fdm_feature"] for r in rows[:4]] == ["64", "64x7x7", "64x7x7", "32x14x14"]
    assert all(a["trainable_params"] < b["trainable_params"] for a, b in zip(rows, rows[1:]))
    vanilla = [r["trainable_params"] for r in k_table("wrn16_1", in_channels=1, size=28, num_classes=5)]
    assert vanilla[0] == vanilla[1] == 64 * 5 + 5, "vanilla (frozen BN affine): k = 2 adds only the final BN"
    assert all(a < b for a, b in zip(vanilla[1:], vanilla[2:])) and vanilla[-1] < rows[-1]["trainable_params"]
    model = ck.create_model("wrn16_1", num_classes=5, in_channels=1)
    assert rows[-1]["trainable_params"] == sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in model.stem.parameters())  # k = L: everything but the stem
    table = block_table(model, k=3)
    assert [r["status"] for r in table] == ["frozen"] * 5 + ["fine-tuned"] * 3
    assert sum(r["params"] for r in table[-3:]) == rows[2]["trainable_params"]
    with pytest.raises(ValueError, match="k must be an integer in 1..8"):
        block_table(model, k=9)
