"""The extractor's BatchNorm layers are found through the model's structure, and their drift is measured:
reused statistics stay exactly the teacher's, updated ones move."""

from __future__ import annotations

import pytest
import torch

from cartl_kit.bn_drift import bn_drift, extractor_batchnorms
from cartl_kit.models import create_model
from cartl_kit.transfer import FrozenBatchNorm2d, make_student


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = create_model("wrn16_1", num_classes=5)
    model.train()
    model(torch.rand(8, 3, 32, 32))  # running statistics away from their initial 0 and 1
    return model.eval()


def _trained_on_a_batch(model):
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32) * 0.5 + 0.5)  # another "domain": brighter images
    return model.eval()


def test_extractor_batchnorms_are_blocks_1_to_l_minus_k_labelled_from_1(teacher):
    assert list(extractor_batchnorms(teacher, k=7)) == ["block 1 bn1", "block 1 bn2"]
    assert len(extractor_batchnorms(teacher, k=4)) == 2 * 4
    assert extractor_batchnorms(teacher, k=teacher.num_blocks) == {}  # the extractor is the stem alone
    reused = make_student(teacher, k=4, num_classes=3, bn_case="freeze-reuse")
    found = extractor_batchnorms(reused, k=4)
    assert list(found) == list(extractor_batchnorms(teacher, k=4))
    assert all(isinstance(layer, FrozenBatchNorm2d) for layer in found.values())


def test_reused_statistics_do_not_drift_and_updated_ones_do(teacher):
    reused = _trained_on_a_batch(make_student(teacher, k=4, num_classes=3, bn_case="freeze-reuse"))
    updated = _trained_on_a_batch(make_student(teacher, k=4, num_classes=3, bn_case="freeze-update"))
    still = bn_drift(teacher, reused, k=4)
    assert list(still.columns) == ["mean shift (σ)", "var ratio"] and len(still) == 8
    assert (still["mean shift (σ)"] == 0).all() and (still["var ratio"] == 1).all()
    moved = bn_drift(teacher, updated, k=4)
    assert (moved["mean shift (σ)"] > 0).all()
    assert bn_drift(teacher, updated, k=teacher.num_blocks).empty
