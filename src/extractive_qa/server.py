"""``python -m extractive_qa.server`` (``make server``): a team's tracking server -- MLflow's own server with
PostgreSQL as its backend store, artifacts proxied (``--serve-artifacts``: members need no shared disk) and
MLflow's basic-auth app (users, passwords, per-experiment permissions).

Everything lives in one folder (``--home``, default ``.server/``): the PostgreSQL cluster (databases
``mlflow``, ``mlflow_auth`` and ``optuna`` for shared Optuna studies), the artifacts, the auth config. Secrets
come from the environment and are never written into a config a run logs:

* ``MLFLOW_AUTH_ADMIN_PASSWORD`` -- the ``admin`` user's password, set at the first start (MLflow 3.17 has no
  default admin password; older versions' ``admin``/``password1234`` is never created). Required.
* ``EQA_POSTGRES_PASSWORD`` -- the database user's password. Required.
* ``MLFLOW_FLASK_SERVER_SECRET_KEY`` -- signs the UI's sessions; made once and kept in ``<home>/secret_key``
  (mode 0600) when not set.
* ``EQA_DEFAULT_PERMISSION`` -- what a new user may do on experiments they did not create: ``READ``
  (MLflow's default), ``EDIT``, ``MANAGE`` or ``NO_PERMISSIONS``.
* ``EQA_AUTH_CACHE_SECONDS`` -- how long a server worker trusts a password it has checked (MLflow's
  ``auth_cache_ttl_seconds``; default 60, 0 checks every request). See :func:`auth_config`.

It listens on 127.0.0.1 unless ``--host 0.0.0.0`` says otherwise. Members set ``MLFLOW_TRACKING_URI`` to it
and ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` in their environment (README, "Teams and
clusters"). ``--print-urls`` prints the store URLs (with the database password) for optuna-dashboard and
``hydra.sweeper.storage``, and starts nothing else.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from .core.config import project_root
from .core.errors import SetupError
from .tracking.mlflow_server import auth_config, server_env
from .tracking.postgres import LocalPostgres

PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


def _secret_key(home: Path) -> str:
    if os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    path = home / "secret_key"
    if not path.is_file():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def server_command(postgres: LocalPostgres, home: Path, host: str, port: int, workers: int) -> list[str]:
    return [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
            "--backend-store-uri", postgres.url("mlflow"), "--serve-artifacts",
            "--artifacts-destination", str(home / "artifacts"), "--host", host, "--port", str(port),
            "--workers", str(workers)]


def prepare(home: Path, pg_port: int) -> tuple[LocalPostgres, dict]:
    """Start PostgreSQL, make the databases, write the auth config; the MLflow server's environment."""
    if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise SetupError("set MLFLOW_AUTH_ADMIN_PASSWORD (the admin user's password, used at the first start)")
    permission = os.environ.get("EQA_DEFAULT_PERMISSION", "READ")
    if permission not in PERMISSIONS:
        raise SetupError(f"EQA_DEFAULT_PERMISSION={permission}: one of {', '.join(PERMISSIONS)}")
    cache = os.environ.get("EQA_AUTH_CACHE_SECONDS", "60")
    if not cache.isdigit():
        raise SetupError(f"EQA_AUTH_CACHE_SECONDS={cache}: a whole number of seconds (0: check every request)")
    home.mkdir(parents=True, exist_ok=True)
    postgres = LocalPostgres(home / "postgres", pg_port).start()
    postgres.wait_ready()
    for name in ("mlflow", "mlflow_auth", "optuna"):
        postgres.create_database(name)
    auth = auth_config(home, postgres.url("mlflow_auth"), permission, int(cache))
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(auth), "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret_key(home),
           **server_env()}
    return postgres, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extractive_qa.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=project_root() / ".server")
    parser.add_argument("--host", default="127.0.0.1", help="where it listens (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--postgres-port", type=int, default=5433)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--print-urls", action="store_true", help="print the PostgreSQL URLs and stop")
    args = parser.parse_args(argv)
    try:
        postgres, env = prepare(args.home.resolve(), args.postgres_port)
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_urls:
        print(f"optuna: {postgres.url('optuna', 'postgresql')}\nmlflow backend: {postgres.url('mlflow')}")
        return 0
    print(f"MLflow server on http://{args.host}:{args.port} (PostgreSQL on 127.0.0.1:{args.postgres_port}, "
          f"artifacts in {args.home / 'artifacts'}); Ctrl-C stops both", flush=True)
    server = subprocess.Popen(server_command(postgres, args.home.resolve(), args.host, args.port, args.workers),
                              env=env, start_new_session=True)

    def stop(signum, frame):  # SIGTERM (a service manager, kill) stops both, as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        postgres.stop()


if __name__ == "__main__":
    sys.exit(main())
