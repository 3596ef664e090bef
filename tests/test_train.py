"""The schedule, the training loop and what adversarial training buys."""

from __future__ import annotations

import pytest
import torch

import cartl_kit as ck
from conftest import EPS, Batches


def test_reference_schedule_for_100_epochs():
    lr = lambda epoch, batch=0: ck.lr_at(epoch, batch, batches_per_epoch=391, epochs=100)
    assert lr(1, 0) == 0.0  # the reference's very first batch uses lr 0
    assert lr(1, 195) == pytest.approx(0.1 * 195 / 391)
    assert [lr(e) for e in (2, 40)] == [0.1, 0.1]
    assert [lr(e) for e in (41, 70)] == pytest.approx([0.02, 0.02])
    assert [lr(e) for e in (71, 90)] == pytest.approx([0.004, 0.004])
    assert [lr(e) for e in (91, 100)] == pytest.approx([0.0008, 0.0008])


def test_schedule_scales_to_any_epoch_count():
    rates = [ck.lr_at(e, 0, batches_per_epoch=10, epochs=10) for e in range(2, 11)]
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.02, 0.02, 0.02, 0.004, 0.004, 0.0008])
    assert ck.lr_at(3, 0, batches_per_epoch=10, epochs=5, warmup_epochs=0, milestones=(), base_lr=0.01) == 0.01


def test_fit_learns_and_reports_each_epoch(digits):
    x, y = digits[0][:256], digits[1][:256]
    torch.manual_seed(0)
    model = ck.create_model("wrn16_1", num_classes=10, in_channels=1)
    records = []
    history = ck.fit(model, Batches(x, y, shuffle=True), ck.natural_step, ck.OptimConfig(epochs=4), device="cpu",
                     callback=records.append, progress=False)
    assert records == history and [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["train_acc"] > 0.5
    assert {"lr", "seconds", "loss", "train_acc"} <= set(history[0])


@pytest.mark.parametrize("step", ["natural", "adversarial"])
def test_channels_last_training_matches_the_plain_path(digits, step):
    """The fast path: the same SGD step in NHWC gives the same model up to rounding. (One step: training
    amplifies rounding differences from step to step, and PGD's sign() turns them into different steps.)"""
    x, y = digits[0][:64], digits[1][:64]
    make_step = {"natural": lambda: ck.natural_step,
                 "adversarial": lambda: ck.adversarial_step(attack=ck.AttackConfig(eps=EPS, step_size=EPS / 3,
                                                                                   steps=2))}[step]
    runs = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = ck.create_model("wrn16_1", num_classes=10, in_channels=1)
        torch.manual_seed(1)  # the same random starts
        history = ck.fit(model, Batches(x, y, batch_size=64), make_step(),
                         ck.OptimConfig(epochs=1, warmup_epochs=0, milestones=()), device="cpu", progress=False,
                         channels_last=channels_last)
        runs.append((model, history))
    (plain, plain_history), (nhwc, nhwc_history) = runs
    assert nhwc.stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc_history[-1]["loss"] == pytest.approx(plain_history[-1]["loss"], rel=1e-5)
    atol = 1e-5 if step == "natural" else 1e-4
    for (name, a), b in zip(plain.state_dict().items(), nhwc.state_dict().values()):
        assert torch.allclose(a, b, atol=atol, rtol=1e-3), name


def test_fit_only_updates_trainable_parameters(robust_model, digits):
    student = ck.make_student(robust_model, k=2, num_classes=5, bn_case="train-update")
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    ck.fit(student, [(digits[0][:32], digits[1][:32] % 5)], ck.natural_step, ck.OptimConfig(epochs=2, warmup_epochs=0),
           device="cpu", progress=False)
    assert all(torch.equal(p, frozen[n]) for n, p in student.named_parameters() if n in frozen)
    assert all(p.grad is None for p in student.parameters())


def test_adversarial_training_buys_robustness(natural_model, robust_model, digits):
    test = Batches(digits[2], digits[3], batch_size=180)
    attack = dict(attack=ck.AttackConfig(eps=EPS, step_size=EPS / 4, steps=10), device="cpu", progress=False)
    natural = ck.robust_accuracy(natural_model, test, **attack)
    robust = ck.robust_accuracy(robust_model, test, **attack)
    assert robust.robust_acc > natural.robust_acc + 0.15
    assert robust.clean_acc > 0.9


def test_lwf_step_keeps_the_teacher_frozen_and_distils(robust_model, digits):
    student = ck.make_student(robust_model, k=robust_model.num_blocks, num_classes=10, bn_case="train-update")
    step = ck.lwf_step(robust_model, lam=0.1)
    assert all(p.requires_grad for p in robust_model.parameters())  # the caller's teacher is untouched
    loss, metrics = step(student.train(), digits[0][:32], digits[1][:32])
    assert metrics["lwf"] >= 0 and loss.item() == pytest.approx(metrics["ce"] + metrics["lwf"], rel=1e-5)


def test_bad_epochs_and_nothing_to_train(tiny_model):
    batches = [(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))]
    for epochs in (0, -3, 2.5):
        with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
            ck.fit(tiny_model, batches, ck.natural_step, ck.OptimConfig(epochs=epochs), progress=False)
    tiny_model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ck.fit(tiny_model, batches, ck.natural_step, ck.OptimConfig(epochs=1), progress=False)


def test_importing_the_kit_changes_no_global_state():
    import subprocess, sys
    code = ("import torch; torch.manual_seed(123); a = torch.rand(3); torch.manual_seed(123); "
            "import cartl_kit; b = torch.rand(3); assert torch.equal(a, b); "
            "assert not torch.backends.cudnn.deterministic")
    subprocess.run([sys.executable, "-c", code], check=True)
