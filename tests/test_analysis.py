"""feature_distances: the FDM loss relation, zero without an attack, linear scaling, data forms; FDM shrinks it."""

from __future__ import annotations

import pytest
import torch

import cartl_kit as ck
from cartl_kit.analysis import distance_figure, distance_table, feature_distances, feature_norms, results_table
from cartl_kit.config import AttackConfig
from cartl_kit.data import as_float, load_dataset, make_loader
from conftest import EPS, Batches

ATTACK = dict(eps=EPS, step_size=EPS / 3, steps=3)
PGD3 = AttackConfig(**ATTACK)


@pytest.fixture(scope="module")
def source():
    """digits 0-4: (train ImageData, test ImageData)."""
    return load_dataset("digits[0-4]", split="train"), load_dataset("digits[0-4]", split="test")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ck.create_model("wrn16_1", num_classes=5, in_channels=1, mean=(0.3,), std=(0.4,)).eval()


def _batch(data, n=48):
    return as_float(data.images[:n]), data.labels[:n]


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_one_distance_per_example_and_max_examples(model, source):
    test = source[1]
    every = feature_distances(model, test, k=3, generator=_seeded(), attack=PGD3)
    assert every.shape == (len(test),) and every.dtype == torch.float32
    assert (every >= 0).all() and every.sum() > 0
    some = feature_distances(model, test, k=3, max_examples=50, batch_size=32, generator=_seeded(), attack=PGD3)
    assert some.shape == (50,)


def test_image_data_loader_and_pair_give_the_same_distances(model, source):
    test = source[1]
    kwargs = dict(k=4, attack=AttackConfig(random_start=False, **ATTACK))  # no random start: batching cannot change x'
    from_data = feature_distances(model, test, batch_size=64, **kwargs)
    from_loader = feature_distances(model, make_loader(test, batch_size=50), **kwargs)
    from_pair = feature_distances(model, _batch(test, len(test)), batch_size=100, **kwargs)
    torch.testing.assert_close(from_data, from_loader)
    torch.testing.assert_close(from_data, from_pair)


def test_no_attack_means_zero_distance(model, source):
    test = source[1]
    assert feature_distances(model, test, k=3, attack=None).abs().max() == 0
    assert feature_distances(model, test, k=3, attack=AttackConfig(steps=0, random_start=False, eps=EPS,
                                                                   step_size=EPS)).abs().max() == 0


def test_lambda_times_the_batch_sum_is_the_fdm_loss(model, source):
    x, y = _batch(source[1])
    k, lam = 3, 0.01
    distances = feature_distances(model, (x, y), k=k, generator=_seeded(1), attack=PGD3)
    x_adv = ck.pgd_linf(model, x, y, generator=_seeded(1), **ATTACK)  # the same random start, so the same x'
    split = model.num_blocks - k
    with torch.no_grad():
        loss = ck.fdm_loss(model.forward_features(x, upto=split), model.forward_features(x_adv, upto=split), lam=lam)
    assert loss.item() == pytest.approx(lam * distances.sum().item(), rel=1e-5)


def test_stem_feature_scales_with_the_stem_and_relative_distance_does_not(model, source):
    # k = L: the feature is the stem's output, linear in the normalised input. With steps=0 the seeded
    # random start fixes x', so scaling the stem by c scales every distance and every norm by c exactly.
    x, y = _batch(source[1])
    L = model.num_blocks
    kwargs = dict(k=L, attack=AttackConfig(eps=EPS, step_size=EPS, steps=0))
    before = feature_distances(model, (x, y), generator=_seeded(2), **kwargs)
    norms_before = feature_norms(model, (x, y), k=L)
    with torch.no_grad():
        model.stem.weight.mul_(3.0)
    after = feature_distances(model, (x, y), generator=_seeded(2), **kwargs)
    norms_after = feature_norms(model, (x, y), k=L)
    torch.testing.assert_close(after, 3.0 * before)
    torch.testing.assert_close(after / norms_after, before / norms_before)


def test_norm_is_the_rms_of_the_clean_feature(model, source):
    x, y = _batch(source[1], 16)
    k = 3
    feature = model.forward_features(x, upto=model.num_blocks - k).detach()  # (16, C, H, W)
    expected = feature.pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(feature_norms(model, (x, y), k=k), expected)
    assert feature_norms(model, source[1], k=k, max_examples=20).shape == (20,)


def test_attack_config_is_used_and_none_means_no_attack(model, source):
    x, y = _batch(source[1], 32)
    config = AttackConfig(eps=EPS, step_size=EPS / 3, steps=3, random_start=False)
    from_config = feature_distances(model, (x, y), k=3, attack=config)
    torch.testing.assert_close(from_config, feature_distances(model, (x, y), k=3,
                                                              attack=AttackConfig(random_start=False, **ATTACK)))
    assert feature_distances(model, (x, y), k=3, attack=None).abs().max() == 0


def test_the_model_is_left_as_it_was(model, source):
    state = {name: value.clone() for name, value in model.state_dict().items()}
    feature_distances(model, source[1], k=3, max_examples=40, attack=PGD3)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())


def test_bad_input_is_refused(model, source):
    with pytest.raises(ValueError, match="eval mode"):
        feature_distances(model.train(), source[1], k=3, attack=PGD3)
    with pytest.raises(ValueError, match="eval mode"):
        feature_norms(model, source[1], k=3)
    model.eval()
    with pytest.raises(ValueError, match="k must be an integer"):
        feature_distances(model, source[1], k=model.num_blocks + 1, attack=PGD3)
    with pytest.raises(ValueError, match="eps must be in"):
        feature_distances(model, source[1], k=3, attack=AttackConfig(eps=1.5, step_size=0.1, steps=1))
    with pytest.raises(ValueError, match="max_examples"):
        feature_distances(model, source[1], k=3, max_examples=0, attack=PGD3)


def test_fdm_training_shrinks_the_feature_distance(source):
    # Two models from the same init and batch order: adversarial training with and without a strong FDM term.
    train, test = source
    x, y = as_float(train.images), train.labels
    k, measured = 4, {}
    for name, lam in (("AT", 0.0), ("FDM", 0.5)):
        torch.manual_seed(0)
        model = ck.create_model("wrn16_1", num_classes=5, in_channels=1, mean=(0.3,), std=(0.4,))
        step = ck.fdm_step(k=k, lam=lam, attack=AttackConfig(eps=EPS, step_size=EPS / 2, steps=2))
        ck.fit(model, Batches(x, y, batch_size=64, shuffle=True), step, ck.OptimConfig(epochs=2, base_lr=0.1), device="cpu",
               progress=False)
        distances = feature_distances(model.eval(), test, k=k, generator=_seeded(), attack=PGD3)
        measured[name] = [distances, distances / feature_norms(model, test, k=k)]
    # measured once: AT 0.49 / 0.29 (absolute / relative), FDM 0.06 / 0.11 -- FDM does not merely shrink the features
    assert measured["FDM"][0].mean() < 0.5 * measured["AT"][0].mean()
    assert measured["FDM"][1].mean() < 0.7 * measured["AT"][1].mean()


def test_table_and_figure_summarise_each_model():
    distances = {"AT": torch.tensor([1.0, 2.0, 3.0]), "FDM": torch.tensor([0.5, 0.5])}
    table = distance_table(distances)
    assert list(table.index) == ["AT", "FDM"] and table.loc["AT", "n"] == 3
    assert table.loc["AT", "mean"] == pytest.approx(2.0) and table.loc["FDM", "median"] == pytest.approx(0.5)
    figure = distance_figure(distances)
    assert sorted(trace.type for trace in figure.data) == ["box", "box", "histogram", "histogram"]
    assert {trace.name for trace in figure.data} == {"AT", "FDM"}


def test_results_table_keeps_one_row_per_run_in_percent():
    rows = [dict(label="vanilla", run="tl-a", method="tl", teacher="at", k=4, lam=None, beta=None, bn_case="vanilla",
                 lwf_lam=None, clean_acc=0.992, robust_acc=0.478, n=500, shipped=False, teacher_distance=0.64),
            dict(label="CARTL", run="neft-b", method="neft", teacher="fdm", k=4, lam=0.01, beta=0.6, bn_case="vanilla",
                 lwf_lam=None, clean_acc=0.98, robust_acc=0.608, n=500, shipped=False, teacher_distance=0.16)]
    table = results_table(rows + [dict(rows[1], label="CARTL again")])
    assert list(table.index) == ["vanilla", "CARTL"]
    assert list(table.columns) == ["method", "teacher", "k", "lam", "beta", "teacher_distance", "clean %", "robust %"]
    assert table.loc["CARTL", "robust %"] == pytest.approx(60.8) and table.loc["vanilla", "clean %"] == pytest.approx(99.2)
