# extractive-qa: `make train` runs the main job, `make test` the tests. Each installs what it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned, so pip never pulls a multi-GB build by accident. On this project's CPU machines
# torch==2.13.0 comes from a local CPU wheel; with PyPI it is the CUDA build (GPU users). CPU-only
# elsewhere: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev,optuna,joblib,submitit,team
ARGS ?=
STAMP := $(VENV)/.installed
# Bytecode is cached as Python does by default, module by module the first time one is imported, for every command
# make runs: a PYTHONDONTWRITEBYTECODE from the environment would make each new interpreter compile the ~5,500
# modules a run imports again (seconds per process). pip installs with --no-compile: of the ~20,000 files installed
# a run imports about 5,500 and the tests a few more; compiling all of them at install took 23 s on 2 cores
# (43 CPU-s) here, against 0-8 s added to the test suite's first imports (a fresh clone's pytest against a rerun).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install train predict report evaluate ui serve server postgres bench gpu-check test lint docs clean

install: $(STAMP)

# A Python that already has a supported torch (Colab, Kaggle, a lab's CUDA build) lends it to the new .venv
# (scripts/reuse_torch.py): nothing is downloaded for torch. REUSE_TORCH=no always installs the pinned one.
PYTHON ?= python3
REUSE_TORCH ?= auto

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --without-pip $(VENV)
	@# pip 24+ is ~3x faster than the pip Python bundles (23.2 with 3.11) at choosing among an index's files (resolving
	@# this project's requirements: 31.7 -> 10.6 s here). The creating Python's pip puts it in the new venv when it can
	@# install into another environment (--python, pip 22.3+): 1.4 s here, against 3.1 s for venv's bundled pip and
	@# an upgrade. Otherwise ensurepip, then the upgrade; offline, the bundled pip goes on.
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m pip --python $(PY) install -q --no-compile "pip>=24" \
	  >/dev/null 2>&1 || $(PY) -m ensurepip >/dev/null
	@$(PY) -m pip install -q --no-compile "pip>=24" 2>/dev/null || true
	@if [ "$(REUSE_TORCH)" != no ] && [ ! -f $(VENV)/.own_torch ]; then $(PYTHON) scripts/reuse_torch.py $(VENV) || touch $(VENV)/.own_torch; fi
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --no-compile $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	@# While pip resolves and installs the rest on one core, the other byte-compiles what is installed so far (torch and
	@# its dependencies: ~5,000 files, ~12 CPU-s, which every run imports a good part of). Should pip replace a file
	@# meanwhile, Python checks each .pyc against its source's size and time before using it. What does not compile
	@# (other Pythons' code some packages ship) is skipped, as pip skips it. The rest compiles on first import.
	@site="$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"; \
	  (cd "$$site" && $(PY) -m compileall -q -j 1 */ >/dev/null 2>&1) & early=$$!; \
	  echo '$(PY) -m pip install -q --no-compile -e ".[$(EXTRAS)]"'; \
	  $(PY) -m pip install -q --no-compile -e ".[$(EXTRAS)]"; status=$$?; wait $$early; exit $$status
	@touch $(STAMP)

train: install
	$(PY) -m extractive_qa.train $(ARGS)

predict: install
	$(PY) -m extractive_qa.predict $(ARGS)

report: install
	$(PY) -m extractive_qa.compare $(ARGS)

evaluate: install
	$(PY) -m extractive_qa.evaluate $(ARGS)

# MLflow's GenAI job runner (seven more processes, ~1.4 GB) stays off, as in `make server` (tracking/mlflow_server.py says why).
# MLflow 3's UI opens experiments on a GenAI view: this URL (or a click on "Model training", which the
# browser remembers) shows the runs table.
ui: install
	@$(PY) -c "from extractive_qa.tracking.mlflow_server import exit_if_taken; exit_if_taken('127.0.0.1', $${PORT:-5000}, 'PORT=', 'make ui PORT=5001')"
	@echo "MLflow UI: http://127.0.0.1:$${PORT:-5000}/#/experiments?workflowType=machine_learning  (runs: click 'Model training' once)"
	@echo "Each experiment's runs view (best dev scores first, sweeps expanded, charts led by dev EM):"
	@MLFLOW_TRACKING_URI="sqlite:///$(CURDIR)/mlflow.db" $(PY) -m extractive_qa.compare --links http://127.0.0.1:$${PORT:-5000} 2>/dev/null | sed 's/^/  /'
	PYTHONWARNINGS="ignore::DeprecationWarning,ignore:starlette.middleware.wsgi is deprecated" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
	  $(VENV)/bin/mlflow ui --host 127.0.0.1 --port $${PORT:-5000} --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db"

# A logged or registered model over REST with MLflow's own scoring app, bounded (serve.py: body size, JSON nesting,
# work stopped at the timeout): make serve MODEL=models:/hw7-qa/1 [PORT=5001] [ARGS="--max-body-mb 2"]
serve: install
	@test -n "$(MODEL)" || { echo "usage: make serve MODEL=models:/NAME/VERSION (or runs:/RUN_ID/model) [PORT=5001]" >&2; exit 2; }
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
	  $(PY) -m extractive_qa.serve "$(MODEL)" --port $${PORT:-5001} $(ARGS)

# A team's tracking server: MLflow + PostgreSQL + basic-auth logins, on 127.0.0.1:5000 (README "Teams and clusters").
# Needs MLFLOW_AUTH_ADMIN_PASSWORD (12+ characters) in the environment; database passwords are made and kept in .server/.
server: install postgres
	$(PY) -m extractive_qa.server $(ARGS)

# PostgreSQL's server binaries (Debian's package) for `make server` and the tests: installed when missing.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; \
	  else echo "PostgreSQL's server is missing: sudo apt-get install postgresql (or your system's package)" >&2; exit 2; fi; }

bench: install
	$(PY) -m extractive_qa.bench $(ARGS)

# On a CUDA GPU, in one call of at most 8 minutes: the tests marked gpu, make bench in bf16 and fp16, and a
# 300-step bert-base training at 384 tokens (tokens/s, MFU, peak memory), all in outputs/gpu_check/*.json.
gpu-check: install
	$(PY) -m extractive_qa.gpu_check $(ARGS)

# Lint first (ruff, line length 120), then the tests on every core (pytest-xdist; a test file stays on one
# worker; shared fixtures are built once). Files go out in the order they are collected: xdist's default order
# (files with the fewest tests last) queued the four long one-test files (the notebook, the install, two hosts,
# the race) on one worker while the other sat idle for 75 s at the end (2 cores, Zen 4).
test: install postgres lint
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder --durations=15 $(ARGS)

lint: install
	$(VENV)/bin/ruff check src tests

# The documentation site (docs/, MkDocs + Material) on http://127.0.0.1:$${PORT:-8000}; make test builds it --strict.
docs: install
	$(VENV)/bin/mkdocs serve -a 127.0.0.1:$${PORT:-8000}

clean:
	rm -rf outputs/runs outputs/sweeps outputs/reports .cache/features .pytest_cache
