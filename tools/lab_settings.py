"""Default JupyterLab settings for the kit's environment (run by `make venv`; safe to run again).

Writes ``<environment>/share/jupyter/lab/settings/overrides.json`` (JupyterLab's place for an environment's
default settings), keeping any other setting in it: ipywidgets saves the state of the widgets still open
(a notebook's slider panels) with the notebook, so a saved notebook reopens with its panels drawn instead of
"Error displaying widget: model not found". The kit's figures and progress bars are not widgets and need
nothing. A user can still change the setting (Settings > Save Widget State Automatically).
"""

import json
import sys
from pathlib import Path

PLUGIN = "@jupyter-widgets/jupyterlab-manager:plugin"


def main() -> None:
    path = Path(sys.prefix, "share", "jupyter", "lab", "settings", "overrides.json")
    settings = json.loads(path.read_text()) if path.exists() else {}
    settings.setdefault(PLUGIN, {})["saveState"] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")
    print(f"{path}: {PLUGIN} saveState = true")


if __name__ == "__main__":
    main()
