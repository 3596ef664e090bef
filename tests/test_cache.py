"""The transfer fast path: training on cached extractor features gives the plain path's result."""

from __future__ import annotations

import pytest
import torch

from cartl_kit import runs
from cartl_kit.cache import CachedFeatures, TunedTail, extract, feature_cache_blocker
from cartl_kit.data import load_dataset, make_loader
from cartl_kit.transfer import make_student
from test_runs import copy_of, tiny_source, tiny_transfer  # noqa: F401  (trained_root comes from there too)
from test_runs import trained_root  # noqa: F401


@pytest.mark.parametrize("overrides", [dict(), dict(method="neft", beta=0.6), dict(bn_case="train-reuse", k=5)])
def test_cached_training_equals_the_plain_path(trained_root, tmp_path, monkeypatch, overrides):  # noqa: F811
    config = tiny_transfer(**overrides)
    extracted = []
    real_extract = runs.extract
    monkeypatch.setattr(runs, "extract", lambda *a, **kw: extracted.append(1) or real_extract(*a, **kw))
    fast = runs.run(config, root=copy_of(trained_root, tmp_path / "fast"), device="cpu", progress=False)
    assert extracted == [1], "this configuration should take the fast path"
    plain = runs.run(config, root=copy_of(trained_root, tmp_path / "plain"), device="cpu", progress=False,
                     cache_features=False)
    assert extracted == [1], "cache_features=False turns the fast path off"
    for (name, a), b in zip(plain.model.state_dict().items(), fast.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    assert [r["loss"] for r in fast.history] == pytest.approx([r["loss"] for r in plain.history], rel=1e-5)
    assert [r["train_acc"] for r in fast.history] == [r["train_acc"] for r in plain.history]


@pytest.mark.parametrize("overrides, reason", [
    (dict(bn_case="train-update"), "BatchNorm statistics are updated"),
    (dict(bn_case="freeze-update"), "BatchNorm statistics are updated"),
    (dict(method="lwf", lwf_lam=0.01), "raw images"),
])
def test_the_fast_path_falls_back_where_it_would_not_be_exact(trained_root, overrides, reason):  # noqa: F811
    config = tiny_transfer(**overrides)
    teacher = runs.run(config.teacher, root=trained_root, device="cpu", progress=False).model
    data = load_dataset(config.dataset, split="train")
    student = make_student(teacher, k=config.k, num_classes=data.num_classes, bn_case=config.bn_case)
    loader = make_loader(data, batch_size=64)
    assert reason in feature_cache_blocker(student, k=config.k, loader=loader, needs_images=config.method == "lwf")


def test_augmented_or_foreign_loaders_are_not_cached(trained_root):  # noqa: F811
    teacher = runs.run(tiny_source(), root=trained_root, device="cpu", progress=False).model
    student = make_student(teacher, k=3, num_classes=5)
    cifar_like = load_dataset("digits[5-9]", split="train")
    from cartl_kit.data import Augmentation
    augmented = make_loader(cifar_like, batch_size=64, augment=Augmentation(flip=True))
    assert "augmented" in feature_cache_blocker(student, k=3, loader=augmented)
    assert "BatchLoader" in feature_cache_blocker(student, k=3, loader=[(torch.zeros(1, 1, 8, 8), torch.zeros(1))])
    assert feature_cache_blocker(student, k=3, loader=make_loader(cifar_like, batch_size=64)) is None


def test_cached_batches_replay_the_loader_and_the_split_model_completes_it(trained_root):  # noqa: F811
    teacher = runs.run(tiny_source(), root=trained_root, device="cpu", progress=False).model
    student = make_student(teacher, k=3, num_classes=5).eval()
    data = load_dataset("digits[5-9]", split="train")
    plain, again = make_loader(data, batch_size=50, seed=3), make_loader(data, batch_size=50, seed=3)
    cached = CachedFeatures(again, extract(student, again, k=3))
    head = TunedTail(student, k=3)
    assert len(cached) == len(plain)
    for epoch in range(2):  # each pass reshuffles, identically
        for (x, y), (f, y2) in zip(plain, cached):
            assert torch.equal(y, y2)
            with torch.no_grad():
                assert torch.allclose(student(x), head(f), atol=1e-5)
    assert torch.equal(cached.state_dict()["order"], plain.state_dict()["order"])


@pytest.mark.parametrize("k", [3, 1])  # k = 1: the cached features are pooled vectors, not images
def test_a_run_trained_channels_last_is_saved_in_the_plain_format(trained_root, tmp_path, k):  # noqa: F811
    config = tiny_transfer(k=k)
    nhwc = runs.run(config, root=copy_of(trained_root, tmp_path / "nhwc"), device="cpu", progress=False,
                    channels_last=True)
    plain = runs.run(config, root=copy_of(trained_root, tmp_path / "plain"), device="cpu", progress=False)
    state = runs.load_tensors(nhwc.path / runs.MODEL_FILE)
    for (name, a), b in zip(plain.model.state_dict().items(), nhwc.model.state_dict().values()):
        assert b.is_contiguous(), name
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-2), name  # two epochs: rounding differences grow a little
    assert all(t.is_contiguous() for t in state.values())
