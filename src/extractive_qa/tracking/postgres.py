"""A PostgreSQL server of the project's own: a cluster in a folder -- the backend store of a team's MLflow server
(``make server``) and of shared Optuna studies, and what the tests start.

Least privilege, because a PostgreSQL superuser can run OS commands (``COPY ... TO PROGRAM``) and read server files:

* the cluster's superuser is its OS owner (``postgres`` when run as root: PostgreSQL refuses to run as root), with
  no password at all: it signs in only through the cluster's own socket, by peer authentication (the OS says who
  connects), and is used only to set the cluster up;
* MLflow signs in as ``eqa_mlflow``, which owns the databases ``mlflow`` and ``mlflow_auth`` and nothing else;
  shared Optuna studies use ``eqa_optuna``, which owns ``optuna``. Neither is a superuser, creates databases or roles,
  or may connect to the other's databases;
* their passwords are made here, once, and given to libpq in password files (mode 0600): ``<folder>/pgpass`` for the
  MLflow server, ``<folder>/optuna.pgpass`` for the team's members (``~/.pgpass`` on their machines). No URL this
  module hands out holds a password, and nothing puts one on a command line;
* ``pg_hba.conf`` is written whole at every start: MLflow's role from 127.0.0.1 only; Optuna's from 127.0.0.1 and
  from the networks the admin allows (``allow``), over TLS when a certificate is given; everything else refused.

The server binaries are PostgreSQL's own (Debian's ``postgresql`` package: ``initdb``, ``pg_ctl`` and ``psql`` under
``/usr/lib/postgresql/<version>/bin``); ``make postgres`` installs them.
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from ..core.errors import SetupError
from ..core.secrets import pgpass_line, write_private

INSTALL_HINT = "install PostgreSQL's server: `make postgres` (Debian: apt-get install postgresql), then run again"
MLFLOW_ROLE, OPTUNA_ROLE = "eqa_mlflow", "eqa_optuna"
DATABASES = {"mlflow": MLFLOW_ROLE, "mlflow_auth": MLFLOW_ROLE, "optuna": OPTUNA_ROLE}  # database -> owning role
OLD_SUPERUSER = "eqa"  # clusters made before roles were split signed MLflow in as this superuser


def server_bin() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else the newest under /usr/lib/postgresql."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if versions:
        return versions[-1].parent
    raise SetupError(f"no PostgreSQL server here (no initdb on PATH or under /usr/lib/postgresql): {INSTALL_HINT}")


def available() -> bool:
    try:
        server_bin()
    except SetupError:
        return False
    return os.geteuid() != 0 or shutil.which("runuser") is not None


def listen_addresses(host: str) -> str:
    """PostgreSQL's ``listen_addresses`` for a server reachable at ``host`` (MLflow's ``--host``): always 127.0.0.1
    (MLflow's own connection), plus that address -- every interface for ``0.0.0.0`` / ``::``."""
    if host in ("0.0.0.0", "::", "*"):
        return "*"
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    return f"127.0.0.1,{host}"


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class LocalPostgres:
    """A cluster in ``folder`` (created on first start) on ``port``; see the module docstring for who may sign in.

    ``host``: where other machines reach it (MLflow's ``--host``); ``allow``: the networks (CIDRs) whose machines may
    open Optuna studies; ``tls``: ``(certificate, key)`` files -- then those connections must use TLS."""

    def __init__(self, folder: Path, port: int, host: str = "127.0.0.1", allow: tuple[str, ...] = (),
                 tls: tuple[Path, Path] | None = None):
        self.folder, self.port, self.host = Path(folder).resolve(), int(port), host
        self.allow = tuple(str(ipaddress.ip_network(c, strict=False)) for c in allow)
        self.tls = tls
        self.data, self.log = self.folder / "pgdata", self.folder / "postgres.log"
        self.bin = server_bin()
        self.owner = "postgres" if os.geteuid() == 0 else getpass.getuser()  # the superuser, by peer auth only

    # -- running PostgreSQL's commands as its owner
    def _as_owner(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", self.owner, "--", *command] if os.geteuid() == 0 else command

    def _run(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        out = subprocess.run(self._as_owner([str(self.bin / args[0]), *args[1:]]), capture_output=True, text=True,
                             timeout=120, input=stdin)
        if check and out.returncode != 0:
            raise SetupError(f"PostgreSQL: {' '.join(args[:2])} failed ({out.returncode}): "
                             f"{(out.stderr or out.stdout).strip()[-800:]} (log: {self.log})")
        return out

    def psql(self, sql: str, database: str = "postgres", user: str | None = None) -> str:
        """``sql`` run by the superuser (or ``user``, trusted on an old cluster) over the cluster's socket; the text
        goes through stdin, so a password in it is on no command line. What it printed (tuples only)."""
        return self._run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.data), "-p",
                         str(self.port), "-U", user or self.owner, "-d", database, "-f", "-", stdin=sql).stdout

    # -- the cluster's life
    def init(self) -> None:
        if (self.data / "PG_VERSION").is_file():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, self.owner, self.owner)
        self._run("initdb", "-D", str(self.data), "-U", self.owner, "--auth-local=peer", "--auth-host=reject",
                  "--encoding=UTF8", "--locale=C")
        self._write_hba()  # ours from the start (an old cluster is told by its hba: _old_superuser_cluster)

    def start(self) -> LocalPostgres:
        """Start the cluster (made on first use) with this object's network settings, its roles and databases in
        place, and the password files written."""
        self.init()
        old = self._old_superuser_cluster()
        if not old:
            self._write_hba()
        self._tls_files()
        if self.running():  # settings of a running cluster: reload what can be, or restart for addresses and TLS
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        options = f"-p {self.port} -k {self.data} -c listen_addresses={listen_addresses(self.host)}"
        if self.tls:
            options += " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")
        if old:
            self._adopt_old_cluster()
        self._make_roles_and_databases()
        return self

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def stop(self) -> None:
        if (self.data / "PG_VERSION").is_file():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    # -- who may sign in, from where
    def _write_hba(self) -> None:
        remote = "hostssl" if self.tls else "host"
        lines = ["# Written by extractive_qa.tracking.postgres at every start; edits here are replaced.",
                 f"local all {self.owner} peer",
                 f"host mlflow,mlflow_auth {MLFLOW_ROLE} 127.0.0.1/32 scram-sha-256",
                 f"host optuna {OPTUNA_ROLE} 127.0.0.1/32 scram-sha-256",
                 *(f"{remote} optuna {OPTUNA_ROLE} {cidr} scram-sha-256" for cidr in self.allow)]
        path = self.data / "pg_hba.conf"
        path.write_text("\n".join(lines) + "\n")
        if os.geteuid() == 0:
            shutil.chown(path, self.owner, self.owner)

    def _tls_files(self) -> None:
        if not self.tls:
            return
        for source, name in zip(self.tls, ("server.crt", "server.key"), strict=True):
            target = self.data / name
            shutil.copyfile(source, target)
            target.chmod(0o600)  # PostgreSQL refuses a key others can read
            if os.geteuid() == 0:
                shutil.chown(target, self.owner, self.owner)

    def _passwords(self) -> dict[str, str]:
        """Each application role's password: made once, kept in ``<folder>/roles.json`` (0600)."""
        path = self.folder / "roles.json"
        known = json.loads(path.read_text()) if path.is_file() else {}
        if not all(known.get(r) for r in (MLFLOW_ROLE, OPTUNA_ROLE)):
            known = {r: known.get(r) or secrets.token_urlsafe(24) for r in (MLFLOW_ROLE, OPTUNA_ROLE)}
            write_private(path, json.dumps(known))
        return known

    def _make_roles_and_databases(self) -> None:
        passwords = self._passwords()
        # Kept out of the server's log whatever its settings: the statements carry the passwords (through stdin).
        sql = ["SET log_statement = 'none';", "SET log_min_duration_statement = -1;"]
        for role in (MLFLOW_ROLE, OPTUNA_ROLE):
            sql.append(f"SELECT 'CREATE ROLE {role}' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
                       f"'{role}')\\gexec")
            sql.append(f"ALTER ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
                       f"PASSWORD {_sql_literal(passwords[role])};")
        for database, role in DATABASES.items():
            sql.append(f"SELECT 'CREATE DATABASE {database} OWNER {role}' WHERE NOT EXISTS (SELECT 1 FROM pg_database "
                       f"WHERE datname = '{database}')\\gexec")
            sql.append(f"ALTER DATABASE {database} OWNER TO {role};")
            sql.append(f"REVOKE ALL ON DATABASE {database} FROM PUBLIC;")
        self.psql("\n".join(sql) + "\n")
        self._write_password_files(passwords)

    def _write_password_files(self, passwords: dict[str, str]) -> None:
        server = "".join(pgpass_line("127.0.0.1", self.port, db, role, passwords[role])
                         for db, role in DATABASES.items())
        write_private(self.password_file, server)
        write_private(self.member_password_file, pgpass_line("*", self.port, "optuna", OPTUNA_ROLE,
                                                               passwords[OPTUNA_ROLE]))

    @property
    def password_file(self) -> Path:
        """libpq's password file for the MLflow server and this machine's searches (``PGPASSFILE``)."""
        return self.folder / "pgpass"

    @property
    def member_password_file(self) -> Path:
        """The line a member puts into ``~/.pgpass`` (mode 0600) to join Optuna studies: any host, this port."""
        return self.folder / "optuna.pgpass"

    # -- clusters from before the roles were split
    def _old_superuser_cluster(self) -> bool:
        """A cluster made by an earlier version: its superuser ``eqa`` signed MLflow in over TCP, trusted on the
        socket. Left as it is until it has been started and adopted (:meth:`_adopt_old_cluster`)."""
        hba = self.data / "pg_hba.conf"
        return not (self.folder / "roles.json").is_file() and hba.is_file() and "extractive_qa" not in hba.read_text()

    def _adopt_old_cluster(self) -> None:
        """Give an old cluster this module's roles: its OS owner becomes the superuser (peer), the databases and
        everything in them pass to the application roles, and ``eqa`` loses its superuser and its login."""
        self.psql(f"SELECT 'CREATE ROLE {self.owner} SUPERUSER LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE "
                  f"rolname = '{self.owner}')\\gexec\n", user=OLD_SUPERUSER)
        self._write_hba()
        self._run("pg_ctl", "-D", str(self.data), "reload")
        self._make_roles_and_databases()
        for database, role in DATABASES.items():
            self.psql(f"REASSIGN OWNED BY {OLD_SUPERUSER} TO {role};\n", database=database)
        self.psql(f"ALTER ROLE {OLD_SUPERUSER} NOSUPERUSER NOLOGIN PASSWORD NULL;\n")

    # -- what clients are given
    def url(self, database: str, driver: str = "postgresql+psycopg", host: str = "127.0.0.1") -> str:
        """The SQLAlchemy / libpq URL of ``database`` as its owning role: no password in it (libpq reads the password
        file: ``PGPASSFILE=<folder>/pgpass``, or a member's ``~/.pgpass``)."""
        return f"{driver}://{DATABASES[database]}@{host}:{self.port}/{database}"

    def client_env(self) -> dict[str, str]:
        """What a process on this machine needs to sign in as the application roles."""
        return {"PGPASSFILE": str(self.password_file)}

    def wait_ready(self, deadline_s: float = 60) -> None:
        import psycopg

        end = time.monotonic() + deadline_s
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={self.port} dbname=optuna user={OPTUNA_ROLE} "
                                     f"passfile={self.password_file}", connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)
