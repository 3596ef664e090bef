"""Grids as jobs: `--jobs N` runs cells as parallel processes, `--print-commands` prints them for a scheduler."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from cartl_kit.__main__ import main
from cartl_kit.config import get_preset
from cartl_kit.experiments import sweep_cells
from cartl_kit.grid import Cell, cell_argv, commands, parse_cell, run_parallel, waves
from cartl_kit.store import find_run

GRID = ["sweep", "--preset", "smoke", "-k", "1", "2", "--method", "tl", "neft"]


def _cli(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_print_commands_lists_teachers_first_and_each_command_is_self_contained(capsys, tmp_path):
    code, out, err = _cli(capsys, *GRID, "--runs-dir", str(tmp_path), "--print-commands")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "# 1 teachers: run these first" and lines[2] == "# 4 cells: after the teachers"
    argv = [shlex.split(line) for line in lines if not line.startswith("#")]
    assert all(a[:4] == ["python", "-m", "cartl_kit", "cell"] and a[a.index("--runs-dir") + 1] == str(tmp_path)
               for a in argv)
    teacher, students = parse_cell(argv[0][5]), [parse_cell(a[5], [a[7]]) for a in argv[1:]]
    assert not teacher.evaluations and all(s.config.teacher == teacher.config for s in students)
    assert [s.config for s in students] == [c.config for c in sweep_cells("smoke", ks=[1, 2], methods=["tl", "neft"])]
    assert not any(tmp_path.iterdir()), "printing commands runs nothing"


def test_a_cell_round_trips_through_its_command_line():
    cell = sweep_cells("smoke", ks=[2], methods=["neft"], pgd=True)[0]
    argv = cell_argv(cell, root="runs", device="cpu", shipped=False)
    assert parse_cell(argv[5], [argv[7], argv[9]]) == cell and len(cell.evaluations) == 2
    assert argv[-3:] == ["--device", "cpu", "--no-shipped"]


def test_waves_skip_teachers_the_store_holds(tmp_path):
    cells = sweep_cells("quick", ks=[4], methods=["tl"])  # the quick AT teacher ships with the kit
    assert waves(cells, root=tmp_path)[0] == [] and waves(cells, root=tmp_path, shipped=False)[0] == [
        Cell(cells[0].config.teacher)]
    assert commands(cells, root=tmp_path)[0] == "# 1 cells"


@pytest.mark.slow
def test_jobs_2_gives_the_same_runs_as_one_process(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same threads in the jobs and here: the same float sums
    import torch
    torch.set_num_threads(1)
    tables = {}
    for jobs in ("1", "2"):
        root = tmp_path / f"jobs{jobs}"
        code, out, err = _cli(capsys, *GRID, "--runs-dir", str(root), "--jobs", jobs, "--json")
        assert code == 0, err
        tables[jobs] = json.loads(out)
        if jobs == "2":
            assert err.count("done in") == 5, err  # the teacher, then the four students, each its own job
            assert "[1/1]" in err and "[4/4]" in err and re.search(r"\[1/4, about \d+ min left\]", err), err
    strip = [{k: v for k, v in row.items() if k != "shipped"} for row in tables["1"]]
    assert strip == [{k: v for k, v in row.items() if k != "shipped"} for row in tables["2"]]
    for row in tables["1"]:
        one, two = (torch.load(tmp_path / f"jobs{j}" / row["run"] / "model.pt", weights_only=True) for j in "12")
        assert all(torch.equal(one[name], two[name]) for name in one), row["run"]


def test_a_failed_job_is_reported_and_the_others_finish(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    preset = get_preset("smoke")
    good = Cell(preset.source("at", seed=0))
    bad = Cell(preset.source("at", seed=1))
    lines = []
    broken_root = tmp_path / "runs"
    broken_root.mkdir()
    # the second job cannot write its run: its folder name is taken by a file
    from cartl_kit.store import run_path
    run_path(bad.config, broken_root).write_text("not a folder")
    with pytest.raises(RuntimeError, match=r"1 job\(s\) failed: at-"):
        run_parallel([good, bad], jobs=2, root=broken_root, log=lines.append)
    assert find_run(good.config, broken_root) is not None
    assert any(line.startswith("FAILED") for line in lines) and any(line.startswith("done in") for line in lines)


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "--jobs must be an integer >= 1"),
    (["--devices", "gpu0", "--jobs", "2"], "--devices"),
])
def test_bad_parallel_flags_are_one_line_and_exit_2(capsys, tmp_path, args, message):
    code, out, err = _cli(capsys, *GRID, "--runs-dir", str(tmp_path / "runs"), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_cell_refuses_a_config_that_is_not_json(capsys, tmp_path):
    code, out, err = _cli(capsys, "cell", "--config", "{not json", "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and "--config is not JSON" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_a_printed_command_runs(tmp_path):
    cell = Cell(get_preset("smoke").source("at", seed=3))
    argv = cell_argv(cell, root=tmp_path, python=sys.executable)
    done = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert done.returncode == 0, done.stderr
    assert find_run(cell.config, tmp_path) is not None and done.stdout.strip() == str(find_run(cell.config, tmp_path))
