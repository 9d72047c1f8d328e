"""What a tracking server costs this machine, as ``make server`` and ``make ui`` start MLflow against MLflow's
defaults: (1) ``mlflow server --workers 1`` with its GenAI job runner on (MLflow's default) and off (ours) --
processes, proportional memory (PSS) and CPU-seconds from the start to ``settle_s`` after it first answers;
(2) MLflow's basic-auth app answering ``requests`` authenticated requests with its credential cache off (MLflow's
default: a slow password hash at every request) and at 60 s (ours) -- the server's CPU-seconds for them.
Both on sqlite, so no PostgreSQL is needed. ``make bench ARGS="bench.parts=[server]"`` (about a minute)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64encode
from pathlib import Path

ADMIN_PASSWORD = "bench-admin-password"


def _tree(pid: int) -> list:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _cpu(procs: list) -> float:
    import psutil

    total = 0.0
    for proc in procs:
        try:
            total += sum(proc.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


class _Server:
    """``mlflow server`` on a free port in its own process group; stopped (the whole group) on exit."""

    def __init__(self, folder: Path, env: dict, *extra: str) -> None:
        from ..tracking.mlflow_server import free_port

        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                   str(self.port), "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
                   "--artifacts-destination", str(folder / "artifacts"), "--workers", "1", *extra]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def get(self, path: str, auth: str | None = None) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                         headers={"Authorization": auth} if auth else {})
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
            return answer.status

    def wait_ready(self) -> float:
        """Seconds from the start until the server answers."""
        from ..tracking.mlflow_server import wait_until_answering

        wait_until_answering(self.port, self.proc, 180)
        return time.monotonic() - self.started

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def job_runner_cost(folder: Path, on: bool, settle_s: float) -> dict:
    with _Server(folder, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if on else "false"}) as server:
        ready = server.wait_ready()
        time.sleep(settle_s)
        procs = _tree(server.proc.pid)
        pss = sum(p.memory_full_info().pss for p in procs) / 2**20
        return {"job_execution": on, "processes": len(procs), "ready_s": round(ready, 1),
                "pss_mb": round(pss), "cpu_s": round(_cpu(procs), 1)}


def auth_cost(folder: Path, cache_seconds: int, requests: int) -> dict:
    from ..tracking.mlflow_server import auth_config

    folder.mkdir(parents=True)
    config = auth_config(folder, f"sqlite:///{folder}/auth.db", "READ", cache_seconds)
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "bench", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with _Server(folder, env, "--app-name", "basic-auth") as server:
        server.wait_ready()
        auth = "Basic " + b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
        server.get("/api/2.0/mlflow/experiments/search?max_results=1", auth)  # the admin exists, caches warm
        procs = _tree(server.proc.pid)
        before, started = _cpu(procs), time.monotonic()
        for _ in range(requests):
            server.get("/api/2.0/mlflow/experiments/search?max_results=1", auth)
        return {"auth_cache_ttl_seconds": cache_seconds, "requests": requests,
                "wall_s": round(time.monotonic() - started, 2), "server_cpu_s": round(_cpu(procs) - before, 2)}


def server_costs(cfg: dict) -> dict:
    settle, requests = float(cfg["bench"]["server_settle_s"]), int(cfg["bench"]["server_requests"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs = [job_runner_cost(tmp / f"jobs-{on}", on, settle) for on in (True, False)]
        auth = [auth_cost(tmp / f"auth-{ttl}", ttl, requests) for ttl in (0, 60)]
    return {"bench": "server", "job_runner": jobs, "auth": auth,
            "auth_cpu_per_request_s": {a["auth_cache_ttl_seconds"]: round(a["server_cpu_s"] / requests, 4)
                                       for a in auth}}
