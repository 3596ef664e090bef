"""Wide ResNets: parameter counts, block numbering, FDM feature shapes against CARTL_REFERENCE.md §1.

Large presets are built on the meta device: shapes and counts without memory or init time.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cartl_kit as ck
from cartl_kit.models import WideBasicUnit
from cartl_kit.transfer import submodel_modules


def meta_model(arch: str, num_classes: int = 10, **kwargs) -> ck.WideResNet:
    with torch.device("meta"):
        return ck.create_model(arch, num_classes=num_classes, **kwargs)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# spec §1.1, verified on the reference code
@pytest.mark.parametrize("arch, classes, expected", [
    ("wrn34_10", 10, 46_160_474), ("wrn34_10", 43, 46_181_627), ("wrn34_10", 100, 46_218_164),
    ("wrn28_10", 10, 36_479_194), ("wrn28_10", 100, 36_536_884),
    ("wrn28_4", 10, 5_849_050), ("wrn28_4", 43, 5_857_531), ("wrn28_4", 100, 5_872_180),
    ("wrn34_4", 10, 7_399_130), ("wrn34_4", 43, 7_407_611),
])
def test_parameter_counts_match_reference(arch, classes, expected):
    assert count(meta_model(arch, classes)) == expected


@pytest.mark.parametrize("arch, num_blocks", [("wrn34_10", 17), ("wrn34_4", 17), ("wrn28_10", 14), ("wrn28_4", 14),
                                              ("wrn16_4", 8), ("wrn16_1", 8)])
def test_number_of_blocks(arch, num_blocks):
    model = meta_model(arch)
    assert model.num_blocks == num_blocks == len(ck.blocks(model))
    # residual units first, then final BN(+act+pool), then fc
    assert all(isinstance(b, WideBasicUnit) for b in ck.blocks(model)[:-2])
    assert isinstance(ck.blocks(model)[-1], nn.Linear)


# spec §1.5 Table A: k -> (FDM feature shape for 34-10, d for 34-4, #conv, #BN, trainable params 34-10)
TABLE_A = {
    1: ((640,), 256, 0, 0, 6_410),
    2: ((640, 8, 8), 16_384, 0, 1, 7_690),
    3: ((640, 8, 8), 16_384, 2, 3, 7_383_050),
    4: ((640, 8, 8), 16_384, 4, 5, 14_758_410),
    5: ((640, 8, 8), 16_384, 6, 7, 22_133_770),
    6: ((640, 8, 8), 16_384, 8, 9, 29_509_130),
    7: ((320, 16, 16), 32_768, 11, 11, 35_245_450),
    8: ((320, 16, 16), 32_768, 13, 13, 37_089_930),
    9: ((320, 16, 16), 32_768, 15, 15, 38_934_410),
    10: ((320, 16, 16), 32_768, 17, 17, 40_778_890),
}
# spec §1.5 Table B: k -> (FDM feature shape for 28-4, d for 28-10, #conv, #BN, trainable params 28-4)
TABLE_B = {
    1: ((256,), 640, 0, 0, 2_570),
    2: ((256, 8, 8), 40_960, 0, 1, 3_082),
    3: ((256, 8, 8), 40_960, 2, 3, 1_183_754),
    4: ((256, 8, 8), 40_960, 4, 5, 2_364_426),
    5: ((256, 8, 8), 40_960, 6, 7, 3_545_098),
    6: ((128, 16, 16), 81_920, 9, 9, 4_463_370),
    7: ((128, 16, 16), 81_920, 11, 11, 4_758_794),
    8: ((128, 16, 16), 81_920, 13, 13, 5_054_218),
    9: ((128, 16, 16), 81_920, 15, 15, 5_349_642),
    10: ((64, 32, 32), 163_840, 18, 17, 5_579_402),
}


@pytest.mark.parametrize("table, arch, other_arch", [(TABLE_A, "wrn34_10", "wrn34_4"), (TABLE_B, "wrn28_4", "wrn28_10")],
                         ids=["table_A_wrn34", "table_B_wrn28"])
def test_fine_tuning_tables(table, arch, other_arch):
    teacher, other = meta_model(arch), meta_model(other_arch)
    num_blocks = teacher.num_blocks
    x = torch.empty(1, 3, 32, 32, device="meta")
    for k, (shape, other_d, n_conv, n_bn, trainable) in table.items():
        feature = teacher.forward_features(x, upto=num_blocks - k)
        assert tuple(feature.shape[1:]) == shape, f"k={k}"
        assert other.forward_features(x, upto=num_blocks - k)[0].numel() == other_d, f"k={k}"
        sub = submodel_modules(teacher, k=k)
        assert sum(isinstance(m, nn.Conv2d) for b in sub for m in b.modules()) == n_conv, f"k={k}"
        assert sum(isinstance(m, nn.BatchNorm2d) for b in sub for m in b.modules()) == n_bn, f"k={k}"
        student = ck.make_student(teacher, k=k, num_classes=10, bn_case="train-update")
        assert ck.trainable_summary(student)["trainable"] == trainable, f"k={k}"


def test_feature_at_k_equal_L_is_the_stem_output():
    model = meta_model("wrn34_10")
    assert tuple(model.forward_features(torch.empty(2, 3, 32, 32, device="meta"), upto=0).shape) == (2, 16, 32, 32)


@pytest.mark.parametrize("arch, k, halved", [("wrn34_10", 8, list(range(10, 16))), ("wrn28_4", 6, list(range(9, 13)))])
def test_half_residual_units_match_reference_pwrn(arch, k, halved):
    model = meta_model(arch, half_residual_k=k)
    assert [i for i, b in enumerate(ck.blocks(model), 1) if getattr(b, "half_residual", False)] == halved


def test_half_residual_changes_the_function_but_not_the_state_dict(tiny_model):
    x = torch.rand(4, 1, 8, 8)
    tiny_model.eval()
    plain = tiny_model(x)
    halved_blocks = ck.set_half_residual(tiny_model, k=3)
    assert halved_blocks == [6]
    assert not torch.allclose(tiny_model(x), plain)
    fresh = ck.create_model("wrn16_1", num_classes=10, in_channels=1, half_residual_k=3).eval()
    fresh.load_state_dict(tiny_model.state_dict())
    assert torch.equal(fresh(x), tiny_model(x))


def test_forward_is_forward_features_then_forward_from(tiny_model):
    tiny_model.eval()
    x = torch.rand(3, 1, 8, 8)
    for upto in range(tiny_model.num_blocks + 1):
        assert torch.allclose(tiny_model.forward_from(tiny_model.forward_features(x, upto=upto), start=upto), tiny_model(x))


@pytest.mark.parametrize("channels, size", [(1, 8), (1, 28), (3, 32), (3, 45)])
def test_any_input_size_and_channel_count(channels, size):
    model = ck.create_model("wrn16_1", num_classes=7, in_channels=channels)
    assert model(torch.rand(2, channels, size, size)).shape == (2, 7)


def test_normalisation_lives_inside_the_model():
    torch.manual_seed(0)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalised = ck.create_model("wrn16_1", num_classes=3, mean=mean, std=std).eval()
    plain = ck.create_model("wrn16_1", num_classes=3).eval()
    plain.load_state_dict({k: v for k, v in normalised.state_dict().items() if not k.startswith("normalize.")}, strict=False)
    x = torch.rand(2, 3, 16, 16)
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normalised(x), plain(manual), atol=1e-5)


def test_initialisation_follows_reference():
    torch.manual_seed(0)
    model = ck.create_model("wrn16_4", num_classes=10)
    conv = model.blocks[2].conv2  # 64 -> 64, 3x3
    expected_std = math.sqrt(2.0 / (conv.out_channels * 9))  # Kaiming normal, fan_out
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05
    bn = model.blocks[0].bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    fc = model.blocks[-1]
    assert torch.equal(fc.bias, torch.zeros_like(fc.bias)) and fc.weight.abs().sum() > 0
    bound = 1 / math.sqrt(fc.in_features)  # PyTorch's default Linear init is U(-bound, bound)
    assert fc.weight.abs().max() <= bound and (fc.weight < 0).any()


def test_leaky_relu_slope_is_point_one():
    unit = ck.create_model("wrn16_1", num_classes=2, in_channels=1).blocks[-2]
    x = -torch.ones(1, 64, 2, 2)
    unit.eval()  # BN(1, 0) with running stats (0, 1): identity up to eps
    assert torch.allclose(unit(x), torch.full((1, 64), -0.1), atol=1e-4)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'.*wrn34_10"):
        ck.create_model("resnet9", num_classes=10)
    model = ck.create_model("wrn16_1", num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="expects images of shape \\(B, 1, H, W\\).*3"):
        model(torch.rand(2, 3, 8, 8))
    for k in (0, 9, -1, 2.5):
        with pytest.raises(ValueError, match="k must be an integer in 1..8"):
            ck.set_half_residual(model, k=k)
    with pytest.raises(ValueError, match="num_classes"):
        ck.create_model("wrn16_1", num_classes=0)
