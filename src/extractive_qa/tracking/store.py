"""Connecting to an MLflow store: the default URI, bounded retries, the experiment, its artifact root.

A sqlite store is created and migrated under a file lock (parallel jobs on a fresh db would race on
the schema migration, "duplicate column name", and on creating the experiment), and every call
retries while sqlite says "database is locked". A tracking server gets bounded HTTP retries: MLflow's
defaults (5 retries, backoff factor 2, a 120 s timeout per request) block a metric call for minutes
when the server disappears.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..core.errors import SetupError
from ..core.schema import check_experiment_name
from ..core.secrets import redact

log = logging.getLogger(__name__)

T = TypeVar("T")

# Applied unless the user set them: a dead server costs a call about a second, not minutes.
BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


# MLflow 3's UI opens an experiment on its GenAI overview (traces) unless the experiment says it is about
# training models; with this tag it opens on the runs table ("Model training").
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


class TrackingUnavailable(SetupError):
    """The tracking store cannot be reached at start; the message says how to go on without it."""


def default_uri(project_root: str | Path) -> str:
    return f"sqlite:///{Path(project_root).resolve() / 'mlflow.db'}"


def resolve_uri(explicit: str | None, project_root: str | Path) -> str:
    """``explicit``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project root>/mlflow.db`` (absolute)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    return str(uri) if uri else default_uri(project_root)


def _sqlite_lock(uri: str):
    """A file lock beside a sqlite store's database (created with its folder), ``None`` for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    from filelock import FileLock

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{db}.lock", timeout=300)


def with_retry(fn: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Call ``fn``, retrying with backoff while a sqlite store is locked or busy."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - only lock errors are retried, others re-raised
            text = str(err).lower()
            if attempt == attempts - 1 or not any(s in text for s in ("database is locked", "busy",
                                                                      "unique constraint")):
                raise
            delay = 0.2 * 2**attempt
            log.warning("mlflow %s: %s; retrying in %.1fs", what, err.__class__.__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def client_for(uri: str):
    """An ``MlflowClient`` for ``uri``: bounded HTTP retries; a sqlite db created under a file lock; a damaged sqlite
    file is one :class:`TrackingUnavailable` naming it and the fix, for every command that opens the store."""
    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://")):
        for key, value in BOUNDED_HTTP.items():
            os.environ.setdefault(key, value)
    lock = _sqlite_lock(uri)
    if lock is None:
        return MlflowClient(uri)
    with lock:
        try:
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)  # MLflow opens (and migrates) the file on first use
        except Exception as err:
            damage = sqlite_damage(uri)
            if damage:
                raise damaged_store(uri, damage) from err
            raise
        return client


def damaged_store(uri: str, damage: str) -> TrackingUnavailable:
    """The one error a damaged sqlite store gives, from whichever command opened it."""
    path = uri[len("sqlite:///"):]
    return TrackingUnavailable(
        f"the MLflow store {path} is damaged: {damage}. Fix: move it aside (mv {path} {path}.damaged) and run "
        f"again to start a fresh store (then `python -m extractive_qa.sync RUN_DIR` sends a run folder to it), "
        "or restore it from a backup, or train without it: tracking=none")


def run_user() -> str:
    """Who makes a run: the tracking server's user (``MLFLOW_TRACKING_USERNAME``) when one signs in, else the local
    account -- MLflow's client leaves ``mlflow.user`` to the fluent API, and without it a run shows "Created by --"."""
    import getpass

    name = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if name:
        return name
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def create_run(client, experiment_id: str, run_name: str, tags: dict[str, str]):
    """``client.create_run`` (retried) with the member who makes it as ``mlflow.user`` and every tag redacted: the one
    way this project creates runs (jobs, sweep parents, configuration and report runs)."""
    from mlflow.utils.mlflow_tags import MLFLOW_USER

    tags = {MLFLOW_USER: run_user(), **{k: redact(str(v)) for k, v in tags.items()}}
    return with_retry(lambda: client.create_run(experiment_id, run_name=run_name, tags=tags), "create run")


def log_table(client, run_id: str, rows: list[dict], artifact_file: str) -> None:
    """``rows`` as an MLflow table (the artifact view shows it as one) that **replaces** the one at ``artifact_file``:
    ``client.log_table`` appends to an existing table, so a report made twice, or a race's command run again, listed
    every row twice. The same file and tag MLflow's own writes (JSON, ``orient="split"``; ``mlflow.loggedArtifacts``),
    retried."""
    import json
    import posixpath
    import tempfile

    import pandas as pd
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    folder, name = posixpath.split(artifact_file)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        pd.DataFrame(rows).to_json(path, orient="split", index=False, date_format="iso")
        with_retry(lambda: client.log_artifact(run_id, str(path), folder or None), f"log table {artifact_file}")
    run = with_retry(lambda: client.get_run(run_id), "read run tags")
    logged = json.loads(run.data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    if {"path": artifact_file, "type": "table"} not in logged:
        logged.append({"path": artifact_file, "type": "table"})
        with_retry(lambda: client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps(logged)), "tag table")


def get_or_create_experiment(client, uri: str, name: str, artifact_root: str | None = None,
                             tags: dict[str, str] | None = None) -> str:
    """The experiment's id, created if missing. A sqlite store gets an explicit, absolute artifact
    location (otherwise artifacts land in ./mlruns of whatever the working directory is); every
    experiment is marked as model training, so the UI opens it on its runs."""
    try:  # the name becomes the artifacts' folder: a name, never a path (the config check says it first)
        check_experiment_name(name)
    except ValueError as err:
        raise SetupError(str(err)) from None
    artifact_location = None
    lock = _sqlite_lock(uri)
    if lock is not None:
        root = Path(artifact_root or Path(uri[len("sqlite:///"):]).parent / "mlartifacts")
        artifact_location = (root / name).resolve().as_uri()

    tags = {EXPERIMENT_KIND: MODEL_TRAINING, **(tags or {})}

    def get_or_create() -> str:
        found = client.get_experiment_by_name(name)
        if not found:
            return client.create_experiment(name, artifact_location=artifact_location, tags=tags)
        if EXPERIMENT_KIND not in found.tags:  # an experiment from before: open it on its runs too
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return found.experiment_id

    if lock is None:
        return with_retry(get_or_create, "create experiment")
    with lock:
        return with_retry(get_or_create, "create experiment")


def connect(uri: str, experiment: str, artifact_root: str | None = None) -> tuple[object, str]:
    """``(client, experiment_id)``, or :class:`TrackingUnavailable` within seconds when the store is down."""
    try:
        client = client_for(uri)
        return client, get_or_create_experiment(client, uri, experiment, artifact_root)
    except Exception as err:  # noqa: BLE001 - any failure to reach the store gets the same way out
        if isinstance(err, TrackingUnavailable):
            raise
        damage = sqlite_damage(uri)
        if damage:
            raise damaged_store(uri, damage) from err
        raise TrackingUnavailable(
            f"cannot reach the MLflow tracking store at {redact(uri)} ({type(err).__name__}: "
            f"{redact(str(err)[:300])}). "
            "Fix: start it (e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db`), point tracking.uri=... or "
            "MLFLOW_TRACKING_URI at a reachable store, or train without it: tracking=none (metrics stay in the run "
            "dir's metrics.jsonl; `python -m extractive_qa.sync RUN_DIR` sends them later)") from err


def sqlite_damage(uri: str) -> str | None:
    """What is wrong with a sqlite store's file (a truncated or overwritten ``mlflow.db``), ``None`` when it is not
    a sqlite URI, is missing (a fresh store), or is sound. A damaged file is named as damaged, never as a
    server to start."""
    import sqlite3

    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):])
    if not path.is_file() or path.stat().st_size == 0:
        return None
    db = None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        result = db.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as err:
        return f"sqlite cannot read it ({err})"
    finally:
        if db is not None:
            db.close()
    return None if result and result[0] == "ok" else f"sqlite's check says: {result[0] if result else 'nothing'}"


@contextmanager
def fluent_uri(uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """MLflow's process-global tracking and registry URI (and experiment) set to ``uri`` for the calls that
    only read them (``Model.log``, ``models:/`` downloads), then put back exactly. ``mlflow.set_tracking_uri``
    also writes ``$MLFLOW_TRACKING_URI`` (and the registry's ``$MLFLOW_REGISTRY_URI``) for subprocesses: left
    behind, it would send the next job of an in-process sweep, or a later command, to this store. Without
    ``experiment_id``, ``Model.log`` files a logged model under the Default experiment, not its run's."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")}
    before = (tracking_utils._tracking_uri, registry_utils._registry_uri)  # what was set, not the defaults
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment_id is not None:
        os.environ["MLFLOW_EXPERIMENT_ID"] = str(experiment_id)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
