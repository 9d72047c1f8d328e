"""How the project starts MLflow's own server (``make server``, ``make ui``), where it departs from MLflow's
defaults and why: no GenAI job runner, and a credential cache in front of the basic-auth app's password hash.
``make bench ARGS="bench.parts=[server]"`` measures both (benchmarks/server.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

# MLflow 3.17's server also starts a GenAI job runner by default: a runner process and seven huey consumers for
# scorer, GenAI-evaluation, issue-detection and prompt-optimisation jobs and trace roll-ups -- none of which a
# training project logs. Off unless the environment turns it on: `mlflow server --workers 1` on this project's
# 2-core Xeon went from 10 processes, 1,802 MB PSS and 21.5 CPU-seconds (start to 20 s after it answered) to 2
# processes, 421 MB and 4.9 CPU-seconds (bench part server; README, "Teams and clusters"). `make ui` starts
# MLflow the same way.
JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def server_env() -> dict[str, str]:
    """What the project adds to MLflow's server environment: the job runner off unless the environment says."""
    return {JOB_EXECUTION: os.environ.get(JOB_EXECUTION, "false")}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refuse_taken_port(host: str, port: int, flag: str, example: str, unless_ours: Path | None = None) -> None:
    """One :class:`SetupError` line when something already listens on ``port`` (``make ui`` and ``make server`` both
    default to 5000): uvicorn would print ``[Errno 98]`` and MLflow end with status 0. ``unless_ours``: a cluster
    folder whose own server may hold the port (it is restarted, not refused)."""
    import errno

    from ..core.errors import SetupError

    if unless_ours is not None and (unless_ours / "postmaster.pid").is_file():
        return
    for address in dict.fromkeys([host if host not in ("0.0.0.0", "::") else "0.0.0.0", "127.0.0.1"]):
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
            try:
                probe.bind((address, port))
            except OSError as err:
                if err.errno != errno.EADDRINUSE:
                    raise
                raise SetupError(f"port {port} on {address} is taken (another `make server` or `make ui`?). "
                                 f"Fix: pick another with {flag} ({example}), or stop what holds it") from None


def exit_if_taken(host: str, port: int, flag: str, example: str) -> None:
    """:func:`refuse_taken_port` for a shell (``make ui``): the one line on stderr and exit status 2."""
    import sys

    from ..core.errors import SetupError

    try:
        refuse_taken_port(host, port, flag, example)
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def answers(port: int, host: str = "127.0.0.1", scheme: str = "http", verify: bool = True) -> bool:
    """Whether the MLflow server at ``host:port`` answers ``/health``."""
    import ssl

    context = None if verify or scheme != "https" else ssl._create_unverified_context()  # our own certificate
    address = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    try:
        with urllib.request.urlopen(f"{scheme}://{address}:{port}/health", timeout=2, context=context):
            return True
    except OSError:
        return False


def wait_until_answering(port: int, proc: subprocess.Popen, seconds: float, host: str = "127.0.0.1",
                         scheme: str = "http", verify: bool = True) -> None:
    """Return once the server ``proc`` started on ``host:port`` answers; RuntimeError if it exits first or
    ``seconds`` pass (the deadline only turns a hang into a failure)."""
    deadline = time.monotonic() + seconds
    while not answers(port, host, scheme, verify):
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}) before answering on port {port}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not answer on port {port} within {seconds:.0f} s")
        time.sleep(0.2)


def auth_config(home: Path, auth_db_url: str, default_permission: str, cache_seconds: int = 60) -> Path:
    """MLflow's basic-auth config: users and permissions in the database at ``auth_db_url`` (PostgreSQL for
    ``make server``); no admin password in the file (the environment gives it at the first start).

    ``cache_seconds``: MLflow checks the password of every request with a deliberately slow hash (0.27
    CPU-seconds a request on this project's 2-core Xeon), so a few jobs logging every step keep a core busy
    hashing; with MLflow's own credential cache each worker checks a password once per ``cache_seconds``
    (100 requests: 27.2 -> 0.8 server CPU-seconds, bench part server). The price, MLflow's: a password changed
    or a user deleted through one worker is forgotten at once there, and by the other workers within
    ``cache_seconds``."""
    path = home / "basic_auth.ini"
    path.write_text("[mlflow]\n"
                    f"default_permission = {default_permission}\n"
                    f"database_uri = {auth_db_url}\n"
                    "admin_username = admin\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                    f"auth_cache_ttl_seconds = {cache_seconds}\n")
    path.chmod(0o600)  # the database URL holds its password
    return path
