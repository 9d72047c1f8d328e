"""The tracking interfaces: a :class:`Tracker` per job (what a run writes) and a :class:`TrackingBackend`
per store (starting runs, a sweep's parent, and reading runs back for reports, ``top_k`` ensembles,
logged models and sync).

A backend is one YAML in ``conf/tracking/`` whose ``_target_`` names its class (``mlflow.yaml``:
:class:`~extractive_qa.tracking.mlflow_backend.MlflowBackend`; ``none.yaml``: :class:`NoTracking`);
:func:`backend_for` builds it. A new tracker (W&B, TensorBoard) is that YAML and one class: its
runs get every run-dir file through :class:`~extractive_qa.tracking.rundir.RunDirTracker` anyway,
and whatever it cannot read back fails with one :class:`TrackingUnsupported` message naming the
backend that can.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from ..core.errors import SetupError, disk_full_message
from ..core.runs import PRUNED, RunPruned, on_killed_run_found, read_metrics


class TrackingUnsupported(SetupError):
    """A command needs a tracking store that can read runs back, and the configured backend cannot."""


class Tracker:
    """Interface of a run tracker; the base class tracks nothing. Only the main process tracks.

    Leaving it as a context manager ends the run with a true status: FINISHED, FAILED after an
    exception (its cause recorded), KILLED after an interrupt.
    """

    run_id: str | None = None
    run_name: str | None = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and issubclass(exc_type, RunPruned):
            self.set_tags({"status": PRUNED, "pruned": str(exc)})
        elif exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            where = self.writes_to()
            # A full disk is recorded as what it is, whatever the writer that met it said ("unexpected pos").
            text = (disk_full_message(exc, str(where)) if where is not None else None) or f"{exc_type.__name__}: {exc}"
            self.set_tags({"error": text[:5000]})
        self.finish(status_of(exc_type))

    def writes_to(self) -> Path | None:
        """The folder the run writes its files to (where a failed write looks for a full disk)."""
        return getattr(self, "run_dir", None)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def flush(self) -> bool:
        """Send what is queued (a tracker that writes in the background); whether everything went. Called before
        every checkpoint, so that a run resumed from it lacks nothing the checkpoint covers."""
        return True

    def rewind(self, step: int) -> None:
        """The run continues from its checkpoint at ``step``: what was logged for later steps (before a kill) is
        logged again as training retraces them, and must not appear twice."""

    def log_dict(self, obj: dict, name: str) -> None: ...

    def log_inputs(self, splits: dict) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_run_files(self, run_dir: Path) -> None: ...

    def log_model(self, run_dir: Path, example: dict, register: str | None) -> None:
        """The run's best model (``run_dir/best_model``), after its best dev scores were logged at step 0."""

    def reopen(self) -> None:
        """A resumed run's state is restored: mark it RUNNING again (never before: a resume that fails
        leaves the run's status as it was)."""

    def finish(self, status: str) -> None: ...


def status_of(exc_type) -> str:
    if exc_type is None:
        return "FINISHED"
    if issubclass(exc_type, RunPruned):
        return PRUNED
    if issubclass(exc_type, KeyboardInterrupt):
        return "KILLED"
    return "FAILED"


class MultiTracker(Tracker):
    """Every call goes to each tracker in turn (``metrics.jsonl`` first, so it never misses a metric)."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    @property
    def run_id(self) -> str | None:
        return next((t.run_id for t in self.trackers if getattr(t, "run_id", None)), None)

    def writes_to(self) -> Path | None:
        return next((t.writes_to() for t in self.trackers if t.writes_to() is not None), None)

    @property
    def run_name(self) -> str | None:
        """The store's name of the run (a resumed run keeps the one it has there), else the run dir's."""
        return next((t.run_name for t in reversed(self.trackers) if t.run_name), None)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for t in self.trackers:
            t.log_metrics(metrics, step)

    def rewind(self, step: int) -> None:
        for t in self.trackers:
            t.rewind(step)

    def flush(self) -> bool:
        return all([t.flush() for t in self.trackers])

    def log_dict(self, obj: dict, name: str) -> None:
        for t in self.trackers:
            t.log_dict(obj, name)

    def log_inputs(self, splits: dict) -> None:
        for t in self.trackers:
            t.log_inputs(splits)

    def set_tags(self, tags: dict[str, str]) -> None:
        for t in self.trackers:
            t.set_tags(tags)

    def log_run_files(self, run_dir: Path) -> None:
        for t in self.trackers:
            t.log_run_files(run_dir)

    def log_model(self, run_dir: Path, example: dict, register: str | None) -> None:
        for t in self.trackers:
            t.log_model(run_dir, example, register)

    def reopen(self) -> None:
        for t in self.trackers:
            t.reopen()

    def finish(self, status: str) -> None:
        for t in self.trackers:
            t.finish(status)


@dataclass
class RunRow:
    """One run as a store reads it back: what reports, sweep summaries and ``top_k`` need."""

    name: str
    values: dict[str, str]  # the swept values (sweeps), or the params that differ (experiments)
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str = ""
    params: dict[str, str] = field(default_factory=dict)
    run_dir: str | None = None


@dataclass
class SweepRecord:
    """A sweep as a store reads it back."""

    id: str
    run_id: str
    keys: list[str]
    command: str = ""
    dirs: list[str] = field(default_factory=list)  # the folders it ran in (a race's history is there)


class TrackingBackend:
    """A tracking store (see the module docstring). The base class stores nothing: runs keep their
    run-dir record, sweeps run without a parent, and reading back raises :class:`TrackingUnsupported`."""

    name = "none"

    def __init__(self, tracking_cfg: DictConfig | dict | None = None, root: str | Path | None = None):
        self.cfg, self.root = tracking_cfg or {}, Path(root) if root else None

    # -- a job
    def start_run(self, cfg: DictConfig, run_dir: Path, run_name: str, run_id: str | None = None,
                  resumed: bool = False, sweep: dict | None = None) -> Tracker:
        return Tracker()

    # -- a sweep (called by the sweep callback, in the launching process)
    def open_sweep(self, config: DictConfig, info: dict) -> dict:
        """What the jobs need to find the sweep's parent run (merged into ``sweep.json``)."""
        return {}

    def close_sweep(self, info: dict, counts: dict[str, int]) -> None: ...

    def sweep_stopped(self, sweep: dict) -> None:
        """A job was interrupted: the sweep stops there."""

    # -- reading runs back
    def unsupported(self, what: str) -> TrackingUnsupported:
        return TrackingUnsupported(
            f"{what} reads runs back from a tracking store, and tracking={self.name} keeps none. Fix: tracking=mlflow "
            "(the default; runs trained with tracking=none can be sent there with `python -m extractive_qa.sync "
            "RUN_DIR`), or name run folders directly (run_dir=..., run_dirs=[...]).")

    def record_race(self, info: dict, tables: dict[str, list[dict]], verdict: str,
                    run_tags: dict[str, dict[str, str]]) -> None:
        """A race's tables (``rounds``: one row per look; ``configurations``: one per configuration) and verdict on
        its sweep's parent, and tags on runs by id (the store's view of ``race.json``; a backend without one has
        nothing to do)."""

    def find_sweep(self, sweep: str | None) -> SweepRecord:
        raise self.unsupported("finding a sweep")

    def sweep_runs(self, sweep: SweepRecord) -> list[RunRow]:
        raise self.unsupported("listing a sweep's runs")

    def experiment_runs(self, experiment: str) -> list[RunRow]:
        raise self.unsupported("listing an experiment's runs")

    def metric_history(self, run: RunRow, key: str) -> list[tuple[int, float]]:
        """``[(step, value)]`` of ``key``: from the run dir's ``metrics.jsonl`` (whatever the backend)."""
        if not run.run_dir:
            return []
        return sorted((step, value) for name, value, _, step in read_metrics(Path(run.run_dir)) if name == key)

    def attach_report(self, folder: Path, files: list[str], sweep: SweepRecord | None, experiment: str | None,
                      tables: dict[str, list[dict]] | None = None) -> None:
        raise self.unsupported("attaching a report")

    def run_file(self, run: RunRow, name: str) -> Path | None:
        """A file a run wrote (``dev_predictions.jsonl``): from its run dir when that is here, else from the
        store; ``None`` when neither has it."""
        path = Path(run.run_dir) / name if run.run_dir else None
        return path if path is not None and path.is_file() else None

    def model_folder(self, model_uri: str) -> Path:
        raise self.unsupported(f"loading {model_uri}")

    def sync(self, run_dir: Path) -> dict:
        raise self.unsupported("sync")

    def links(self, ui: str) -> list[str]:
        """Links into the store's UI served at ``ui`` that open this project's views (none without a UI)."""
        return []

    # -- runs whose process died without a word
    def describe(self) -> dict:
        """What a later reader needs to reach this store again (kept in ``run.json`` as ``tracking_store``)."""
        return {"target": f"{type(self).__module__}.{type(self).__qualname__}"}

    def end_killed(self, record: dict) -> None:
        """End the store's run of ``record`` (a run whose process is gone) as KILLED, if it still says RUNNING."""


def _end_killed_in_store(run_dir: Path, record: dict) -> None:
    """:func:`~extractive_qa.core.runs.on_killed_run_found` listener: the run's store learns it too."""
    store = record.get("tracking_store")
    if isinstance(store, dict) and store.get("target") and record.get("mlflow_run_id"):
        backend_for({"_target_": store["target"], "uri": store.get("uri")}, run_dir).end_killed(record)


def end_killed_runs_in_stores() -> None:
    """Every reader of run records in this process also ends a dead run KILLED in its tracking store (each
    entry point calls it: ``make predict``, reports, sync, training and its resume)."""
    on_killed_run_found(_end_killed_in_store)


end_killed_runs_in_stores()


class NoTracking(TrackingBackend):
    """``tracking=none``: the run folder is the whole record (``metrics.jsonl``, ``run.json``)."""


def backend_for(tracking_cfg: DictConfig, root: str | Path) -> TrackingBackend:
    """The backend the ``tracking`` config names with ``_target_`` (a :class:`TrackingBackend` subclass)."""
    from hydra.utils import get_class

    target = tracking_cfg.get("_target_") if tracking_cfg is not None else None
    if not target:
        return NoTracking(tracking_cfg, root)
    cls = get_class(str(target))
    if not (isinstance(cls, type) and issubclass(cls, TrackingBackend)):
        raise SetupError(f"tracking._target_={target} is not a TrackingBackend (extractive_qa.tracking.base)")
    return cls(tracking_cfg, root)


def backend_named(name: str, root: str | Path, uri: str | None = None) -> TrackingBackend:
    """The backend of ``conf/tracking/<name>.yaml`` (for commands without a training config: ``compare``,
    ``sync``), with ``uri`` in place of its default store."""
    from omegaconf import OmegaConf

    from ..core.config import CONF_DIR

    path = Path(CONF_DIR) / "tracking" / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise SetupError(f"no tracking backend {name!r} (conf/tracking/ has {options})")
    cfg = OmegaConf.load(path)
    if uri:
        cfg.uri = uri
    return backend_for(cfg, root)
