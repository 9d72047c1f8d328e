"""Where a run's metrics go: always ``metrics.jsonl`` in the run dir, plus MLflow when configured."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from .outputs import write_json

log = logging.getLogger(__name__)


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


class MultiTracker(Tracker):
    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

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
    return MultiTracker(trackers)
