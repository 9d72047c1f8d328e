"""Where a run's metrics go: always ``metrics.jsonl`` in the run dir, plus MLflow when configured.

MLflow is driven through ``MlflowClient`` with an explicit run id rather than through Accelerate's
tracker or mlflow's fluent API: Accelerate's tracker sets no tracking URI, does not flatten the config
and drops non-numeric values, and the fluent API keeps a process-global "active run" that leaks from
one Hydra ``-m`` job into the next (all jobs share one process). Every store call retries on sqlite's
"database is locked", and the experiment is created under a file lock, so parallel jobs can share one
``mlflow.db``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig

from ..core.config import flatten, to_plain
from ..core.outputs import write_json

log = logging.getLogger(__name__)

T = TypeVar("T")

# Values of keys that look like secrets never reach params or tags.
SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[_-]?key|credential", re.IGNORECASE)
RUN_FILES = ("config_resolved.yaml", ".hydra/overrides.yaml", ".hydra/config.yaml", "dev_predictions.jsonl",
             "dev_nbest.json", "test_predictions.csv", "test_nbest.json", "metrics.json", "metrics.jsonl",
             "data_report.json", "submission.csv")


class Tracker:
    """Interface of a run tracker; the base class tracks nothing. Only the main process tracks."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(_status_of(exc_type))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_dict(self, obj: dict, name: str) -> None: ...

    def log_run_files(self, run_dir: Path) -> None: ...

    def finish(self, status: str) -> None: ...


def _status_of(exc_type) -> str:
    if exc_type is None:
        return "FINISHED"
    if issubclass(exc_type, KeyboardInterrupt):
        return "KILLED"
    return "FAILED"


class JsonlTracker(Tracker):
    """Appends ``{"step": s, name: value, ...}`` lines to ``metrics.jsonl``; writes dicts as JSON files."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")

    def log_dict(self, obj: dict, name: str) -> None:
        write_json(self.run_dir / name, obj)


def with_retry(fn: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Call ``fn``, retrying with backoff while a sqlite store is locked or busy."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - only lock errors are retried, others re-raised
            text = str(err).lower()
            if attempt == attempts - 1 or not any(s in text for s in ("database is locked", "busy", "unique constraint")):
                raise
            delay = 0.2 * 2**attempt
            log.warning("mlflow %s: %s; retrying in %.1fs", what, err.__class__.__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def tracking_uri(cfg: DictConfig) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project root>/mlflow.db`` (absolute)."""
    uri = cfg.tracking.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return str(uri)
    return f"sqlite:///{Path(cfg.paths.root).resolve() / 'mlflow.db'}"


def _git_state(root: Path) -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return {"git.commit": commit or "unknown", "git.dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}


def _hydra_job() -> dict:
    """Overrides, job number and sweep dir of the running Hydra job (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return {"overrides": [], "num": 0, "sweep_dir": None}
    multirun = hc.mode == RunMode.MULTIRUN
    return {"overrides": list(hc.overrides.task), "num": int(hc.job.get("num", 0) or 0),
            "sweep_dir": str(Path(hc.sweep.dir).resolve()) if multirun else None}


_SWEEP_SYNTAX = ("range(", "choice(", "interval(", "glob(")


def run_name_from_overrides(overrides: list[str], argv: list[str] | None = None, limit: int = 200) -> str:
    """A readable run name from the job's overrides: in a sweep only the swept ones
    (``-m warmup_ratio=0.1,0.2 lr=1e-3`` -> ``warmup_ratio=0.1``), else every override a person chose;
    never paths (long, and the same across a sweep) or Hydra's own keys."""
    argv = sys.argv[1:] if argv is None else argv
    swept = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a
             and ("," in a.split("=", 1)[1] or a.split("=", 1)[1].startswith(_SWEEP_SYNTAX))}
    keep = [o for o in overrides if not o.startswith(("hydra.", "paths.", "+hydra")) and "/" not in o.split("=", 1)[-1]]
    chosen = [o for o in keep if o.split("=", 1)[0].lstrip("+~") in swept] or keep
    return (",".join(chosen) or "defaults")[:limit]


def _command_line() -> str:
    prog = Path(sys.argv[0])
    head = ["python", "-m", f"extractive_qa.{prog.stem}"] if prog.parent.name == "extractive_qa" else [prog.name]
    return shlex.join([*head, *sys.argv[1:]])[:5000]


def safe_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config flattened to dotted keys, secrets dropped, values cut to MLflow's 6000 chars."""
    flat = flatten(to_plain(cfg))
    return {k: str(v)[:6000] for k, v in flat.items() if not SECRET_KEY.search(k)}


class MlflowTracker(Tracker):
    """One MLflow run per Hydra job (see the module docstring)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, splits: dict):
        self.uri = tracking_uri(cfg)
        self.log_model = bool(cfg.tracking.get("log_model", False))
        job = _hydra_job()
        name = str(cfg.tracking.get("experiment_name") or cfg.experiment_name)
        self.experiment_id = self._experiment(name, cfg)
        tags = {
            "sweep.id": job["sweep_dir"] or "", "job.num": str(job["num"]), "run_dir": str(run_dir),
            "command": _command_line(),
            "mlflow.source.name": "extractive_qa.train",
            **_git_state(Path(cfg.paths.root)),
        }
        run_name = cfg.tracking.get("run_name") or run_name_from_overrides(job["overrides"])
        resume_id = cfg.tracking.get("run_id")
        if resume_id:
            self.run_id = str(resume_id)
            with_retry(lambda: self.client.update_run(self.run_id, status="RUNNING"), "resume run")
        else:
            run = with_retry(lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=tags), "create run")
            self.run_id = run.info.run_id
            self._log_params(safe_params(cfg))
            self._log_inputs(splits)
        log.info("MLflow run %s (%s) in experiment %r at %s", self.run_id, run_name, name, self.uri)

    def _experiment(self, name: str, cfg: DictConfig) -> str:
        """Connect, then get or create the experiment. For a sqlite store both run under a file lock:
        connecting migrates the schema, and parallel jobs on a fresh db would otherwise race on that
        ("duplicate column name") and on creating the experiment."""
        from mlflow.tracking import MlflowClient

        artifact_location = None

        def get_or_create() -> str:
            found = self.client.get_experiment_by_name(name)
            return found.experiment_id if found else self.client.create_experiment(name, artifact_location=artifact_location)

        if not self.uri.startswith("sqlite:///"):
            self.client = MlflowClient(self.uri)
            return with_retry(get_or_create, "create experiment")
        from filelock import FileLock

        db = Path(self.uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        # Without an explicit location, a sqlite store puts artifacts in ./mlruns of the cwd.
        root = Path(str(cfg.tracking.get("artifact_root") or db.parent / "mlartifacts"))
        artifact_location = (root / name).resolve().as_uri()
        with FileLock(f"{db}.lock", timeout=300):
            self.client = MlflowClient(self.uri)
            return with_retry(get_or_create, "create experiment")

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            chunk = items[i : i + 100]
            with_retry(lambda c=chunk: self.client.log_batch(self.run_id, params=c), "log params")

    def _log_inputs(self, splits: dict) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for split, examples in splits.items():
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(examples.path)
            dataset = MetaDataset(source=source, name=f"{Path(examples.path).name}", digest=examples.digest)
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", split)]))
        with_retry(lambda: self.client.log_inputs(self.run_id, datasets=inputs), "log inputs")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        with_retry(lambda: self.client.log_batch(self.run_id, metrics=batch), "log metrics")

    def log_dict(self, obj: dict, name: str) -> None:
        with_retry(lambda: self.client.log_dict(self.run_id, obj, name), "log dict")

    def log_run_files(self, run_dir: Path) -> None:
        for name in RUN_FILES:
            path = run_dir / name
            if path.is_file():
                folder = str(Path(name).parent) if Path(name).parent != Path(".") else None
                with_retry(lambda p=path, f=folder: self.client.log_artifact(self.run_id, str(p), f), f"log {name}")
        if self.log_model and (run_dir / "best_model").is_dir():
            with_retry(lambda: self.client.log_artifacts(self.run_id, str(run_dir / "best_model"), "model"), "log model")

    def finish(self, status: str) -> None:
        with_retry(lambda: self.client.set_terminated(self.run_id, status), "end run")


class MultiTracker(Tracker):
    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    @property
    def run_id(self) -> str | None:
        return next((t.run_id for t in self.trackers if getattr(t, "run_id", None)), None)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for t in self.trackers:
            t.log_metrics(metrics, step)

    def log_dict(self, obj: dict, name: str) -> None:
        for t in self.trackers:
            t.log_dict(obj, name)

    def log_run_files(self, run_dir: Path) -> None:
        for t in self.trackers:
            t.log_run_files(run_dir)

    def finish(self, status: str) -> None:
        for t in self.trackers:
            t.finish(status)


def start_tracking(cfg: DictConfig, run_dir: Path, splits: dict, is_main: bool) -> Tracker:
    """The trackers this job's config asks for (none on non-main processes)."""
    if not is_main:
        return Tracker()
    trackers: list[Tracker] = [JsonlTracker(run_dir)]
    backend = cfg.tracking.get("backend", "none")
    if backend == "mlflow":
        trackers.append(MlflowTracker(cfg, run_dir, splits))
    elif backend != "none":
        raise ValueError(f"tracking.backend must be 'mlflow' or 'none', got {backend!r}")
    return MultiTracker(trackers)
