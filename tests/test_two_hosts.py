"""One search across two machines, for real: ``make server`` in one network namespace, a member on the other end of a
veth pair (a /30 of its own: the traffic stays between them) running an Optuna search against it, each trial a training
run logged there -- MLflow over https, PostgreSQL over TLS with scram-sha-256, the member's password from their
password file. Skipped, with the reason, where namespaces cannot be made (not root, no iproute2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from helpers import ROOT, netns
from helpers.team import ADMIN_PASSWORD

REASON = netns.why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"two hosts need network namespaces: {REASON}")

MEMBER, MEMBER_PASSWORD = "alice", "alice-password-1234"


def _in(hosts: netns.Hosts, ns: str, code: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Python ``code`` run in namespace ``ns`` (a fresh interpreter: a forked one cannot change its namespace)."""
    return subprocess.run(hosts.argv(ns, [sys.executable, "-c", textwrap.dedent(code)]), capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)




def test_a_search_and_a_run_from_another_machine(synthetic, tmp_path):
    from helpers.mlflow_server import free_port

    home = Path(tempfile.mkdtemp(prefix="eqa-twohosts-"))  # /tmp: the postgres user reaches it
    home.chmod(0o755)
    port, pg_port = free_port(), free_port()
    with netns.two_hosts() as hosts:
        cert, key = netns.self_signed_certificate(home, hosts.server_ip)
        server_env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "PYTHONUNBUFFERED": "1"}
        log = open(home / "server.log", "w")
        server = subprocess.Popen(hosts.argv(hosts.server_ns, [
            sys.executable, "-m", "extractive_qa.server", "--home", str(home), "--host", hosts.server_ip,
            "--port", str(port), "--postgres-port", str(pg_port), "--allow", f"{hosts.client_ip}/32", "--workers", "2",
            "--tls-cert", str(cert), "--tls-key", str(key)]), env=server_env, stdout=log, stderr=log, cwd=ROOT,
            start_new_session=True)
        try:
            _member_side(hosts, home, cert, port, pg_port, synthetic, tmp_path)
        finally:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
            log.close()
            print((home / "server.log").read_text()[-3000:])
            shutil.rmtree(home, ignore_errors=True)


def _member_side(hosts, home: Path, cert: Path, port: int, pg_port: int, synthetic, tmp_path: Path) -> None:
    base = f"https://{hosts.server_ip}:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_SERVER_CERT_PATH": str(cert), "PYTHONUNBUFFERED": "1"}
    # The member's side waits for the server (a condition; the deadline only turns a hang into a failure), then the
    # admin makes the member's account.
    joined = _in(hosts, hosts.client_ns, f"""
        import base64, json, ssl, time, urllib.request
        context = ssl.create_default_context(cafile={str(cert)!r})
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen({base + '/health'!r}, context=context, timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server never answered across the pair"
                time.sleep(0.5)
        auth = base64.b64encode({('admin:' + ADMIN_PASSWORD)!r}.encode()).decode()
        body = json.dumps({{"username": {MEMBER!r}, "password": {MEMBER_PASSWORD!r}}}).encode()
        headers = {{"Authorization": "Basic " + auth, "Content-Type": "application/json"}}
        request = urllib.request.Request({base + '/api/2.0/mlflow/users/create'!r}, data=body, method="POST",
                                         headers=headers)
        print(urllib.request.urlopen(request, context=context, timeout=30).status)
        """, env)
    assert joined.returncode == 0 and joined.stdout.strip() == "200", joined.stderr[-3000:]
    pgpass = tmp_path / "member.pgpass"  # what the admin hands out, as the member's ~/.pgpass
    shutil.copyfile(home / "postgres" / "optuna.pgpass", pgpass)
    pgpass.chmod(0o600)
    member = {**env, "MLFLOW_TRACKING_URI": base, "MLFLOW_TRACKING_USERNAME": MEMBER,
              "MLFLOW_TRACKING_PASSWORD": MEMBER_PASSWORD, "PGPASSFILE": str(pgpass), "PGSSLMODE": "verify-full",
              "PGSSLROOTCERT": str(cert)}
    common = [f"paths.output_dir={tmp_path}/outputs", f"paths.cache_dir={tmp_path}/cache", "model=tiny",
              f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}", "data.limit_train=32",
              "data.limit_dev=8", "predict_test=false", "epochs=1", "max_steps=2", "batch_size=16",
              "experiment_name=two-hosts", "tracking.system_metrics=false"]
    storage = f"postgresql://eqa_optuna@{hosts.server_ip}:{pg_port}/optuna"
    search = subprocess.run(hosts.argv(hosts.client_ns, [
        sys.executable, "-m", "extractive_qa.train", "-m", "hparams_search=optuna", f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=across", "hydra.sweeper.sampler=random", *common,
        f"hydra.sweep.dir={tmp_path}/sweep"]), capture_output=True, text=True, env=member, cwd=ROOT, timeout=600)
    assert search.returncode == 0, (search.stdout + search.stderr)[-4000:]
    # Read back from the member's machine: the study and the runs, and what the server refuses from there.
    seen = _in(hosts, hosts.client_ns, f"""
        import json, optuna, psycopg
        from mlflow.tracking import MlflowClient
        from extractive_qa.tracking.study import optuna_storage
        study = optuna.load_study(study_name="across", storage=optuna_storage({storage!r}))
        client = MlflowClient()
        runs = client.search_runs([client.get_experiment_by_name("two-hosts").experiment_id], max_results=100)
        refused = {{}}
        for user, db in (("eqa_mlflow", "mlflow"), ("eqa_optuna", "mlflow")):
            try:
                psycopg.connect(host={hosts.server_ip!r}, port={pg_port}, user=user, dbname=db,
                                connect_timeout=5).close()
                refused[user + "@" + db] = False
            except psycopg.OperationalError as err:
                refused[user + "@" + db] = "pg_hba.conf" in str(err)
        print(json.dumps({{"trials": [t.state.name for t in study.trials],
                           "runs": sorted((r.info.status, r.data.tags.get("mlflow.user"), r.info.user_id)
                                          for r in runs if "sweep.parent" not in r.data.tags),
                           "refused": refused}}))
        """, member)
    assert seen.returncode == 0, seen.stderr[-3000:]
    result = json.loads(seen.stdout.strip().splitlines()[-1])
    print("two hosts:", json.dumps(result))
    assert result["trials"] == ["COMPLETE", "COMPLETE"]
    assert result["runs"] == [["FINISHED", MEMBER, MEMBER]] * 2  # the two trials' training runs, made by the member
    assert result["refused"] == {"eqa_mlflow@mlflow": True, "eqa_optuna@mlflow": True}
