# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv on first use (Python 3.11 + the package registries) and reuses it afterwards.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lab venv clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade -q pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) tools/lab_settings.py
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m cartl_kit demo

lab: $(VENV)/.installed
	$(VENV)/bin/jupyter lab notebooks/

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs reports
