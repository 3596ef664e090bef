"""Adversarial fine-tuning (method 'aft'): the last k blocks trained on PGD examples of the target, the upper bound
that CARTL's clean fine-tuning is measured against."""

from __future__ import annotations

import pytest
import torch

from cartl_kit import cache, runs, train
from conftest import TINY_PRESET

PRESET = TINY_PRESET


def test_aft_needs_no_knob_and_refuses_neft_and_lwf_ones():
    teacher = PRESET.source("at")
    config = PRESET.transfer(teacher, "aft", k=3)
    assert config.slug.startswith("aft-k3-vanilla-") and config.beta is None and not config.half_residual
    with pytest.raises(ValueError, match="beta belongs to method 'neft'"):
        PRESET.transfer(teacher, "aft", k=3, beta=0.6)
    from cartl_kit.__main__ import _transfer_config, parser
    _, config = _transfer_config(parser().parse_args(["transfer", "--method", "aft", "-k", "3"]))
    assert (config.method, config.k, config.teacher.method) == ("aft", 3, "at")


def test_an_aft_run_trains_on_the_teachers_attack_without_cached_features(tmp_path, monkeypatch):
    teacher_config = PRESET.source("at")
    teacher = runs.run(teacher_config, root=tmp_path, device="cpu", progress=False, shipped=False).model
    crafted = []
    real_pgd = train.pgd_linf

    def spy(model, x, y, **kw):
        crafted.append((x.shape[1:], kw["eps"], kw["steps"]))
        return real_pgd(model, x, y, **kw)

    monkeypatch.setattr(train, "pgd_linf", spy)
    monkeypatch.setattr(runs, "extract", lambda *a, **kw: pytest.fail("AFT must attack images, not cached features"))
    finished = runs.run(PRESET.transfer(teacher_config, "aft", k=3), root=tmp_path, device="cpu", progress=False,
                        shipped=False)
    attack = teacher_config.attack
    assert crafted and {c[1:] for c in crafted} == {(attack.eps, attack.steps)}  # the teacher's ε and steps
    assert all(shape == (1, 8, 8) for shape, *_ in crafted)  # whole images: the attack runs through every block
    assert "train_adv_acc" in finished.history[-1] and finished.train_seconds > 0
    assert finished.threads == torch.get_num_threads()
    before = dict(teacher.named_parameters())
    changed = {key for key, value in finished.model.named_parameters()
               if not key.startswith("blocks.7.") and not torch.equal(value, before[key])}  # blocks.7: the new head
    assert changed and all(key.startswith(("blocks.5.", "blocks.6.")) for key in changed), changed  # last k = 3


def test_the_feature_cache_says_why_aft_cannot_use_it():
    assert "AFT attacks them" in cache.feature_cache_blocker(None, k=3, loader=None, needs_images=True)


def test_the_upper_bound_sentence_names_the_best_other_arm_its_noise_and_the_cost():
    from cartl_kit.findings import upper_bound
    aft = {"label": "AFT", "clean_acc": 0.90, "robust_acc": 0.80, "n": 100}
    others = [{"label": "NEFT β = 0.4", "clean_acc": 0.95, "robust_acc": 0.60, "n": 100},
              {"label": "θ(α = 0)", "clean_acc": 0.97, "robust_acc": 0.50, "n": 100}]
    tl = {"label": "vanilla TL", "clean_acc": 0.98, "robust_acc": 0.40, "n": 100}
    text = upper_bound(aft, others, seconds=200.0, baseline=tl, baseline_seconds=20.0, headline="ensemble")
    assert text.startswith("AFT: robust (ensemble) 80.0 % (clean 90.0 %)")
    assert "the most robust of the other 2, NEFT β = 0.4, 60.0 %" in text and "+20.0 points, above it, beyond" in text
    assert "200 s, vanilla TL's 20 s: 10.0× the cost" in text
    mixed = upper_bound(aft, others, seconds=200.0, baseline=tl, baseline_seconds=20.0, threads=(1, 2))
    assert "200 s with 1 torch thread(s), vanilla TL's 20 s with 2: not comparable, no ratio" in mixed and "×" not in mixed
    close = upper_bound({**aft, "robust_acc": 0.58}, others)
    assert "-2.0 points, not above it, within noise" in close and "cost" not in close
