# extractive-qa: `make train` runs the main job, `make test` the tests. Each installs what it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned, so pip never pulls a multi-GB build by accident. On this project's CPU machines
# torch==2.13.0 comes from a local CPU wheel; with PyPI it is the CUDA build (GPU users). CPU-only
# elsewhere: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev,optuna,joblib,submitit
ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: install train predict report evaluate ui bench test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

train: install
	$(PY) -m extractive_qa.train $(ARGS)

predict: install
	$(PY) -m extractive_qa.predict $(ARGS)

report: install
	$(PY) -m extractive_qa.compare $(ARGS)

evaluate: install
	$(PY) -m extractive_qa.evaluate $(ARGS)

# MLflow 3's UI opens experiments on a GenAI view: this URL (or a click on "Model training", which the
# browser remembers) shows the runs table.
ui: install
	@echo "MLflow UI: http://127.0.0.1:$${PORT:-5000}/#/experiments?workflowType=machine_learning  (runs: click 'Model training' once)"
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port $${PORT:-5000} --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db"

bench: install
	$(PY) -m extractive_qa.bench $(ARGS)

# Tests run on every core (pytest-xdist; a test file stays on one worker; shared fixtures are built once).
test: install
	$(PY) -m pytest -q -n auto --dist loadfile $(ARGS)

lint: install
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf outputs/runs outputs/sweeps outputs/reports .cache/features .pytest_cache
