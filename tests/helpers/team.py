"""A team's tracking server for tests, made of the real parts: PostgreSQL (the project's LocalPostgres, from
Debian's server binaries) and ``mlflow server --app-name basic-auth`` on 127.0.0.1, started the way ``make
server`` starts them (extractive_qa.server.prepare). Waits are on conditions (/health answering, the pid gone);
deadlines only turn a hang into a failure."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from helpers.mlflow_server import free_port, kill_server, launch_server

ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)  # MLflow asks for 12 characters or more


ENV = "TEST_TEAM_SERVER"  # the server's settings, for a fault_runner `call:helpers.team:kill` in a training process


def start(home: Path | None = None) -> dict:
    """PostgreSQL and an auth-enabled MLflow server; what a test needs to reach and restart them."""
    from extractive_qa.server import prepare, server_command
    from extractive_qa.tracking.mlflow_server import server_env

    home = Path(home or tempfile.mkdtemp(prefix="eqa-team-"))  # /tmp: reachable by the postgres user when root
    home.chmod(0o755)
    os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    postgres, env = prepare(home, free_port())
    port = free_port()
    team = {"home": str(home), "port": port, "pidfile": str(home / "mlflow.pid"),
            "command": server_command(home, "127.0.0.1", port, 2),
            "env": {k: env[k] for k in ("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_FLASK_SERVER_SECRET_KEY",
                                        "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_BACKEND_STORE_URI", "PGPASSFILE",
                                        *server_env())},
            "postgres": {"folder": str(postgres.folder), "port": postgres.port,
                         "optuna": postgres.url("optuna", "postgresql"),
                         "member_pgpass": str(postgres.member_password_file)}}
    launch(team)
    return team


def launch(team: dict) -> None:
    launch_server(team["command"], port=team["port"], log=Path(team["home"]) / "mlflow.log",
                  pidfile=Path(team["pidfile"]), env=team["env"])


def kill(team: dict | None = None) -> None:
    """The MLflow server dies (kill -9 of its process group); PostgreSQL stays. Waits until its port is free."""
    import json

    team = team or json.loads(os.environ[ENV])
    kill_server(Path(team["pidfile"]), team["port"])


def restart(team: dict | None = None) -> None:
    import json

    launch(team or json.loads(os.environ[ENV]))


def settings_env(team: dict) -> dict:
    import json

    return {ENV: json.dumps(team)}


def stop(team: dict) -> None:
    from extractive_qa.tracking.postgres import LocalPostgres

    kill(team)
    pg = team["postgres"]
    LocalPostgres(Path(pg["folder"]), pg["port"]).stop()
    import shutil

    shutil.rmtree(team["home"], ignore_errors=True)


def uri(team: dict) -> str:
    return f"http://127.0.0.1:{team['port']}"


def credentials(user: str = "admin", password: str | None = None) -> dict:
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password or ADMIN_PASSWORD}


def member_env(team: dict, user: str = "admin", password: str | None = None) -> dict:
    """A member's environment: MLflow credentials, and libpq's password file with the line `make server` hands out
    for Optuna studies (``optuna.pgpass``, as a member's ``~/.pgpass``)."""
    return {**credentials(user, password), "PGPASSFILE": team["postgres"]["member_pgpass"]}


def stop_postgres() -> None:
    """A test's own PostgreSQL stops (for a fault_runner ``call:helpers.team:stop_postgres``: ``TEST_POSTGRES``)."""
    import json

    from extractive_qa.tracking.postgres import LocalPostgres

    settings = json.loads(os.environ["TEST_POSTGRES"])
    LocalPostgres(Path(settings["folder"]), settings["port"]).stop()
