"""``python -m extractive_qa.server`` (``make server``): a team's tracking server -- MLflow's own server with
PostgreSQL as its backend store, artifacts proxied (``--serve-artifacts``: members need no shared disk) and
MLflow's basic-auth app (users, passwords, per-experiment permissions).

Everything lives in one folder (``--home``, default ``.server/``): the PostgreSQL cluster (databases ``mlflow``,
``mlflow_auth`` and ``optuna`` for shared Optuna studies, each owned by a role that is no superuser:
:mod:`extractive_qa.tracking.postgres`), the artifacts, the auth config. No secret is on a command line, in a log
or in a config a run records:

* ``MLFLOW_AUTH_ADMIN_PASSWORD`` -- the ``admin`` user's password, set at the first start (MLflow 3.17 has no
  default admin password; older versions' ``admin``/``password1234`` is never created). Required.
* the database roles' passwords are made at the first start and handed to libpq in password files (mode 0600):
  ``<home>/postgres/pgpass`` for the MLflow server, ``<home>/postgres/optuna.pgpass`` -- one line for a member's
  ``~/.pgpass`` -- for Optuna studies. MLflow gets its store's URL (without a password) in its environment.
* ``MLFLOW_FLASK_SERVER_SECRET_KEY`` -- signs the UI's sessions; made once and kept in ``<home>/secret_key``
  (mode 0600) when not set.
* ``EQA_DEFAULT_PERMISSION`` -- what a new user may do on experiments they did not create: ``READ``
  (MLflow's default), ``EDIT``, ``MANAGE`` or ``NO_PERMISSIONS``.
* ``EQA_AUTH_CACHE_SECONDS`` -- how long a server worker trusts a password it has checked (MLflow's
  ``auth_cache_ttl_seconds``; default 60, 0 checks every request). See :func:`auth_config`.

Where it listens: 127.0.0.1 unless ``--host`` says otherwise (``0.0.0.0``: every interface). Other machines reach
MLflow there; PostgreSQL (Optuna studies) only from the networks ``--allow`` names (CIDRs, scram-sha-256), over TLS
when ``--tls-cert`` / ``--tls-key`` are given (MLflow then serves https with the same pair). ``--print-urls`` prints
the Optuna URL for ``hydra.sweeper.storage`` and optuna-dashboard (no password in it) and the password file to hand
to members, and starts nothing else.
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
from .core.errors import SetupError, run_cli
from .tracking.mlflow_server import auth_config, refuse_taken_port, server_env, wait_until_answering
from .tracking.postgres import LocalPostgres

PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


def _secret_key(home: Path) -> str:
    if os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    path = home / "secret_key"
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def server_command(home: Path, host: str, port: int, workers: int) -> list[str]:
    """``mlflow server``'s command line: nothing secret on it (the store's URL is in the environment:
    :func:`prepare`)."""
    return [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth", "--serve-artifacts",
            "--artifacts-destination", str(home / "artifacts"), "--host", host, "--port", str(port),
            "--workers", str(workers)]


def _check_settings() -> tuple[str, int]:
    if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise SetupError("set MLFLOW_AUTH_ADMIN_PASSWORD (the admin user's password, used at the first start)")
    permission = os.environ.get("EQA_DEFAULT_PERMISSION", "READ")
    if permission not in PERMISSIONS:
        raise SetupError(f"EQA_DEFAULT_PERMISSION={permission}: one of {', '.join(PERMISSIONS)}")
    cache = os.environ.get("EQA_AUTH_CACHE_SECONDS", "60")
    if not cache.isdigit():
        raise SetupError(f"EQA_AUTH_CACHE_SECONDS={cache}: a whole number of seconds (0: check every request)")
    return permission, int(cache)


def create_optuna_schema(postgres: LocalPostgres) -> None:
    """Optuna's tables in ``optuna``, made by its role at the server's first start: optuna-dashboard then opens on an
    empty study list instead of failing on a missing ``version_info`` table until a first search."""
    from .tracking.study import optuna_storage

    optuna_storage(f"{postgres.url('optuna')}?passfile={postgres.password_file}")


def prepare(home: Path, pg_port: int, host: str = "127.0.0.1", allow: tuple[str, ...] = (),
            tls: tuple[Path, Path] | None = None) -> tuple[LocalPostgres, dict]:
    """Start PostgreSQL (roles, databases, Optuna's schema), write the auth config; the MLflow server's environment."""
    permission, cache = _check_settings()
    home.mkdir(parents=True, exist_ok=True)
    postgres = LocalPostgres(home / "postgres", pg_port, host=host, allow=allow, tls=tls).start()
    postgres.wait_ready()
    create_optuna_schema(postgres)
    auth = auth_config(home, postgres.url("mlflow_auth"), permission, cache)
    env = {**os.environ, **postgres.client_env(), "MLFLOW_AUTH_CONFIG_PATH": str(auth),
           "MLFLOW_BACKEND_STORE_URI": postgres.url("mlflow"), "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret_key(home),
           **server_env()}
    if tls:  # MLflow serves https with the same certificate (uvicorn's options, through MLflow's own variable)
        env["MLFLOW_UVICORN_OPTS"] = f"--ssl-certfile {tls[0]} --ssl-keyfile {tls[1]}"
    return postgres, env


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m extractive_qa.server`` (also read by the docs' test of every command)."""
    parser = argparse.ArgumentParser(prog="python -m extractive_qa.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=project_root() / ".server")
    parser.add_argument("--host", default="127.0.0.1", help="where it listens (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--postgres-port", type=int, default=5433)
    parser.add_argument("--allow", action="append", default=[], metavar="CIDR",
                        help="a network whose machines may join Optuna studies in PostgreSQL (e.g. 10.0.0.0/24; "
                             "repeatable); without it only this machine may")
    parser.add_argument("--tls-cert", type=Path, help="a certificate (PEM) for MLflow's https and PostgreSQL's TLS")
    parser.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--print-urls", action="store_true", help="print the Optuna URL and the password file for "
                        "members, and stop")
    return parser


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = arguments()
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    return args


def _address(args: argparse.Namespace) -> str:
    return "lab-box" if args.host in ("0.0.0.0", "::") else args.host


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    home, tls = args.home.resolve(), (args.tls_cert.resolve(), args.tls_key.resolve()) if args.tls_cert else None
    scheme = "https" if tls else "http"
    if not args.print_urls:  # a port taken is one line, before anything starts (make ui holds 5000 too)
        refuse_taken_port(args.host, args.port, "--port", "make server ARGS=\"--port 5001\"")
        refuse_taken_port(args.host, args.postgres_port, "--postgres-port",
                          "make server ARGS=\"--postgres-port 5434\"", unless_ours=home / "postgres" / "pgdata")
    postgres, env = prepare(home, args.postgres_port, args.host, tuple(args.allow), tls)
    optuna_url = postgres.url("optuna", "postgresql", _address(args))
    if tls:
        optuna_url += "?sslmode=verify-full&sslrootcert=/path/to/its/certificate.pem"
    print(f"Optuna studies: hydra.sweeper.storage={optuna_url}\n"
          f"  members sign in with the line in {postgres.member_password_file} (copy it into ~/.pgpass, mode 0600); "
          f"PostgreSQL takes them from {', '.join(['127.0.0.1', *postgres.allow])}", flush=True)
    if args.print_urls:
        postgres.stop()
        return 0
    print(f"MLflow server on {scheme}://{args.host}:{args.port} (PostgreSQL on port {args.postgres_port}, artifacts in "
          f"{home / 'artifacts'}); Ctrl-C stops both", flush=True)
    server = subprocess.Popen(server_command(home, args.host, args.port, args.workers), env=env,
                              start_new_session=True)

    def stop(signum, frame):  # SIGTERM (a service manager, kill) stops both, as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        wait_until_answering(args.port, server, 120, host=args.host, scheme=scheme, verify=False)
        code = server.wait()
        if code == 0:  # MLflow ends 0 even when its workers could not start: a server that stops by itself failed
            print("error: the MLflow server stopped by itself (its log is above)", file=sys.stderr)
        return code or 1
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        postgres.stop()


if __name__ == "__main__":
    run_cli(main)
