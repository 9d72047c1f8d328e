"""Secrets never travel with what a run records: one redaction for every line and file the project writes, and
passwords typed into URLs lifted out of the command line before Hydra, MLflow or a log sees them.

Two parts, one job (a password is handed to the library that needs it, and to nothing else):

* :func:`redact` -- ``scheme://user:password@host`` becomes ``scheme://user:***@host`` (and a libpq DSN's
  ``password=...`` becomes ``password=***``). Applied where the project prints, logs (a log-record factory, so every
  handler Hydra sets up later gets redacted records), tags, logs params and notes, and writes run files.
* :func:`lift_passwords` -- a ``postgresql://user:password@host:port/db`` on the command line (the Optuna storage,
  a tracking store) has its password moved into a private libpq password file (``PGPASSFILE``, mode 0600, in a
  0700 folder), the way libpq reads passwords anyway; the URL goes on without it. An ``http(s)://user:password@``
  tracking URL has its credentials moved to ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``. So Hydra's
  ``.hydra/overrides.yaml``, the run's ``command`` tag, the sweep's note, ``config_resolved.yaml`` and every job of
  a launcher (which inherits the environment) see the URL without its password. The command line the shell ran is
  still what it was: ``ps`` showed it to every user of the box before this code ran. Keep passwords in
  ``~/.pgpass`` (README, "Teams and clusters").
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@  -- the password is anything up to the last '@' before the host (passwords may hold '@'
# only percent-encoded in a valid URL, but people type them raw: the greedy match takes the last one in the token).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s'\"]*):(?P<pw>[^\s'\"]*)@")
# libpq's ``password=...`` and environment-style ``..._PASSWORD=...``
_DSN_PASSWORD = re.compile(r"(?P<head>(?:\b|(?<=_))password\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s'\"]+)",
                           re.IGNORECASE)
_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2")


def redact(text: str) -> str:
    """``text`` with every URL password and libpq ``password=`` value replaced by ``***``."""
    if not isinstance(text, str) or ("@" not in text and "password" not in text.lower()):
        return text
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{MASK}@" if m.group("pw") != MASK else m.group(0), text)
    return _DSN_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


def redact_tree(value):
    """:func:`redact` over every string of a nested dict / list (a config, a record), keys included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_tree(k): redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_tree(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------- logging
_factory_installed: list[bool] = []


def redact_log_records() -> None:
    """Every log record made from now on, in this process, carries its message already redacted (installed once;
    survives the handlers Hydra configures after it, since it is the record, not a handler, that is changed)."""
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record whose args do not fit its format: logging reports it itself
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed.append(True)


# ---------------------------------------------------------------------------------------------- lifting
def pgpass_line(host: str, port: int | str, database: str, user: str, password: str) -> str:
    """One line of a libpq password file (``host:port:database:user:password``, ``\\`` and ``:`` escaped)."""
    return ":".join(str(x).replace("\\", "\\\\").replace(":", "\\:")
                    for x in (host, port, database, user, password)) + "\n"


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, readable by its owner only, never for a moment by anyone else."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


class _PasswordFile:
    """This process's private libpq password file: the user's own entries (``PGPASSFILE`` or ``~/.pgpass``) and the
    passwords lifted from its command line, in a 0700 folder removed when the process that made it exits (the
    jobs it launches read it meanwhile through the inherited ``PGPASSFILE``)."""

    path: Path | None = None
    owner: int | None = None

    @classmethod
    def add(cls, host: str, port: int | None, database: str, user: str, password: str) -> None:
        line = pgpass_line(host or "*", port or "*", database or "*", user, password)
        if cls.path is None or cls.owner != os.getpid():
            folder = Path(tempfile.mkdtemp(prefix="eqa-pgpass-"))  # mkdtemp: mode 0700
            path = folder / "pgpass"
            write_private(path, _existing_entries())
            cls.path, cls.owner = path, os.getpid()
            atexit.register(_remove_if_owner, folder, os.getpid())
        # Lifted entries go first: libpq takes the first line that matches.
        old = cls.path.read_text(encoding="utf-8")
        cls.path.write_text(line + old, encoding="utf-8")
        os.environ["PGPASSFILE"] = str(cls.path)


def _existing_entries() -> str:
    source = Path(os.environ.get("PGPASSFILE") or Path.home() / ".pgpass")
    try:
        text = source.read_text(encoding="utf-8")
    except OSError:
        return ""
    return text if text.endswith("\n") or not text else text + "\n"


def _remove_if_owner(folder: Path, pid: int) -> None:
    if os.getpid() == pid:  # a forked child inherits atexit handlers: only the maker removes the file
        shutil.rmtree(folder, ignore_errors=True)


def _lift_one(url: str) -> str:
    """``url`` without its password, the password handed to libpq or MLflow's environment; other text unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None or not parts.hostname:
        return url
    password, user = unquote(parts.password), unquote(parts.username or "")
    scheme = parts.scheme.lower()
    if scheme in _POSTGRES_SCHEMES:
        try:
            port = parts.port
        except ValueError:
            return url
        _PasswordFile.add(parts.hostname, port or 5432, parts.path.lstrip("/").split("/")[0], user, password)
    elif scheme in ("http", "https"):  # MLflow's client takes its credentials from these, not from the URL
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
        user = ""
    else:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{parts.username}@{netloc}" if user else netloc, parts.path, parts.query,
                       parts.fragment))


_URL_IN_ARG = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\",]+")


def lift_passwords(argv: list[str]) -> list[str]:
    """``argv`` with the passwords of PostgreSQL and MLflow-server URLs lifted out (see the module docstring)."""
    return [_URL_IN_ARG.sub(lambda m: _lift_one(m.group(0)), arg) if "://" in arg and "@" in arg else arg
            for arg in argv]
