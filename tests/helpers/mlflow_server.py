"""A real ``mlflow server`` on 127.0.0.1 for tests, which a fault can kill and start again mid-run.

The test starts it with :func:`start`; the server's settings travel to the training process in
``$TEST_MLFLOW_SERVER`` so that ``tests/helpers/fault_runner.py --fault after:...=call:helpers.mlflow_server:kill``
(or ``:restart``) acts on it at an exact step. Waiting is on conditions (the pid gone, /health
answering), never on a clock: the deadline only turns a hang into a failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from extractive_qa.tracking.mlflow_server import answers, free_port, server_env, wait_until_answering

ENV = "TEST_MLFLOW_SERVER"


def _mlflow() -> str:
    return str(Path(sys.executable).parent / "mlflow")


def start(tmp: Path, port: int | None = None) -> dict:
    """Start a server over ``tmp/server.db``; its settings (also for :func:`env`)."""
    settings = {"port": port or free_port(), "db": str(tmp / "server.db"), "artifacts": str(tmp / "server-artifacts"),
                "pidfile": str(tmp / "server.pid"), "log": str(tmp / "server.log")}
    _launch(settings)
    return settings


def launch_server(command: list[str], *, port: int, log: Path, pidfile: Path, env: dict | None = None,
                  cwd: Path | None = None, seconds: float = 180) -> None:
    """Start ``command`` (an ``mlflow server`` on 127.0.0.1:``port``) in its own process group, record its pid,
    and return once /health answers; a server that exits first fails with its log's tail."""
    with open(log, "a") as out:
        proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=out, stderr=out, cwd=cwd,
                                start_new_session=True)
    Path(pidfile).write_text(str(proc.pid))
    try:
        wait_until_answering(port, proc, seconds)
    except RuntimeError as err:
        raise RuntimeError(f"{err}; {log}:\n{Path(log).read_text()[-3000:]}") from None


def kill_server(pidfile: Path, port: int, seconds: float = 60) -> None:
    """Kill -9 the server's whole process group (gunicorn/uvicorn workers too) and wait until its port is
    free, so that it can be started again on it."""
    pid = int(Path(pidfile).read_text())
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + seconds
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("mlflow server did not stop")
        time.sleep(0.1)


def _launch(settings: dict) -> None:
    launch_server([_mlflow(), "server", "--host", "127.0.0.1", "--port", str(settings["port"]),
                   "--backend-store-uri", f"sqlite:///{settings['db']}",
                   "--artifacts-destination", settings["artifacts"], "--workers", "1"],
                  port=settings["port"], log=Path(settings["log"]), pidfile=Path(settings["pidfile"]),
                  cwd=Path(settings["db"]).parent, seconds=120,
                  env=server_env())  # as `make ui` and `make server` start MLflow


def uri(settings: dict) -> str:
    return f"http://127.0.0.1:{settings['port']}"


def env(settings: dict) -> dict:
    return {ENV: json.dumps(settings)}


def stop(settings: dict) -> None:
    """Kill the server (its whole process group: gunicorn/uvicorn workers too) and wait until it is gone."""
    kill_server(Path(settings["pidfile"]), settings["port"])


def kill() -> None:
    """Fault action: the tracking server dies."""
    stop(json.loads(os.environ[ENV]))


def ensure_running(settings: dict) -> dict:
    """The shared server, started again if a test before left it stopped."""
    if not answers(settings["port"]):
        _launch(settings)
    return settings


def relaunch(settings: dict) -> None:
    """Start a stopped server again: same port, same store."""
    _launch(settings)


def restart() -> None:
    """Fault action: the tracking server comes back (same port, same store)."""
    relaunch(json.loads(os.environ[ENV]))
