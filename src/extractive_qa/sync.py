"""``python -m extractive_qa.sync RUN_DIR [RUN_DIR ...]``: send a run folder's record to MLflow.

For runs whose tracking store was unreachable (the run tells you so when it ends) or that trained
with ``tracking=none``. The run folder is the source of truth: ``run.json`` (status, MLflow run id),
``config_resolved.yaml`` (params), ``metrics.jsonl`` (every metric with its step) and the run's files.
Only what the store does not have yet is sent, so syncing twice changes nothing; a run without an
MLflow run gets one (its id is written back to ``run.json``).

    python -m extractive_qa.sync outputs/runs/2026-11-25_10-00-00_123456
    python -m extractive_qa.sync outputs/runs/... --uri http://127.0.0.1:5000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from .core.config import project_root
from .core.runs import RUNNING, read_run_record, update_run_record
from .tracking.store import connect, resolve_uri, with_retry
from .tracking.trackers import param_batches, run_file_artifacts, safe_params


def read_metrics(run_dir: Path) -> list[tuple[str, float, int, int]]:
    """``(key, value, timestamp ms, step)`` of every line of ``metrics.jsonl`` (a torn last line is skipped)."""
    rows = []
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        step, stamp = int(entry.pop("step", 0)), int(entry.pop("time_ms", 0))
        rows.extend((k, float(v), stamp, step) for k, v in entry.items())
    return rows


def sync_run(run_dir: Path, uri: str) -> dict:
    """Send what ``uri`` lacks of ``run_dir``; a summary of what was sent."""
    from mlflow.entities import Metric

    record = read_run_record(run_dir)
    if record is None or not (run_dir / "config_resolved.yaml").is_file():
        raise SystemExit(f"error: {run_dir} is not a run folder (no run.json or config_resolved.yaml)")
    cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
    experiment = str(OmegaConf.select(cfg, "tracking.experiment_name") or cfg.experiment_name)
    client, experiment_id = connect(uri, experiment, OmegaConf.select(cfg, "tracking.artifact_root"))
    run_id = record.get("mlflow_run_id")
    if run_id:
        try:
            client.get_run(run_id)
        except Exception:  # noqa: BLE001 - a run id from another store: start one here
            run_id = None
    created = run_id is None
    if created:
        run_id = with_retry(lambda: client.create_run(experiment_id, run_name=run_dir.name,
                                                      tags={"run_dir": str(run_dir), "synced_from": str(run_dir)}),
                            "create run").info.run_id
        for chunk in param_batches(safe_params(cfg)):
            with_retry(lambda c=chunk: client.log_batch(run_id, params=c), "log params")
        update_run_record(run_dir, mlflow_run_id=run_id)
    have: dict[str, set[int]] = {}
    missing = []
    for key, value, stamp, step in read_metrics(run_dir):
        if key not in have:
            have[key] = set() if created else {m.step for m in client.get_metric_history(run_id, key)}
        if step not in have[key]:
            missing.append(Metric(key, value, stamp, step))
            have[key].add(step)
    for i in range(0, len(missing), 1000):
        with_retry(lambda c=missing[i : i + 1000]: client.log_batch(run_id, metrics=c), "log metrics")
    for path, folder in run_file_artifacts(run_dir):
        with_retry(lambda p=path, f=folder: client.log_artifact(run_id, str(p), f), f"log {path.name}")
    status = record.get("status") or RUNNING
    if status != RUNNING:
        with_retry(lambda: client.set_terminated(run_id, status), "set status")
    return {"run_dir": str(run_dir), "mlflow_run_id": run_id, "created": created, "metrics_sent": len(missing),
            "status": status}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m extractive_qa.sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI or the project's mlflow.db)")
    args = parser.parse_args(argv)
    uri = resolve_uri(args.uri, project_root())
    for run_dir in args.run_dirs:
        print(json.dumps(sync_run(run_dir.resolve(), uri)))


if __name__ == "__main__":
    sys.exit(main())
