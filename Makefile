# The two commands of the README: `make run` (install everything, then the main job) and
# `make test`. Everything goes into a virtual environment in .venv (override with VENV=...).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

# torch 2.14.1 / torchvision 0.29.1 are pinned in pyproject.toml: on the project's machines pip
# takes them from local disk; elsewhere pip downloads that release.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The main job: the fairness_paradox study's smoke profile (offline, synthetic corpus, MiniLM), tuned
# and seeded on a local Ray with Optuna + ASHA, recorded in mlflow/mlflow.db; then its report.
run: setup
	$(PY) -m sweeps.launch fairness_paradox
	$(PY) -m sweeps.report fairness_paradox --profile smoke

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
