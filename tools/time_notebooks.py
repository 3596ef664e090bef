"""How long each notebook takes at its default parameters, measured: cold, and again with its runs in place.

    .venv/bin/python tools/time_notebooks.py                  # notebooks 00-06 and 08 -> reports/notebook-times.json
    .venv/bin/python tools/time_notebooks.py --notebooks 00_quickstart 04_neft   # replaces those two rows only
    .venv/bin/python tools/time_notebooks.py --notebooks 08_lp_ft --keep /tmp/out  # and keeps the executed copies

For each notebook, in its own fresh folder (so nothing another notebook trained is reused): papermill runs it
once from an empty runs folder (**cold**: the shipped teachers load, every transfer trains and is evaluated)
and once more in the same folder (**warm**: every run and evaluation is loaded). The JSON holds the seconds,
the exit status, the load average before and after, the machine and the date; the Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["00_quickstart", "01_adversarial_training", "02_tradeoff_k", "03_fdm", "04_neft", "05_batchnorm",
             "06_cartl_vs_baselines", "08_lp_ft"]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _papermill(notebook: Path, out: Path, folder: Path) -> tuple[float, int, float, float]:
    before, start = _load(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "papermill", "--cwd", str(folder), str(notebook), str(out)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
    return seconds, done.returncode, before, _load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", nargs="+", default=NOTEBOOKS, choices=NOTEBOOKS)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "notebook-times.json")
    parser.add_argument("--keep", type=Path, help="copy the executed notebooks (NAME-cold.ipynb, NAME-warm.ipynb) here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from cartl_kit.store import machine
    rows = []
    with tempfile.TemporaryDirectory(prefix="cartl-times-") as tmp:
        for name in args.notebooks:
            folder = Path(tmp) / name
            folder.mkdir()
            notebook = folder / f"{name}.ipynb"
            notebook.write_bytes((ROOT / "notebooks" / f"{name}.ipynb").read_bytes())
            cold = _papermill(notebook, folder / "cold.ipynb", folder)
            warm = _papermill(notebook, folder / "warm.ipynb", folder)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for run in ("cold", "warm"):
                    if (folder / f"{run}.ipynb").exists():
                        (args.keep / f"{name}-{run}.ipynb").write_bytes((folder / f"{run}.ipynb").read_bytes())
            rows.append({"notebook": name, "date": machine()["date"], "threads": os.environ.get("OMP_NUM_THREADS", "default"),
                         "cold_s": round(cold[0]), "warm_s": round(warm[0]),
                         "exit": [cold[1], warm[1]], "load_average": [cold[2], cold[3], warm[3]]})
            print(f"{name}: cold {cold[0]:.0f} s, warm {warm[0]:.0f} s (exit {cold[1]}/{warm[1]}; load {cold[2]}"
                  f" -> {cold[3]})", flush=True)
    info = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(args.out.read_text()) if args.out.exists() else {}
    measured = {row["notebook"]: row for row in kept.get("rows", [])}
    for row in kept.get("rows", []):  # rows of an earlier run: they carry its date and threads
        row.setdefault("date", kept["machine"]["date"])
        row.setdefault("threads", kept.get("threads", "default"))
    measured.update({row["notebook"]: row for row in rows})
    args.out.write_text(json.dumps({"command": "python tools/time_notebooks.py " + " ".join(sys.argv[1:]),
                                    "threads": os.environ.get("OMP_NUM_THREADS", "default"), "machine": info,
                                    "rows": [measured[name] for name in NOTEBOOKS if name in measured]},
                                   indent=2) + "\n")
    print("\n| notebook | cold (empty runs folder) | warm (runs in place) |\n|---|---|---|")
    for row in rows:
        print(f"| `{row['notebook']}` | {row['cold_s'] / 60:.1f} min | {row['warm_s']} s |")
    if any(code for row in rows for code in row["exit"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
