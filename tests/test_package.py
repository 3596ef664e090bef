"""The kit as a package: a wheel installed outside the checkout works (demo, shipped teachers, notebooks).

One slow test (about two minutes): it builds the wheel from a copy of the checkout, installs it into a
fresh virtual environment in a temporary folder (reusing this environment's torch and the other
dependencies through a path file, so nothing is downloaded) and works there as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from cartl_kit.bundled import bundle_files

ROOT = Path(__file__).resolve().parent.parent
BUILD_LEFTOVERS = shutil.ignore_patterns(".venv", ".git", "runs", "reports", "build", "dist", "*.egg-info",
                                         "__pycache__", ".pytest_cache", ".ipynb_checkpoints", "release",
                                         "submitted", "autograded", "feedback", "gradebook.db")


def _run(args, cwd: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
    return done


def test_the_bundles_hold_every_notebook_and_lab():
    assert [p.name for p in bundle_files("notebooks")] == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    labs = {p.as_posix() for p in bundle_files("labs")}
    assert "nbgrader_config.py" in labs and len([p for p in labs if p.endswith(".ipynb")]) == 4


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_works(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=BUILD_LEFTOVERS)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(source)], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("cartl_kit-*.whl"))

    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    (site / "reuse_kit_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co., no download
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], cwd=tmp_path)

    user = tmp_path / "user"  # a folder of the user's, far from the checkout
    user.mkdir()
    where = _run([str(python), "-c", "import cartl_kit; print(cartl_kit.__file__)"], cwd=user).stdout.strip()
    assert Path(where).is_relative_to(site), f"cartl_kit was imported from {where}, not from the installed wheel"

    cli = str(env_dir / "bin" / "cartl-kit")
    listed = json.loads(_run([cli, "runs", "--json", "--runs-dir", "runs"], cwd=user).stdout)
    assert len(listed) >= 2 and all(row["shipped"] for row in listed), "the shipped teachers did not travel"
    demo = json.loads(_run([cli, "demo", "--preset", "smoke", "--json", "--device", "cpu"], cwd=user).stdout)
    assert len(demo["students"]) == 3 and (user / demo["report"]).is_file() and (user / "runs").is_dir()

    _run([cli, "notebooks", "notebooks"], cwd=user)
    assert sorted(p.name for p in (user / "notebooks").glob("*.ipynb")) == \
        sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    _run([str(python), "-m", "papermill", "notebooks/07_reproduction.ipynb", "out.ipynb", "-p", "PLAN", "smoke",
          "--cwd", "notebooks", "-k", "python3"], cwd=user, timeout=900)
    assert (user / "out.ipynb").is_file()
