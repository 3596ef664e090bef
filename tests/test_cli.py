"""The command line: `info` shows what k means; bad input exits 2 with one line and writes nothing."""

from __future__ import annotations

import json
import re

import pytest

from cartl_kit.__main__ import main
from cartl_kit.store import SHIPPED_RUNS


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    def call(*args):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse: --help (0) and usage errors (2)
            code = exit.code
        out = capsys.readouterr()
        return Result(code, out.out, out.err)
    return call


def test_info_reports_the_reference_table(cli):
    result = cli("info", "--arch", "wrn34_10", "-k", "8", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["L"] == 17
    assert info["rows"] == [{"k": 8, "fine_tuned_blocks": "10-17", "fdm_feature": "320x16x16", "d": 81920,
                             "trainable_params": 37_089_930}]  # the reference counts BN affine (train-update)
    vanilla = json.loads(cli("info", "--arch", "wrn34_10", "-k", "8", "--json", "--bn-case", "vanilla").stdout)
    assert 0 < info["rows"][0]["trainable_params"] - vanilla["rows"][0]["trainable_params"] < 37_089_930 / 1000, \
        "vanilla freezes only the sub-model's BatchNorm affine parameters"


def test_every_command_has_help(cli):
    for command in ("demo", "info", "datasets", "source", "transfer", "evaluate", "sweep", "runs", "pretrain"):
        result = cli(command, "--help")
        assert result.returncode == 0 and "usage" in result.stdout


@pytest.mark.parametrize("args, message", [
    (("transfer", "-k", "9"), "k must be an integer in 1..8 for wrn16_1"),
    (("transfer", "-k", "0"), "k must be an integer in 1..8 for wrn16_1"),
    (("transfer", "--method", "neft", "--beta", "0"), "beta .* must be > 0"),
    (("source", "--method", "fdm", "--lam", "-0.5"), "must be a finite number >= 0"),
    (("transfer", "--bn-case", "frozen"), "invalid choice: 'frozen'.*freeze-reuse"),
    (("source", "--preset", "huge"), "invalid choice: 'huge'.*quick"),
    (("transfer", "--method", "ft"), "invalid choice: 'ft'.*neft"),
    (("transfer", "--teacher", "fdm", "--lam", "0.5", "--no-teacher-training"), "teacher run .* does not exist"),
    (("transfer", "--lam", "0.5"), "describe an FDM teacher; add --teacher fdm"),
    (("evaluate", "no/such/run"), "not a run folder"),
    (("sweep", "-k", "2", "9"), "k must be an integer in 1..8 for wrn16_1"),
    (("sweep", "--method", "neft", "--beta", "0.5", "-1"), "beta .* must be > 0"),
    (("sweep", "--teacher", "fdm", "--lam", "-1"), "must be a finite number >= 0"),
    (("demo", "--preset", "huge"), "invalid choice: 'huge'.*quick"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = cli(*args, "--runs-dir", str(tmp_path / "runs")) if args[0] != "evaluate" else cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "runs").exists()


def test_runs_on_an_empty_folder_lists_the_shipped_teachers(cli, tmp_path):
    result = cli("runs", "--runs-dir", str(tmp_path), "--no-shipped")
    assert result.returncode == 0 and "no finished runs" in result.stdout
    result = cli("runs", "--runs-dir", str(tmp_path), "--json")
    rows = json.loads(result.stdout)
    assert rows and all(row["shipped"] and row["kind"] == "source" for row in rows)


def test_an_fdm_teacher_takes_the_students_k_unless_told():
    from cartl_kit.__main__ import _transfer_config, parser
    _, config = _transfer_config(parser().parse_args(["transfer", "--method", "neft", "--teacher", "fdm", "-k", "3"]))
    assert (config.k, config.teacher.k, config.beta) == (3, 3, 0.6)
    _, config = _transfer_config(parser().parse_args(["transfer", "--teacher", "fdm", "-k", "3", "--teacher-k", "5"]))
    assert (config.k, config.teacher.k) == (3, 5)
    _, config = _transfer_config(parser().parse_args(["transfer", "--teacher", "fdm"]))
    assert config.k == config.teacher.k == 4  # the quick preset's k


def test_evaluate_any_iterate_is_its_own_evaluation_and_never_higher(cli):
    teacher = next(SHIPPED_RUNS.glob("at-wrn16_1-mnist5k*"))
    common = (str(teacher), "-n", "60", "--steps", "5", "--eps", "0.4", "--json")
    final, fast = (json.loads(cli("evaluate", *common, *extra).stdout) for extra in ((), ("--any-iterate",)))
    assert final["attack"] == "pgd_linf" and fast["attack"] == "pgd_linf_any" and final["n"] == fast["n"] == 60
    assert fast["clean_acc"] == final["clean_acc"] and fast["robust_acc"] <= final["robust_acc"]
    from cartl_kit.config import AttackConfig, EvalConfig
    assert EvalConfig(attack=AttackConfig(eps=0.4, step_size=0.1, steps=5), mode="any").name.endswith("-any")
    with pytest.raises(ValueError, match="evaluation mode"):
        EvalConfig(mode="best")


def test_evaluate_names_its_attack_and_the_convergence_report_refuses_a_weak_ensemble(cli, tmp_path):
    """The strong evaluation's CLI on the shipped teachers, with the smoke preset's tiny ensemble to stay fast: the
    headline names its attack and the accuracy left after each attack; --convergence finds that this tiny
    ensemble is not converged on the masked FDM teacher (large-step PGD beats it) and stores the verdict."""
    import shutil
    shipped = SHIPPED_RUNS
    at, fdm = (next(shipped.glob(pattern)) for pattern in ("at-wrn16_1-mnist5k*", "fdm-k4-lam0.01-wrn16_1-mnist5k*"))
    copy = tmp_path / fdm.name  # a copy the CLI may write to (shipped runs stay read-only)
    shutil.copytree(fdm, copy)
    out = cli("evaluate", str(at), "--preset", "smoke", "--eps", "0.3", "-n", "40")
    assert out.returncode == 0, out.stderr
    assert "attack: ensemble (PGD-3x1 step=eps, APGD-CE-3, APGD-T-2x1), n = 40" in out.stdout
    assert "robust after APGD-T-2x1" in out.stdout
    report = cli("evaluate", str(copy), "--preset", "smoke", "--eps", "0.3", "-n", "40", "--convergence")
    assert report.returncode == 0, report.stderr
    assert "Verdict: NOT converged" in report.stdout
    assert re.search(r"not converged: PGD-CE-\d+ step=eps \([\d.]+ %\) beats the headline ensemble", report.stdout)
    stored = json.loads((copy / "metrics.json").read_text())
    key = "convergence-ens-g3x1-ce3-t2x1-eps0.3-sample40"
    assert key in stored and not stored[key]["converged"] and stored[key]["flags"]
    with pytest.raises(SystemExit):
        main(["evaluate", str(at), "--attack", "bogus"])
    bad = cli("evaluate", str(at), "--attack", "ensemble", "--steps", "5")
    assert bad.returncode == 2 and "--steps and --step-size belong to --attack pgd" in bad.stderr
