"""Fixtures: tokenizers built offline or read from ../shared, the synthetic data set and tiny model, a
real 3-seed sweep the tracking/report/ensemble tests share, a real `mlflow server`, and a composed
training config for in-process tests. Helpers are in ``tests/helpers``."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

import pytest

from helpers import HW7_DIR, NO_DROPOUT, OFFLINE_MODEL, run_module, shared_once


def pytest_configure(config):
    """Each xdist worker -- and every training process it starts -- gets its share of the cores: two workers
    each running torch on every core oversubscribe a 2-core machine (a 64 s sweep took 294 s). Set in the
    workers (the controller configures first, without a worker count); EXTRACTIVE_QA_TEST_THREADS overrides."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = os.environ.get("EXTRACTIVE_QA_TEST_THREADS") or str(max(1, (os.cpu_count() or 1) // workers))
    os.environ["OMP_NUM_THREADS"] = share
    atexit.register(_leave_without_teardown)  # registered first, so it runs after every later atexit handler


def _leave_without_teardown() -> None:
    """A worker's last step, once its results are sent and the other atexit handlers have run: end the process
    without the interpreter's teardown of everything its tests imported (torch, transformers, MLflow). That teardown
    took 2.6-3.4 s of one core at the end of a `make test` on 2 cores, the controller waiting for it. The exit status
    is not a worker's verdict: the reports it sent are."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="session")
def char_tokenizer(tmp_path_factory):
    from extractive_qa.core.synthetic import build_char_tokenizer

    return build_char_tokenizer(tmp_path_factory.mktemp("char_tokenizer"))


@pytest.fixture(scope="session")
def bert_tokenizer():
    if not (OFFLINE_MODEL / "vocab.txt").is_file():
        pytest.skip(f"needs the offline bert-base-chinese tokenizer at {OFFLINE_MODEL}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(OFFLINE_MODEL))


@pytest.fixture
def compose_train(tmp_path):
    """``compose_train(*overrides)``: the training config as ``python -m extractive_qa.train`` composes it,
    with outputs, caches and the tracking store under this test's tmp_path."""
    from hydra import compose, initialize_config_dir

    from extractive_qa.core.config import CONF_DIR

    def compose_cfg(*overrides: str, name: str = "train"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(name, overrides=[f"paths.output_dir={tmp_path}/outputs", f"paths.cache_dir={tmp_path}/cache",
                                            f"++tracking.uri=sqlite:///{tmp_path}/mlflow.db", *overrides])

    return compose_cfg


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    """A synthetic hw7-format data dir and an offline tiny-model dir (see synthetic.py)."""
    from extractive_qa.core.synthetic import write_synthetic_hw7, write_tiny_model_dir

    def build(tmp: Path) -> dict:
        return {"data": write_synthetic_hw7(tmp / "data", n_train=1000), "model": write_tiny_model_dir(tmp / "model"),
                "tmp": tmp}

    return {k: Path(v) for k, v in shared_once(tmp_path_factory, "synthetic", build).items()}


@pytest.fixture(scope="session")
def seed_sweep(synthetic, tmp_path_factory) -> dict:
    """A real 3-seed sweep of the tiny model on the synthetic set, tracked in a fresh sqlite store, each
    job's model logged and registered (versions 1-3 of ``seeds-qa``): the runs the sweep, report,
    ensemble and registry tests look at."""

    def build(tmp: Path) -> dict:
        uri = f"sqlite:///{tmp}/mlflow.db"
        sweep_dir = tmp / "outputs" / "sweeps" / "seeds"
        args = ["-m", "seed=1,2,3", f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache",
                f"tracking.uri={uri}", "experiment_name=seeds", "model=tiny",
                f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}", "data.limit_train=1500",
                "data.limit_test=40", "epochs=4", "batch_size=32", "lr=1e-3", "warmup_ratio=0.1", "logging_steps=5",
                *NO_DROPOUT, "tracking.log_model=true", "tracking.register_model=seeds-qa",
                f"hydra.sweep.dir={sweep_dir}"]
        run_module("extractive_qa.train", *args)
        return {"tmp": tmp, "uri": uri, "sweep_dir": sweep_dir, "runs": [sweep_dir / str(j) for j in range(3)],
                "args": args}

    info = shared_once(tmp_path_factory, "seed_sweep", build)
    return {**info, "tmp": Path(info["tmp"]), "sweep_dir": Path(info["sweep_dir"]),
            "runs": [Path(r) for r in info["runs"]]}


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> Path:
    """The offline_smoke preset for 3 steps on slices of the ../shared hw7 files (200 test questions)."""
    if not HW7_DIR.is_dir():
        pytest.skip("needs ../shared")

    def build(tmp: Path) -> dict:
        run_module("extractive_qa.train", f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache",
                   "tracking=none", "experiment=offline_smoke", "data.limit_train=96", "data.limit_dev=48",
                   "data.limit_test=200", "epochs=1", "max_steps=3", "logging_steps=1", f"hydra.run.dir={tmp}/run")
        return {"run": tmp / "run"}

    return Path(shared_once(tmp_path_factory, "shared_run", build)["run"])


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory) -> dict:
    """One real `mlflow server` on 127.0.0.1 for the session (tests that stop it start it again)."""
    from helpers import mlflow_server

    settings = mlflow_server.start(tmp_path_factory.mktemp("tracking_server"))
    yield settings
    mlflow_server.stop(settings)


@pytest.fixture(scope="module")
def team_server():
    """PostgreSQL + `mlflow server --app-name basic-auth` on 127.0.0.1, as `make server` runs them (the tests
    of a module share one; tests/helpers/team.py)."""
    from extractive_qa.tracking import postgres

    if not postgres.available():
        pytest.fail(f"no PostgreSQL server binaries here: {postgres.INSTALL_HINT} (.ci/run does)")
    from helpers import team

    server = team.start()
    yield server
    team.stop(server)
