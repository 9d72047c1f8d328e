"""An Optuna search finishes what it says: a trial whose process died is trained again until ``n_trials`` really
ran, the count printed is what the storage holds, and a database that goes away is one line naming its URL
(password redacted) and the fix, the job FAILED."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import empty_store, run_module, run_with_faults


def _search(synthetic, tmp: Path, storage: str, study: str, n_trials: int = 3) -> list[str]:
    return ["-m", "hparams_search=optuna", f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={study}",
            f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0",
            "~hydra.sweeper.params", "lr=interval(1e-4,1e-2)", f"paths.output_dir={tmp}/outputs",
            f"paths.cache_dir={tmp}/cache", f"tracking.uri={empty_store(tmp)}", "experiment_name=search",
            "model=tiny", f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}",
            "data.limit_train=32", "data.limit_dev=8", "predict_test=false", "epochs=1", "max_steps=2",
            "batch_size=16", "logging_steps=1", "tracking.system_metrics=false"]


def test_a_trial_whose_process_died_is_trained_again(synthetic, tmp_path):
    """The search is killed (SIGKILL, no word) inside its second trial; the same command again fails that trial, trains
    its parameters as a new trial and ends with n_trials COMPLETE -- the killed parameters among them."""
    import optuna

    from extractive_qa.tracking.optuna_sweeper import NOT_COUNTED

    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = _search(synthetic, tmp_path, storage, "killed")
    # Each trial takes 2 optimizer steps: the 3rd step of the process is trial 1's first.
    killed = run_with_faults(["after:_optimizer_step#3=SIGKILL"], *args, f"hydra.sweep.dir={tmp_path}/first")
    assert killed.returncode != 0
    trials = optuna.load_study(study_name="killed", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING"]
    lost = trials[1].params

    again = run_module("extractive_qa.train", *args, f"hydra.sweep.dir={tmp_path}/second")
    out = again.stdout + again.stderr
    assert "trial 1: its process is gone; its parameters are trained again" in out
    assert "3 of 3 trials counted (3 COMPLETE)" in out, out[-3000:]
    trials = optuna.load_study(study_name="killed", storage=storage).trials
    counted = [t for t in trials if NOT_COUNTED not in t.user_attrs]
    assert [t.state.name for t in counted] == ["COMPLETE"] * 3
    assert [t.number for t in trials if NOT_COUNTED in t.user_attrs] == [1] and trials[1].state.name == "FAIL"
    rerun = [t for t in counted if t.user_attrs.get("rerun_of") == 1]
    assert len(rerun) == 1 and rerun[0].params == lost  # the killed parameters really trained
    results = (tmp_path / "second" / "optimization_results.yaml").read_text()
    assert "COMPLETE: 3" in results and "rerun: 1" in results


@pytest.fixture
def own_postgres(tmp_path_factory):
    """A PostgreSQL cluster of this test's own (it is stopped mid-search), as `make server` makes it."""
    from extractive_qa.tracking import postgres

    if not postgres.available():
        pytest.fail(f"no PostgreSQL server binaries here: {postgres.INSTALL_HINT} (.ci/run does)")
    from helpers.mlflow_server import free_port

    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"eqa-pg-{os.getpid()}-{free_port()}"
    home.mkdir(mode=0o755)  # under /tmp: reachable by the postgres user when root
    cluster = postgres.LocalPostgres(home, free_port()).start()
    cluster.wait_ready()
    yield cluster
    cluster.stop()
    import shutil

    shutil.rmtree(home, ignore_errors=True)


def test_a_database_that_goes_away_is_one_line_and_the_job_fails(synthetic, tmp_path, own_postgres):
    """PostgreSQL stops while the first trial trains (from inside it, at its first evaluation): the trial's job ends
    FAILED with one line, the search stops with one line naming the storage (no password) and the fix, exit 2 --
    not pages of SQLAlchemy tracebacks ending in Optuna's "e.g. exceeding max length"."""
    url = own_postgres.url("optuna", "postgresql")
    env = {**own_postgres.client_env(),
           "TEST_POSTGRES": json.dumps({"folder": str(own_postgres.folder), "port": own_postgres.port})}
    res = run_with_faults(["before:evaluate=call:helpers.team:stop_postgres"],
                          *_search(synthetic, tmp_path, url, "gone"), f"hydra.sweep.dir={tmp_path}/sweep", env=env)
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the Optuna storage {url} cannot be reached") and "Fix: start the database" in last
    assert "Traceback" not in res.stderr and "exceeding max length" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 12, res.stderr
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/run.json")]
    assert record["status"] == "FAILED" and "cannot be reached" in record["error"]
