"""NEFT: the spectral bound, which layers are reparametrised, training, export and checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cartl_kit as ck
from cartl_kit.neft import largest_singular_value, neft_layers


def student_of(model: ck.WideResNet, k: int) -> ck.WideResNet:
    return ck.make_student(model, k=k, num_classes=5, bn_case="vanilla", half_residual=True)


@pytest.mark.parametrize("beta", [1.0, 0.6, 0.4])
def test_spectral_norm_is_at_most_beta_after_power_iteration(tiny_model, beta):
    student = student_of(tiny_model, k=4)
    names = ck.apply_neft(student, k=4, beta=beta)
    assert len(names) == 6  # blocks 5..8: two units with 2 convs each (one with a shortcut), no conv in block 7, fc
    student(torch.rand(8, 1, 8, 8))
    layers = [student.get_submodule(name) for name in names]
    for _ in range(500):  # each training-mode evaluation of a weight advances its power iteration one step
        for layer in layers:
            layer.weight
    rows = ck.neft_report(student)
    assert len(rows) == len(names)
    for row in rows:
        module = student.get_submodule(row["layer"])
        assert largest_singular_value(module.weight) <= beta + 1e-3, row
        assert row["effective_sigma"] == pytest.approx(beta, abs=1e-3)


def test_the_bound_is_not_reached_after_only_one_power_iteration(tiny_model):
    """Documents the reference's caveat: one iteration from a random start underestimates sigma."""
    student = student_of(tiny_model, k=4)
    ck.apply_neft(student, k=4, beta=1.0)
    student(torch.rand(4, 1, 8, 8))
    assert max(row["effective_sigma"] for row in ck.neft_report(student)) > 1.0 + 1e-3


@pytest.mark.parametrize("k, expected", [(1, 1), (2, 1), (3, 3), (4, 5), (6, 9), (8, 14)])
def test_number_of_reparametrised_layers_matches_reference(k, expected):
    with torch.device("meta"):
        model = ck.create_model("wrn34_10", num_classes=10)
    assert len(neft_layers(model, k=k)) == expected


def test_neft_leaves_layers_outside_the_last_k_blocks_alone(tiny_model):
    student = student_of(tiny_model, k=2)
    names = ck.apply_neft(student, k=2, beta=0.5)
    assert names == ["blocks.7"]
    assert type(student.blocks[5].conv1.weight) is nn.Parameter  # not parametrised


def test_the_optimiser_trains_the_original_weights(tiny_model):
    student = student_of(tiny_model, k=3)
    ck.apply_neft(student, k=3, beta=0.6)
    original = student.blocks[5].conv1.parametrizations.weight.original
    assert original.requires_grad
    before = original.detach().clone()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 5, (16,))
    ck.fit(student, [(x, y)], ck.natural_step, ck.OptimConfig(epochs=2, warmup_epochs=0, base_lr=0.05), device="cpu",
           progress=False)
    assert not torch.equal(before, original.detach())


def test_export_loads_into_a_plain_model_with_identical_outputs(tiny_model):
    student = student_of(tiny_model, k=3)
    ck.apply_neft(student, k=3, beta=0.4)
    x = torch.rand(8, 1, 8, 8)
    for _ in range(5):
        student(x)
    student.eval()
    expected = student(x)
    assert ck.remove_neft(student) == 3
    plain = ck.create_model("wrn16_1", num_classes=5, in_channels=1, half_residual_k=3)
    plain.load_state_dict(student.state_dict(), strict=True)
    assert torch.allclose(plain.eval()(x), expected, atol=1e-6)
    assert not any("parametrizations" in key for key in student.state_dict())


def test_a_checkpoint_with_neft_loads_into_a_neft_model(tiny_model):
    student = student_of(tiny_model, k=3)
    ck.apply_neft(student, k=3, beta=0.4)
    student(torch.rand(4, 1, 8, 8))
    student.eval()
    other = student_of(tiny_model, k=3)
    ck.apply_neft(other, k=3, beta=0.4)
    other.load_state_dict(student.state_dict())
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(other.eval()(x), student(x))


def test_conv_operator_norm_matches_the_dense_matrix():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    shape = (3, 6, 6)
    dense = torch.autograd.functional.jacobian(lambda v: conv(v.view(1, *shape)).flatten(), torch.zeros(108))
    exact = torch.linalg.matrix_norm(dense.double(), ord=2).item()
    assert ck.conv_operator_norm(conv, shape, iterations=200) == pytest.approx(exact, rel=1e-3)
    assert largest_singular_value(conv.weight) != pytest.approx(exact, rel=1e-2)  # the reshaped kernel differs


@pytest.mark.parametrize("beta", [0, -0.4, float("nan")])
def test_bad_beta_is_refused(tiny_model, beta):
    with pytest.raises(ValueError, match="beta .* must be > 0"):
        ck.apply_neft(student_of(tiny_model, k=2), k=2, beta=beta)


def test_bad_k_and_double_application_are_refused(tiny_model):
    student = student_of(tiny_model, k=2)
    with pytest.raises(ValueError, match="k must be an integer in 1..8"):
        ck.apply_neft(student, k=9, beta=1.0)
    ck.apply_neft(student, k=2, beta=1.0)
    with pytest.raises(ValueError, match="already has NEFT applied"):
        ck.apply_neft(student, k=2, beta=1.0)
