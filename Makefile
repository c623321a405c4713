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

# The main job. Until the sweep service lands: the two arms of the fairness-paradox experiment
# (TextCNN from scratch vs the MiniLM foundation model with LoRA) at alpha = 0.1, offline.
run: setup
	$(PY) -m fedcore.run --config configs/smoke_textcnn.yaml
	$(PY) -m fedcore.run --config configs/smoke_minilm.yaml

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
