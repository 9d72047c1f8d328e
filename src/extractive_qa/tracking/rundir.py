"""The run dir's own record, kept whatever the tracking backend: ``metrics.jsonl``, JSON files, ``run.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..core.metrics import METRICS
from ..core.outputs import json_text, write_atomic, write_json
from ..core.runs import RUNNING, read_run_record, this_process, update_run_record
from .base import RunRow, Tracker


class RunDirTracker(Tracker):
    """``{"step": s, name: value, ...}`` lines in ``metrics.jsonl``, dicts as JSON files, the status and
    error in ``run.json``. A resumed run's record keeps its status until :meth:`reopen`."""

    def __init__(self, run_dir: Path, run_name: str | None = None, resumed: bool = False):
        self.run_dir, self.path, self.run_name = run_dir, run_dir / "metrics.jsonl", run_name
        self._resumed, self._reopened = resumed, False

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json_text({"step": step, "time_ms": int(time.time() * 1000),
                               **{k: float(v) for k, v in metrics.items()}}) + "\n")

    def rewind(self, step: int) -> None:
        """Cut ``metrics.jsonl`` back to ``step`` (and drop a line torn by the kill)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line).get("step", 0)) <= step:
                    kept.append(line + "\n")
            except (ValueError, AttributeError):
                continue
        write_atomic(self.path, "".join(kept))

    def log_dict(self, obj: dict, name: str) -> None:
        write_json(self.run_dir / name, obj)

    def set_tags(self, tags: dict[str, str]) -> None:
        if "error" in tags and (self._reopened or not self._resumed):
            update_run_record(self.run_dir, error=tags["error"])

    def reopen(self) -> None:
        self._reopened = True
        update_run_record(self.run_dir, status=RUNNING, error=None, process=this_process())

    def finish(self, status: str) -> None:
        if self._reopened or not self._resumed:
            update_run_record(self.run_dir, status=status)


def run_dir_row(run_dir: Path) -> RunRow:
    """A run as its folder records it (``run.json``, ``metrics.json``): a :class:`RunRow` without a store."""
    record = read_run_record(run_dir) or {}
    summary = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    metrics = {f"best/dev_{m}": float(summary[f"best_dev_{m}"]) for m in METRICS
               if summary.get(f"best_dev_{m}") is not None}
    params = {"optimize_metric": str(record.get("optimize_metric") or summary.get("optimize_metric") or "em")}
    return RunRow(name=str(record.get("run_name") or run_dir.name), values={}, status=str(record.get("status", "")),
                  metrics=metrics, run_id="", params=params, run_dir=str(run_dir))
