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


def test_the_dashboard_opens_on_an_empty_study_list_from_the_first_start(team_server):
    """Optuna's schema is made when the server first starts (before any search): optuna-dashboard -- which opens a
    storage without creating tables -- lists no studies instead of failing on a missing ``version_info`` table.
    (First in this module: the searches below add studies.)"""
    from io import BytesIO
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi
    from optuna_dashboard._storage_url import get_storage

    url = team_server["postgres"]["optuna"].replace("postgresql://", "postgresql+psycopg://")
    app = wsgi(get_storage(f"{url}?passfile={team_server['env']['PGPASSFILE']}"))
    environ = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET", "wsgi.input": BytesIO()}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), body[:500]
    assert json.loads(body)["study_summaries"] == []


def test_a_taken_port_is_one_line_and_a_failed_exit(tmp_path):
    """`make server` where `make ui` (or anything) holds the port: one line naming the port and how to pick another,
    exit 2, nothing started -- not "[Errno 98]" from uvicorn and status 0."""
    import socket

    from helpers import run_module

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        res = run_module("extractive_qa.server", "--home", str(tmp_path / "home"), "--port", str(port),
                         env={"MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-enough-password"}, check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (f"error: port {port} on 127.0.0.1 is taken (another `make server` or `make ui`?). "
                                  "Fix: pick another with --port (make server ARGS=\"--port 5001\"), or stop what "
                                  "holds it")
    assert not (tmp_path / "home").exists()


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
    """Processes writing to the team server at once (joblib): 2 here -- one per core, so both write while the other
    does -- EQA_TEAM_JOBS=8 for the load of issue 30 (each job is a fresh interpreter, ~6.8 CPU-s of it importing and
    training: on 2 cores eight took 69-84 s, four 42 s)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    n = int(os.environ.get("EQA_TEAM_JOBS", "2"))
    run_module("extractive_qa.train", "-m", "launcher=joblib", f"hydra.launcher.n_jobs={n}", f"seed=range(1,{n + 1})",
               *tiny(synthetic, tmp_path, team.uri(team_server), "at-once"), "max_steps=6", "eval_steps=3",
               f"hydra.sweep.dir={tmp_path}/sweep", env=team.credentials())
    client = admin_client(team_server)
    runs = client.search_runs([client.get_experiment_by_name("at-once").experiment_id], max_results=100)
    jobs = [r for r in runs if "sweep.values" in r.data.tags and "sweep.configuration" not in r.data.tags]
    assert len(jobs) == n and {r.info.status for r in jobs} == {"FINISHED"}
    assert {(r.data.tags.get("mlflow.user"), r.info.user_id) for r in jobs} == {("admin", "admin")}  # "Created by"
    for run in jobs:
        for key, steps in (("train/loss", list(range(1, 7))), ("dev/em", [3, 6])):
            logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert logged == steps, (run.info.run_name, key, logged)  # every step arrived, and once


def test_the_server_killed_and_restarted_mid_run(team_server, synthetic, tmp_path):
    """The tracking server dies at step 4 and comes back at step 12 (from inside the run, at exact steps):
    training goes on, the outage is said once and its end once, with no traceback, and every metric step arrives,
    once. (The same outage of a plain `mlflow server` goes through the same tracker: this is the case that has
    logins and PostgreSQL behind it too.)"""
    env = {**team.credentials(), **team.settings_env(team_server)}
    res = run_with_faults(["after:_maybe_log:4=call:helpers.team:kill",
                           "after:_maybe_log:12=call:helpers.team:restart"],
                          *tiny(synthetic, tmp_path, team.uri(team_server), "outage"), "epochs=3", "max_steps=16",
                          f"hydra.run.dir={tmp_path}/run", env=env, check=True)
    log = res.stdout + res.stderr
    assert log.count("does not answer") == 1 and "answers again" in log and "Traceback" not in log, log[-3000:]
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
                             env=team.member_env(team_server)) for i in (1, 2)]
    results = [m.wait() for m in machines]
    assert [r.returncode for r in results] == [0, 0], [(r.stdout + r.stderr)[-2000:] for r in results]
    from extractive_qa.tracking.parents import sweep_dirs
    from extractive_qa.tracking.study import optuna_storage

    loaded = optuna.load_study(study_name=study, storage=optuna_storage(
        f"{storage}?passfile={team_server['postgres']['member_pgpass']}"))
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


def _files_holding(root: Path, secrets_: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {s[:4]}..." for s in secrets_ if s.encode() in data]
    return found


def test_a_team_search_records_no_password_anywhere(team_server, synthetic, tmp_path):
    """The hostile case of issue 40: the database password typed into the search's URL (the README says ~/.pgpass).
    It reaches Optuna through a private password file and nothing else: not the console, the MLflow tags (command,
    sweep.command, the note), params, artifacts (config_resolved.yaml, run.json, .hydra/*.yaml), sweep.json,
    optimization_results.yaml; and no process of the server -- PostgreSQL, MLflow, its workers -- holds a database or
    admin password on its command line (/proc/PID/cmdline, which every local user can read)."""
    from urllib.parse import quote

    pgpass = Path(team_server["postgres"]["member_pgpass"]).read_text().strip()
    password = pgpass.rsplit(":", 1)[1]
    roles = json.loads((Path(team_server["postgres"]["folder"]) / "roles.json").read_text())
    storage = team_server["postgres"]["optuna"].replace("eqa_optuna@", f"eqa_optuna:{quote(password, safe='')}@")
    res = run_module("extractive_qa.train", "-m", "hparams_search=optuna", f"hydra.sweeper.storage={storage}",
                     "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=leak", "hydra.sweeper.sampler=random",
                     *tiny(synthetic, tmp_path, team.uri(team_server), "leak"), "max_steps=2",
                     f"hydra.sweep.dir={tmp_path}/sweep", env=team.credentials())  # no PGPASSFILE: the URL's password
    secrets_ = [password, quote(password, safe=""), *roles.values(), team.ADMIN_PASSWORD]
    assert not [s for s in secrets_ if s in res.stdout + res.stderr]
    assert "eqa_optuna:***@" in res.stdout + res.stderr or "eqa_optuna@" in res.stdout + res.stderr
    assert not _files_holding(tmp_path, secrets_)
    client = admin_client(team_server)
    runs = client.search_runs([client.get_experiment_by_name("leak").experiment_id], max_results=100)
    assert len(runs) >= 3  # the parent and two trials
    for run in runs:
        recorded = json.dumps({"tags": run.data.tags, "params": run.data.params})
        assert not [s for s in secrets_ if s in recorded], run.info.run_name
        folder = tmp_path / "artifacts" / run.info.run_id
        folder.mkdir(parents=True)
        client.download_artifacts(run.info.run_id, "", str(folder))
    assert list((tmp_path / "artifacts").rglob("config_resolved.yaml"))  # the artifacts were read
    assert not _files_holding(tmp_path / "artifacts", secrets_)
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        assert not [s for s in secrets_ if s in text], f"{cmdline}: {text[:200]}"


def test_each_role_owns_its_databases_and_nothing_more(team_server):
    """MLflow's role owns mlflow and mlflow_auth, Optuna's owns optuna; neither is a superuser (no COPY ... TO PROGRAM,
    no reading server files), neither reaches the other's databases, and the superuser has no way in over TCP."""
    import psycopg

    pg = team_server["postgres"]
    passfile = team_server["env"]["PGPASSFILE"]

    def connect(user: str, database: str):
        return psycopg.connect(f"host=127.0.0.1 port={pg['port']} user={user} dbname={database} passfile={passfile}",
                               connect_timeout=5, autocommit=True)

    for user, databases in (("eqa_mlflow", ("mlflow", "mlflow_auth")), ("eqa_optuna", ("optuna",))):
        for database in databases:
            with connect(user, database) as conn:
                owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                                     (database,)).fetchone()[0]
                assert owner == user
                flags = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = "
                                     "current_user").fetchone()
                assert flags == (False, False, False)
                assert not conn.execute(
                    "SELECT pg_has_role(current_user, 'pg_read_server_files', 'MEMBER') OR "
                    "pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER')").fetchone()[0]
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("COPY (SELECT 1) TO PROGRAM 'id > /tmp/eqa-pwned'")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("SELECT pg_read_file('postgresql.conf')")
    assert not Path("/tmp/eqa-pwned").exists()
    for user, database in (("eqa_optuna", "mlflow"), ("eqa_optuna", "mlflow_auth"), ("eqa_mlflow", "optuna"),
                           ("postgres", "postgres"), ("eqa", "postgres")):
        with pytest.raises(psycopg.OperationalError, match="pg_hba.conf|password authentication failed"):
            connect(user, database)
