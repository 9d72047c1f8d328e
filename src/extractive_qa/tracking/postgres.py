"""A PostgreSQL server of the project's own: a cluster in a folder, started on 127.0.0.1 -- the backend store of a
team's MLflow server (``make server``) and of shared Optuna studies, and what the tests start.

The server binaries are PostgreSQL's own (Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl`` under
``/usr/lib/postgresql/<version>/bin``); ``make postgres`` installs them. PostgreSQL refuses to run as root, so
as root the cluster belongs to the ``postgres`` system user the package creates and its commands run as that
user. Connections from 127.0.0.1 need the password (SCRAM); the cluster's own socket is for its owner only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from ..core.errors import SetupError

INSTALL_HINT = "install PostgreSQL's server: `make postgres` (Debian: apt-get install postgresql), then run again"


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


class LocalPostgres:
    """A cluster in ``folder`` (created on first start), serving 127.0.0.1:``port``; the superuser ``user``
    signs in with ``password`` over TCP."""

    def __init__(self, folder: Path, port: int, user: str = "eqa", password: str | None = None):
        self.folder, self.port, self.user = Path(folder).resolve(), int(port), user
        self.password = password or os.environ.get("EQA_POSTGRES_PASSWORD") or ""
        if not self.password:
            raise SetupError("the PostgreSQL server needs a password for its user: set EQA_POSTGRES_PASSWORD")
        self.data, self.log = self.folder / "pgdata", self.folder / "postgres.log"
        self.bin = server_bin()

    # -- running PostgreSQL's commands as a user it accepts
    def _owner(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._owner():
            command = ["runuser", "-u", self._owner(), "--", *command]
        out = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            raise SetupError(f"PostgreSQL: {' '.join(args[:2])} failed ({out.returncode}): "
                             f"{(out.stderr or out.stdout).strip()[-800:]} (log: {self.log})")
        return out

    def init(self) -> None:
        if (self.data / "PG_VERSION").is_file():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        pwfile = self.folder / ".pwfile"
        pwfile.write_text(self.password)
        pwfile.chmod(0o600)
        if self._owner():
            shutil.chown(self.folder, self._owner(), self._owner())
            shutil.chown(pwfile, self._owner(), self._owner())
        try:
            self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C")
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self) -> LocalPostgres:
        self.init()
        if self.running():
            return self
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")
        return self

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def stop(self) -> None:
        if (self.data / "PG_VERSION").is_file():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def create_database(self, name: str) -> str:
        """The database ``name`` (created if missing); its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} password={self.password} dbname={database}"

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        from urllib.parse import quote

        return f"{driver}://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def wait_ready(self, deadline_s: float = 60) -> None:
        import psycopg

        end = time.monotonic() + deadline_s
        while True:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)
