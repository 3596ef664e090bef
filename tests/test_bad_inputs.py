"""Bad inputs (issue 18): one clear line naming the value or flag, exit status 2 (CLI) or ValueError (API and
notebook parameters), no traceback, and nothing written — checked before any training starts.

The cases are three tables: ``CLI_CASES`` (``python -m cartl_kit ...``, run in-process through ``main``),
``API_CASES`` (library calls) and ``NOTEBOOK_CASES`` (``check_notebook_params``, which every notebook calls
right after its parameters cell; one of them also goes through papermill). Training commands use the smoke
preset, so that a case whose check went missing trains for seconds, not minutes, before it fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cartl_kit.store import SHIPPED_RUNS as SHIPPED

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAN, INF = float("nan"), float("inf")

# --- CLI: (argv, pattern the one line must match); {run} a copied finished run, {runs} the runs folder,
# {file} a plain file, {tmp} the test's folder. --runs-dir {runs} is added where the command takes it.
CLI_CASES = [
    (["evaluate", "{run}", "--step-size", "inf"], r"--step-size: not a finite number: 'inf'"),
    (["evaluate", "{run}", "--step-size", "nan"], r"--step-size: not a finite number: 'nan'"),
    (["evaluate", "{run}", "--step-size", "0"], r"step_size must be > 0 and finite.*got 0"),
    (["evaluate", "{run}", "--eps", "inf"], r"--eps: not a finite number: 'inf'"),
    (["evaluate", "{run}", "--eps", "nan"], r"--eps: not a finite number: 'nan'"),
    (["evaluate", "{run}", "--eps", "-0.1"], r"eps must be in \(0, 1\].*got -0\.1"),
    (["evaluate", "{run}", "--eps", "2"], r"eps must be in \(0, 1\].*got 2"),
    (["evaluate", "{run}", "--eps", "abc"], r"--eps: not a number: 'abc'"),
    (["evaluate", "{run}", "--steps", "-1"], r"steps must be an integer >= 0, got -1"),
    (["evaluate", "{run}", "-n", "1000000000"], r"-n 1000000000 is larger than the test split of mnist5k\[0-4\] \(500 images\)"),
    (["evaluate", "{run}", "--attack", "pgd", "-n", "501"], r"-n 501 is larger than the test split .*\(500 images\)"),
    (["evaluate", "{run}", "-n", "0"], r"-n must be an integer >= 1, got 0"),
    (["evaluate", "{run}", "-n", "-3"], r"-n must be an integer >= 1, got -3"),
    (["evaluate", "{run}", "--device", "foo"], r"--device 'foo' is not a device"),
    (["evaluate", "{run}", "--device", "cuda"], r"--device 'cuda': this machine has no CUDA GPU"),
    (["source", "--device", ""], r"--device '' is not a device"),
    (["source", "--device", "foo"], r"--device 'foo' is not a device"),
    (["source", "--device", "cuda"], r"--device 'cuda': this machine has no CUDA GPU; use --device cpu"),
    (["transfer", "--device", "cuda:1"], r"--device 'cuda:1': this machine has no CUDA GPU"),
    (["transfer", "--device", "meta"], r"--device 'meta' is not a device the kit trains on"),
    (["source", "--seed", "-1"], r"--seed must be an integer in 0\.\.4294967295, got -1"),
    (["source", "--seed", str(2**70)], r"--seed must be an integer in 0\.\.4294967295, got 1180591620717411303424"),
    (["transfer", "--seed", str(2**32)], r"--seed must be an integer in 0\.\.4294967295, got 4294967296"),
    (["reproduce", "--seeds", "0", "-1"], r"--seeds must be an integer in 0\.\.4294967295, got -1"),
    (["info", "--size", "1"], r"--size must be an integer >= 8, got 1"),
    (["info", "--size", "0"], r"--size must be an integer >= 8, got 0"),
    (["info", "--size", "-3"], r"--size must be an integer >= 8, got -3"),
    (["info", "--channels", "0"], r"--channels must be an integer >= 1, got 0"),
    (["info", "--classes", "-1"], r"--classes must be an integer >= 1, got -1"),
    (["sweep", "--method", "tl", "--beta", "0.5"], r"--beta 0\.5 belongs to --method neft"),
    (["sweep", "--method", "tl", "lwf", "--beta", "0.4", "0.6"], r"--beta 0\.4 0\.6 belongs to --method neft"),
    (["sweep", "--teacher", "at", "--lam", "0.01"], r"--lam 0\.01 describes FDM teachers; add --teacher fdm"),
    (["sweep", "--method", "neft", "--beta", "inf"], r"--beta: not a finite number: 'inf'"),
    (["sweep", "--target", ""], r"--target: cannot read dataset name ''"),
    (["sweep", "--source", ""], r"--source: cannot read dataset name ''"),
    (["sweep", "--target", "foo[5-9]"], r"--target: unknown dataset 'foo'"),
    (["sweep", "--target", "DIGITS[5-9"], r"--target: cannot read dataset name 'DIGITS\[5-9'"),
    (["source", "--method", "fdm", "--lam", "nan"], r"--lam: not a finite number: 'nan'"),
    (["transfer", "--method", "neft", "--beta", "inf"], r"--beta: not a finite number: 'inf'"),
    (["transfer", "--method", "lwf", "--lwf-lam=-inf"], r"--lwf-lam: not a finite number: '-inf'"),
    (["source", "--runs-dir", ""], r"--runs-dir.*''"),
    (["source", "--runs-dir", "{file}"], r"--runs-dir.*afile'.*(file|folder)"),
    (["transfer", "--runs-dir", "{file}/sub"], r"--runs-dir.*afile/sub'"),
    (["source", "--runs-dir", "{tmp}/" + "x" * 300], r"--runs-dir.*too long"),
    (["runs", "--runs-dir", "{file}"], r"--runs-dir.*afile'.*(file|folder)"),
    (["pretrain", "--out", "{file}"], r"--out.*afile'.*(file|folder)"),
    (["demo", "--report", ""], r"report must be a file path .*, got ''"),
    (["demo", "--report", "{tmp}/x{foo}.html"], r"report '.*x\{foo\}\.html' is not a valid template"),
    (["demo", "--report", "{tmp}/x{.html"], r"report '.*x\{\.html' is not a valid template"),
    (["demo", "--report", "{file}/demo.html"], r"report '.*afile/demo\.html': its folder '.*afile' is a file"),
    (["demo", "--report", "{tmp}"], r"report '.*' is a folder; give a file name"),
    (["reproduce", "--report", "", "--preset", "smoke"], r"report must be a file path .*, got ''"),
    (["demo", "--device", "foo"], r"--device 'foo' is not a device"),
]

# --- API: (call(ctx), exception, pattern); ctx has preset (smoke), model (tiny, eval mode), x, y, runs, file.
API_CASES = [
    (lambda c: c.preset.source("fdm", k=4, lam=True), ValueError, r"lam .* got True"),
    (lambda c: c.preset.transfer(c.preset.source(), "neft", beta=True), ValueError, r"beta .* got True"),
    (lambda c: c.preset.transfer(c.preset.source(), "lwf", lwf_lam=True), ValueError, r"lwf_lam .* got True"),
    (lambda c: c.optim(batch_size=True), ValueError, r"batch_size must be an integer >= 1, got True"),
    (lambda c: c.optim(epochs=True), ValueError, r"epochs must be an integer >= 1, got True"),
    (lambda c: c.optim(gamma=-0.2), ValueError, r"gamma .* must be a finite number > 0, got -0\.2"),
    (lambda c: c.optim(gamma=NAN), ValueError, r"gamma .* got nan"),
    (lambda c: c.optim(momentum=NAN), ValueError, r"momentum must be a finite number >= 0 and <= 1, got nan"),
    (lambda c: c.optim(momentum=-0.5), ValueError, r"momentum .* got -0\.5"),
    (lambda c: c.optim(weight_decay=INF), ValueError, r"weight_decay .* got inf"),
    (lambda c: c.optim(base_lr=INF), ValueError, r"base_lr .* got inf"),
    (lambda c: c.optim(warmup_epochs=-1), ValueError, r"warmup_epochs must be an integer >= 0, got -1"),
    (lambda c: c.optim(milestones=("a",)), ValueError, r"milestone .* got 'a'"),
    (lambda c: c.optim(milestones=5), ValueError, r"milestones must be a sequence .* got 5"),
    (lambda c: c.optim(milestones=(0.5, NAN)), ValueError, r"milestone .* got nan"),
    (lambda c: c.optim(milestones=(40, 70)), ValueError, r"milestone .* got 40"),
    (lambda c: c.attack(step_size=INF), ValueError, r"step_size must be > 0 and finite.*got inf"),
    (lambda c: c.attack(eps=True), ValueError, r"eps must be in \(0, 1\].*got True"),
    (lambda c: c.attack(random_start="yes"), ValueError, r"random_start must be True or False, got 'yes'"),
    (lambda c: c.preset.source(seed=-1), ValueError, r"seed must be an integer in 0\.\.4294967295, got -1"),
    (lambda c: c.preset.source(seed=2**70), ValueError, r"seed must be an integer .* got 1180591620717411303424"),
    (lambda c: c.preset.source(seed=1.5), ValueError, r"seed must be an integer .* got 1\.5"),
    (lambda c: c.preset.source(dataset=""), ValueError, r"cannot read dataset name ''"),
    (lambda c: c.preset.transfer(c.preset.source(), dataset=""), ValueError, r"cannot read dataset name ''"),
    (lambda c: c.preset.transfer(c.preset.source(), dataset="svhm"), ValueError, r"unknown dataset 'svhm'"),
    (lambda c: c.replace(c.preset.transfer(c.preset.source()), power_iterations=0), ValueError,
     r"power_iterations must be an integer >= 1, got 0"),
    (lambda c: c.replace(c.preset.source(), augment="no"), ValueError, r"augment must be True or False, got 'no'"),
    (lambda c: c.from_dict({**c.source_dict, "colour": 1}), ValueError, r"unknown key 'colour' in a source config"),
    (lambda c: c.from_dict({**c.source_dict, "optim": {**c.source_dict["optim"], "lr": 0.1}}), ValueError,
     r"unknown key 'lr' in a optim config"),
    (lambda c: c.from_dict({k: v for k, v in c.source_dict.items() if k != "dataset"}), ValueError,
     r"lacks the key 'dataset'"),
    (lambda c: c.from_dict({**c.source_dict, "optim": {**c.source_dict["optim"], "momentum": NAN}}), ValueError,
     r"momentum .* got nan"),
    (lambda c: c.pgd(c.x * NAN), ValueError, r"x holds NaN or infinite pixels"),
    (lambda c: c.pgd(c.x * 255), ValueError, r"x has pixels in \[0, 255\]; attacks need images in \[0, 1\]"),
    (lambda c: c.pgd(c.x - 0.5), ValueError, r"x has pixels in \[-0\.5, 0\.5\]"),
    (lambda c: c.pgd(c.x, step_size=INF), ValueError, r"step_size .* got inf"),
    (lambda c: c.attacks.pgd_linf_any(c.model, c.x * NAN, c.y, eps=0.1, step_size=0.05, steps=2), ValueError,
     r"x holds NaN"),
    (lambda c: c.attacks.apgd(c.model, c.x * 255, c.y, eps=0.1, steps=2), ValueError, r"x has pixels in \[0, 255\]"),
    (lambda c: c.attacks.apgd_targeted(c.model, c.x * NAN, c.y, eps=0.1, steps=2, n_targets=1), ValueError,
     r"x holds NaN"),
    (lambda c: c.attacks.worst_case(c.model, c.x + 1, c.y, eps=0.1), ValueError, r"x has pixels in \[1, 2\]"),
    (lambda c: c.experiments.sweep_configs(c.preset, ks=[]), ValueError, r"ks is empty"),
    (lambda c: c.experiments.sweep(c.preset, ks=[], root=c.runs, progress=False), ValueError, r"ks is empty"),
    (lambda c: c.experiments.sweep_configs(c.preset, methods=[]), ValueError, r"methods is empty"),
    (lambda c: c.experiments.sweep_configs(c.preset, ks=4), ValueError, r"ks must be a list, got 4"),
    (lambda c: c.experiments.sweep_configs(c.preset, betas=[0.5]), ValueError, r"betas=\[0\.5\] apply to method 'neft'"),
    (lambda c: c.experiments.sweep_configs(c.preset, lams=[0.01]), ValueError, r"lams=\[0\.01\] .* teacher='fdm'"),
    (lambda c: c.experiments.sweep_configs(c.preset, target=""), ValueError, r"cannot read dataset name ''"),
    (lambda c: c.experiments.demo(c.preset, root=c.runs, report="", progress=False, log=None), ValueError,
     r"report must be a file path .*, got ''"),
    (lambda c: c.experiments.demo(c.preset, root=c.runs, report=str(c.file) + "/r.html", progress=False, log=None),
     ValueError, r"its folder '.*afile' is a file"),
    (lambda c: c.experiments.demo(c.preset, root=c.runs, report="{0}.html", progress=False, log=None), ValueError,
     r"report '\{0\}\.html' is not a valid template"),
    (lambda c: c.fdm_loss(torch.ones(2, 3), torch.zeros(2, 3), lam=True), ValueError, r"lam .* got True"),
]

# --- notebook parameters: (params, pattern); ``{file}`` is a plain file.
NOTEBOOK_CASES = [
    ({"QUICK": "abc"}, r"notebook parameter QUICK must be True or False, got 'abc'"),
    ({"QUICK": "False"}, r"QUICK must be True or False, got 'False'"),
    ({"QUICK": 1}, r"QUICK must be True or False, got 1"),
    ({"FROM_SCRATCH": "yes"}, r"FROM_SCRATCH must be True or False, got 'yes'"),
    ({"RUNS_DIR": ""}, r"notebook parameter RUNS_DIR.*''"),
    ({"RUNS_DIR": "{file}"}, r"RUNS_DIR.*afile'.*(file|folder)"),
    ({"RUNS_DIR": "{file}/runs"}, r"RUNS_DIR.*afile/runs'"),
    ({"RUNS_DIR": None}, r"RUNS_DIR.*None"),
    ({"SEED": -1}, r"SEED must be an integer in 0\.\.4294967295, got -1"),
    ({"SEED": "0"}, r"SEED must be an integer .* got '0'"),
    ({"N_EVAL": 0}, r"N_EVAL must be an integer >= 1, got 0"),
    ({"N_EVAL": "all"}, r"N_EVAL must be an integer >= 1, got 'all'"),
    ({"K": "4"}, r"K must be an integer >= 1, got '4'"),
    ({"K_VALUES": "1,2"}, r"K_VALUES must be a list of integers .* got '1,2'"),
    ({"LAMBDA": NAN}, r"LAMBDA must be a finite number >= 0, got nan"),
    ({"BETA": 0}, r"BETA must be a finite number > 0, got 0"),
    ({"BETAS": []}, r"BETAS must be a non-empty list of numbers .* got \[\]"),
    ({"EPS": 2.0}, r"EPS must be a finite number > 0 and <= 1, got 2\.0"),
    ({"EPOCHS": 0}, r"EPOCHS must be an integer >= 1, got 0"),
    ({"LAMDA": 0.01}, r"unknown notebook parameter LAMDA"),
]


def _snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its size and modification time: what 'nothing written' compares."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in folder.rglob("*")}


def _one_clean_line(text: str, pattern: str) -> None:
    import re
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text and re.search(pattern, lines[0]), lines[0]


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A test folder with a runs folder holding a copy of a shipped run, a plain file, no GPU, and cwd inside."""
    runs = tmp_path / "runs"
    shipped = next(SHIPPED.glob("at-wrn16_1-mnist5k*"))
    run = shutil.copytree(shipped, runs / shipped.name)  # a run of one's own: evaluate may write to it
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARTL_RUNS", str(runs))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return SimpleNamespace(tmp=tmp_path, runs=runs, run=run, file=tmp_path / "afile")


RUNS_FLAG = {"source", "transfer", "sweep", "demo", "reproduce"}  # commands that take --runs-dir


@pytest.mark.parametrize("argv, pattern", CLI_CASES, ids=[" ".join(a)[:60] for a, _ in CLI_CASES])
def test_cli_refuses_with_one_line_and_status_2(place, capsys, argv, pattern):
    from cartl_kit.__main__ import main
    for name in ("run", "runs", "file", "tmp"):
        argv = [arg.replace("{" + name + "}", str(getattr(place, name))) for arg in argv]
    if argv[0] in RUNS_FLAG and "--runs-dir" not in argv:
        argv += ["--runs-dir", str(place.runs)]
    if argv[0] in {"source", "transfer", "sweep", "demo"} and "--preset" not in argv:
        argv += ["--preset", "smoke"]  # seconds of training, should a check be missing
    before = _snapshot(place.tmp)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    out = capsys.readouterr()
    assert code == 2, out.err
    _one_clean_line(out.err, pattern)
    assert out.out == ""
    assert _snapshot(place.tmp) == before


@pytest.fixture
def ctx(place, tiny_model):
    import dataclasses

    import cartl_kit as ck
    from cartl_kit import config, experiments
    from cartl_kit.losses import fdm_loss
    preset = config.get_preset("smoke")
    x = torch.linspace(0, 1, 256).reshape(4, 1, 8, 8)  # pixels from 0 to 1 exactly
    model = tiny_model.eval()
    return SimpleNamespace(
        preset=preset, model=model, x=x, y=torch.tensor([0, 1, 2, 3]), runs=place.runs, file=place.file,
        tmp=place.tmp, optim=config.OptimConfig, attack=config.AttackConfig, replace=dataclasses.replace,
        from_dict=config.from_dict, source_dict=config.to_dict(preset.source()), experiments=experiments,
        attacks=ck, fdm_loss=fdm_loss,
        pgd=lambda images, step_size=0.05: ck.pgd_linf(model, images, torch.tensor([0, 1, 2, 3]), eps=0.1,
                                                       step_size=step_size, steps=2))


@pytest.mark.parametrize("call, error, pattern", API_CASES, ids=[f"api{i}" for i in range(len(API_CASES))])
def test_api_refuses_with_one_line(ctx, call, error, pattern):
    before = _snapshot(ctx.tmp)
    with pytest.raises(error) as caught:
        call(ctx)
    _one_clean_line(str(caught.value), pattern)
    assert _snapshot(ctx.tmp) == before


@pytest.mark.parametrize("params, pattern", NOTEBOOK_CASES, ids=[next(iter(p)) + str(i) for i, (p, _) in
                                                                 enumerate(NOTEBOOK_CASES)])
def test_notebook_parameters_refused_with_one_line(place, params, pattern):
    from cartl_kit.params import check_notebook_params
    params = {name: value.format(file=place.file) if isinstance(value, str) else value for name, value in params.items()}
    before = _snapshot(place.tmp)
    with pytest.raises(ValueError) as caught:
        check_notebook_params(**params)
    _one_clean_line(str(caught.value), pattern)
    assert _snapshot(place.tmp) == before


def test_papermill_stops_a_string_quick_in_the_first_cell(tmp_path):
    """``papermill -p QUICK abc``: the cell after the parameters fails with the kit's line; no runs folder appears."""
    import papermill
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        papermill.execute_notebook(str(NOTEBOOKS / "02_tradeoff_k.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"QUICK": "abc", "RUNS_DIR": str(tmp_path / "runs")},
                                   progress_bar=False, kernel_name="python3", cwd=str(tmp_path))
    assert caught.value.ename == "ValueError" and caught.value.exec_count == 3  # parameters, injected, this cell
    _one_clean_line(caught.value.evalue, r"notebook parameter QUICK must be True or False, got 'abc'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ipynb"]


def test_every_notebook_checks_its_parameters_right_after_them():
    import ast

    import nbformat
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        index = next(i for i, cell in enumerate(cells) if "parameters" in cell.metadata.get("tags", []))
        names = [statement.targets[0].id for statement in ast.parse(cells[index].source).body]
        call = "check_notebook_params(" + ", ".join(f"{name}={name}" for name in names)
        assert call.replace(" ", "") in cells[index + 1].source.replace(" ", "").replace("\n", ""), path.name


def test_a_dataset_name_has_one_spelling_and_shipped_hashes_stay():
    from cartl_kit.config import config_hash, from_json, get_preset
    preset = get_preset("smoke")
    spellings = ("digits[5-9]", "DIGITS[5-9]", " digits[5,6,7,8,9] ")
    hashes = {config_hash(preset.transfer(preset.source(), dataset=name)) for name in spellings}
    assert len(hashes) == 1
    for folder in SHIPPED.iterdir():  # a run's folder name ends with its config's hash
        assert folder.name.endswith(config_hash(from_json((folder / "config.json").read_text())))

