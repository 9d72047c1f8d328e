"""What a job tracks to: always its run dir's record (``metrics.jsonl``, ``run.json``), plus the configured
backend's run."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..core.runs import update_run_record
from .base import MultiTracker, Tracker, backend_for
from .naming import hydra_overrides, run_name_from_overrides
from .rundir import RunDirTracker


def start_tracking(cfg: DictConfig, run_dir: Path, is_main: bool, run_id: str | None = None,
                   resumed: bool = False, sweep: dict | None = None) -> Tracker:
    """The trackers this job's config asks for (none on non-main processes): always the run dir's record,
    plus the configured backend's run; ``resumed`` continues a run (its tracker run ``run_id``, when it has one)."""
    if not is_main:
        return Tracker()
    name = str(cfg.tracking.get("run_name") or run_name_from_overrides(hydra_overrides(), sweep))
    trackers: list[Tracker] = [RunDirTracker(run_dir, name, resumed=run_id is not None or resumed)]
    backend = backend_for(cfg.tracking, cfg.paths.root)
    try:
        run = backend.start_run(cfg, run_dir, name, run_id, resumed, sweep)
    except BaseException:
        if run_id is None and not resumed:  # a fresh run dir that said RUNNING: it failed (or was stopped), and says so
            with trackers[0]:
                raise
        raise
    if type(run) is not Tracker:
        trackers.append(run)
        update_run_record(run_dir, tracking_store=backend.describe())
    return MultiTracker(trackers)
