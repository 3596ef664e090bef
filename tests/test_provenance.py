"""What a report says about the runs behind it: the kit's commit, when they finished, their training time."""

import json
import subprocess
from pathlib import Path

import pytest

from cartl_kit.provenance import UNRECORDED, code_version, describe, summarise
from cartl_kit.store import SHIPPED_RUNS

ROOT = Path(__file__).resolve().parent.parent


def _run(folder: Path, *, date: str, seconds: list[float], commit: str | None = None, resumed: int | None = None):
    folder.mkdir(parents=True)
    env = {"date": date, **({"commit": commit} if commit else {}), **({"resumed_after_epoch": resumed} if resumed else {})}
    (folder / "env.json").write_text(json.dumps(env))
    (folder / "history.json").write_text(json.dumps([{"epoch": i + 1, "seconds": s} for i, s in enumerate(seconds)]))
    return folder


def test_the_code_version_is_this_checkouts_commit():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert code_version() in (head, head + "+")


def test_runs_made_at_different_times_and_by_different_code_are_told_apart(tmp_path):
    shipped = next(p for p in SHIPPED_RUNS.iterdir() if p.is_dir())
    runs = [_run(tmp_path / "a", date="2026-12-07 13:40 UTC", seconds=[30, 30], commit="be49534"),
            _run(tmp_path / "b", date="2026-12-09 08:05 UTC", seconds=[60], commit="be49534", resumed=1),
            _run(tmp_path / "c", date="2026-12-08 10:00 UTC", seconds=[3000, 3000])]
    p = summarise([*runs, runs[0], shipped])  # a run listed twice counts once
    assert (p.runs, p.shipped, p.resumed, p.train_seconds) == (4, 1, 1, 6120)
    assert (p.first, p.last) == ("2026-12-07 13:40 UTC", "2026-12-09 08:05 UTC")
    assert p.commits == {"be49534": 2, UNRECORDED: 1}
    text = describe(p, "transfers")
    assert text.startswith("4 transfers: 1 shipped with the kit, 3 made here, started between 2026-12-07 13:40 UTC "
                           "and 2026-12-09 08:05 UTC, by kit commits be49534 (2), not recorded (1)")
    assert "1.7 h" in text and "1 resumed from a checkpoint" in text
    assert describe(summarise([shipped]), "teachers") == "1 teacher, shipped with the kit"


def test_a_new_run_records_the_commit_that_made_it(tmp_path):
    from cartl_kit.store import environment
    import torch
    assert environment(torch.device("cpu"))["commit"] == code_version()
