"""A team's setup with the real parts on 127.0.0.1: PostgreSQL and MLflow's server with its basic-auth app
(`make server`), jobs and an Optuna study logging to them. Waits are on conditions, never on a clock."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import run_module, run_with_faults, start_module, team


def tiny(synthetic, tmp, uri: str, experiment: str) -> list[str]:
    return [f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache", f"tracking.uri={uri}",
            f"experiment_name={experiment}", "model=tiny", f"model.name_or_path={synthetic['model']}",
            f"data.dir={synthetic['data']}", "data.limit_train=48", "data.limit_dev=12", "predict_test=false",
            "epochs=1", "logging_steps=1", "batch_size=8", "tracking.system_metrics=false"]


def admin_client(server) -> MlflowClient:
    import os

    os.environ.update(team.credentials())
    return MlflowClient(team.uri(server))


def _request(server, path: str, body: dict | None = None, user: tuple[str, str] | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if user:
        headers["Authorization"] = "Basic " + b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    request = urllib.request.Request(f"{team.uri(server)}{path}", data=json.dumps(body).encode() if body else None,
                                     headers=headers, method="POST" if body is not None else "GET")
    try:
        return urllib.request.urlopen(request, timeout=30).status
    except urllib.error.HTTPError as err:
        return err.code


def test_without_credentials_the_server_refuses(team_server):
    assert _request(team_server, "/api/2.0/mlflow/experiments/search?max_results=1") == 401
    assert _request(team_server, "/api/2.0/mlflow/experiments/search?max_results=1",
                    user=("admin", "not the password")) == 401
    assert _request(team_server, "/api/2.0/mlflow/experiments/search?max_results=1",
                    user=("admin", team.ADMIN_PASSWORD)) == 200


def test_the_server_starts_no_genai_job_runner(team_server):
    """`make server` leaves MLflow's GenAI job runner off (a runner and seven huey consumers this project never
    uses: tracking/mlflow_server.py); the server is MLflow's CLI, uvicorn and its workers."""
    import psutil

    from extractive_qa.tracking.mlflow_server import JOB_EXECUTION

    server = psutil.Process(int(Path(team_server["pidfile"]).read_text()))
    commands = [" ".join(p.cmdline()) for p in [server, *server.children(recursive=True)]]
    assert not [c for c in commands if "huey" in c or "jobs._job_runner" in c], commands
    assert any("uvicorn" in c for c in commands) and team_server["env"][JOB_EXECUTION] == "false"


def test_each_worker_checks_a_password_once_a_minute_not_at_every_request(team_server, monkeypatch):
    """MLflow's slow password hash ran at every request (a quarter of a CPU-second each): MLflow's own reader of
    the server's auth config sees its credential cache (tracking/mlflow_server.py: auth_config says why and what it
    costs)."""
    from mlflow.server.auth.config import read_auth_config

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", team_server["env"]["MLFLOW_AUTH_CONFIG_PATH"])
    assert read_auth_config().auth_cache_ttl_seconds == 60


def test_a_bad_auth_cache_setting_is_one_clear_error(monkeypatch, tmp_path):
    from extractive_qa.core.errors import SetupError
    from extractive_qa.server import prepare

    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "a-long-password")
    monkeypatch.setenv("EQA_AUTH_CACHE_SECONDS", "1m")
    with pytest.raises(SetupError, match="EQA_AUTH_CACHE_SECONDS=1m: a whole number of seconds"):
        prepare(tmp_path, 5433)
    assert not (tmp_path / "postgres").exists()  # refused before anything started


def test_without_permission_on_an_experiment_a_member_cannot_write(team_server):
    """New users may read every experiment (default_permission READ) and write none but their own."""
    admin = ("admin", team.ADMIN_PASSWORD)
    assert _request(team_server, "/api/2.0/mlflow/users/create",
                    {"username": "bob", "password": "bob-password-123"}, user=admin) == 200
    experiment = admin_client(team_server).create_experiment("admins-only")
    bob = ("bob", "bob-password-123")
    assert _request(team_server, f"/api/2.0/mlflow/experiments/get?experiment_id={experiment}", user=bob) == 200
    assert _request(team_server, "/api/2.0/mlflow/runs/create", {"experiment_id": experiment}, user=bob) == 403
    assert _request(team_server, "/api/2.0/mlflow/runs/create", {"experiment_id": experiment}, user=admin) == 200


def test_jobs_at_once_log_every_step_once(team_server, synthetic, tmp_path):
    """Several processes writing to the team server at once (joblib): 3 here, EQA_TEAM_JOBS=8 for the load of
    issue 30 (each job is a fresh interpreter, ~6.8 CPU-s of it importing and training: on 2 cores eight took
    69-84 s, four 42 s)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    n = int(os.environ.get("EQA_TEAM_JOBS", "3"))
    run_module("extractive_qa.train", "-m", "launcher=joblib", f"hydra.launcher.n_jobs={n}", f"seed=range(1,{n + 1})",
               *tiny(synthetic, tmp_path, team.uri(team_server), "at-once"), "max_steps=6", "eval_steps=3",
               f"hydra.sweep.dir={tmp_path}/sweep", env=team.credentials())
    client = admin_client(team_server)
    runs = client.search_runs([client.get_experiment_by_name("at-once").experiment_id], max_results=100)
    jobs = [r for r in runs if "sweep.values" in r.data.tags and "sweep.configuration" not in r.data.tags]
    assert len(jobs) == n and {r.info.status for r in jobs} == {"FINISHED"}
    for run in jobs:
        for key, steps in (("train/loss", list(range(1, 7))), ("dev/em", [3, 6])):
            logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert logged == steps, (run.info.run_name, key, logged)  # every step arrived, and once


def test_the_server_killed_and_restarted_mid_run(team_server, synthetic, tmp_path):
    """The tracking server dies at step 4 and comes back at step 12 (from inside the run, at exact steps):
    training goes on, and every metric step arrives, once."""
    env = {**team.credentials(), **team.settings_env(team_server)}
    res = run_with_faults(["after:_maybe_log:4=call:helpers.team:kill",
                           "after:_maybe_log:12=call:helpers.team:restart"],
                          *tiny(synthetic, tmp_path, team.uri(team_server), "outage"), "epochs=3", "max_steps=16",
                          f"hydra.run.dir={tmp_path}/run", env=env, check=True)
    assert "unreachable" in res.stderr or "went down" in res.stderr or "queue" in (res.stderr + res.stdout)
    client = admin_client(team_server)
    (run,) = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == list(range(1, 17))


def test_one_search_from_two_processes_is_one_study(team_server, synthetic, tmp_path):
    """The same command on two "machines" (two processes) joins one Optuna study in PostgreSQL: n_trials in all,
    no trial run twice, every trial's run under one MLflow parent."""
    import optuna

    from extractive_qa.tracking.optuna_sweeper import NOT_COUNTED

    storage = team_server["postgres"]["optuna"]
    study = f"shared-{int(time.time() * 1000)}"
    args = ["-m", "hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=4",
            f"hydra.sweeper.study_name={study}", "hydra.sweeper.sampler=random",
            *tiny(synthetic, tmp_path, team.uri(team_server), "search"), "max_steps=2"]
    # Two processes at once, each forked from the tests' warm interpreter (so they start with the same state: the
    # random generators included, which fresh machines would not share).
    machines = [start_module("extractive_qa.train", *args, f"hydra.sweep.dir={tmp_path}/machine{i}",
                             env=team.credentials()) for i in (1, 2)]
    results = [m.wait() for m in machines]
    assert [r.returncode for r in results] == [0, 0], [(r.stdout + r.stderr)[-2000:] for r in results]
    from extractive_qa.tracking.parents import sweep_dirs
    from extractive_qa.tracking.study import optuna_storage

    loaded = optuna.load_study(study_name=study, storage=optuna_storage(storage))
    counted = [t for t in loaded.trials if NOT_COUNTED not in t.user_attrs]
    assert len(counted) == 4 and {t.state for t in counted} == {optuna.trial.TrialState.COMPLETE}
    assert len({t.number for t in counted}) == 4
    # ... and no configuration twice: processes sharing one seed used to propose the same parameters
    assert len({json.dumps(t.params, sort_keys=True) for t in counted}) == 4, [t.params for t in counted]
    ran_by = {t.user_attrs["process"]["pid"] for t in counted}
    client = admin_client(team_server)
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    assert len(parents) == 1, [p.info.run_id for p in parents]
    jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(jobs) == 4 and {r.info.status for r in jobs} == {"FINISHED"}
    assert sorted(sweep_dirs(parents[0])) == [f"{tmp_path}/machine1", f"{tmp_path}/machine2"] and len(ran_by) >= 1
