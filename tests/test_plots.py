"""cartl_kit.plots: the adversarial-examples figure shows what it is given, on tiny inputs."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch

from cartl_kit.plots import adversarial_examples_figure

EPS = 0.1


def _examples(channels: int):
    """Three 4x4 images, their sign-perturbations within EPS, labels 0 1 2; the attack flips the first and last."""
    x = torch.rand(3, channels, 4, 4, generator=torch.Generator().manual_seed(0))
    delta = EPS * torch.sign(torch.randn(3, channels, 4, 4, generator=torch.Generator().manual_seed(1)))
    return x, (x + delta).clamp(0, 1), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0])


def test_one_channel_examples_give_a_three_by_n_grid_of_heatmaps():
    x, x_adv, y, clean_pred, adv_pred = _examples(1)
    fig = adversarial_examples_figure(x, x_adv, y, clean_pred, adv_pred, eps=EPS, classes=["zero", "one", "two"],
                                      attack="PGD-3", model="toy")
    assert len(fig.data) == 9 and all(isinstance(t, go.Heatmap) for t in fig.data)
    assert {(t.xaxis, t.yaxis) for t in fig.data} == {(f"x{i}", f"y{i}") for i in ["", *range(2, 10)]}
    clean, perturbation, adversarial = fig.data[0], fig.data[1], fig.data[2]  # column 1, rows 1-3
    assert (clean.xaxis, perturbation.xaxis, adversarial.xaxis) == ("x", "x4", "x7")
    assert torch.allclose(torch.tensor(perturbation.z), (x_adv - x)[0, 0].double())
    assert (perturbation.zmin, perturbation.zmax) == (-EPS, EPS) and (clean.zmin, clean.zmax) == (0, 1)
    assert torch.allclose(torch.tensor(adversarial.z), x_adv[0, 0].double())
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["y=zero pred zero", "y=one pred one", "y=two pred one ✗",
                      "x′ pred one ✗", "x′ pred one", "x′ pred zero ✗"]  # the empty titles of row 2 are dropped
    assert fig.layout.title.text == "PGD-3 at ε = 0.1 against the toy model: 1/3 still correct"


def test_colour_examples_are_drawn_as_rgb_images_and_the_largest_change_per_pixel():
    x, x_adv, y, clean_pred, adv_pred = _examples(3)
    fig = adversarial_examples_figure(x, x_adv, y, clean_pred, adv_pred, eps=EPS)
    assert [type(t) for t in fig.data[:3]] == [go.Image, go.Heatmap, go.Image]
    assert torch.tensor(fig.data[0].z).shape == (4, 4, 3)
    change = torch.tensor(fig.data[1].z)
    assert change.shape == (4, 4) and change.abs().max() <= EPS + 1e-6
    assert torch.allclose(change.abs(), (x_adv - x)[0].abs().amax(0).double())
    assert fig.layout.annotations[2].text == "y=2 pred 1 ✗", "without class names the class numbers are shown"


def test_mismatched_shapes_are_refused():
    x, x_adv, y, clean_pred, adv_pred = _examples(1)
    with pytest.raises(ValueError, match="N, C, H, W"):
        adversarial_examples_figure(x, x_adv[:2], y, clean_pred, adv_pred, eps=EPS)
    with pytest.raises(ValueError, match="one entry per image"):
        adversarial_examples_figure(x, x_adv, y[:2], clean_pred, adv_pred, eps=EPS)


def test_percent_table_prints_k_as_an_integer_and_a_dash_for_what_a_row_lacks():
    import pandas as pd
    from cartl_kit.plots import percent_table
    table = pd.DataFrame([{"label": "vanilla", "k": 4.0, "beta": float("nan"), "clean_acc": 0.992, "robust_acc": 0.404},
                          {"label": "NEFT", "k": 4.0, "beta": 0.6, "clean_acc": 0.986, "robust_acc": 0.434}])
    shown = percent_table(table, headline="ensemble")
    assert list(shown["k"].astype(str)) == ["4", "4"] and list(shown["beta"]) == ["–", 0.6]
    assert list(shown["robust % (ensemble)"]) == [40.4, 43.4]
    assert "NaN" not in shown.to_html() and "4.0" not in shown.to_string()
    assert percent_table(table, missing=None)["beta"].isna().sum() == 1
