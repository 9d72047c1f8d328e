"""MLflow as a tracking backend (``tracking=mlflow``, the default): the class ``conf/tracking/mlflow.yaml`` names.

It starts a job's :class:`~extractive_qa.tracking.mlflow_tracker.MlflowTracker`, keeps a sweep's parent
run (:mod:`.parents`), and reads runs back for reports, ``top_k`` ensembles, registered models and
``python -m extractive_qa.sync``. Nothing outside ``tracking/`` calls MLflow's client for these.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..core.runs import RUNNING, read_metrics, read_run_record, update_run_record
from .base import RunRow, SweepRecord, Tracker, TrackingBackend
from .store import client_for, connect, create_run, get_or_create_experiment, log_table, resolve_uri, with_retry

log = logging.getLogger(__name__)

REPORTS_EXPERIMENT = "reports"


class MlflowBackend(TrackingBackend):
    name = "mlflow"

    def __init__(self, tracking_cfg: DictConfig | dict | None = None, root: str | Path | None = None):
        super().__init__(tracking_cfg, root)
        self.uri = resolve_uri((tracking_cfg or {}).get("uri"), root or ".")
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    # -- a job
    def start_run(self, cfg: DictConfig, run_dir: Path, run_name: str, run_id: str | None = None,
                  resumed: bool = False, sweep: dict | None = None) -> Tracker:
        from .mlflow_tracker import MlflowTracker

        return MlflowTracker(self.uri, cfg, run_dir, run_name, run_id, resumed, sweep)

    # -- a sweep
    def open_sweep(self, config: DictConfig, info: dict) -> dict:
        from .parents import open_parent_run

        return {"tracking_uri": self.uri, "parent_run_id": open_parent_run(self.uri, config, info)}

    def close_sweep(self, info: dict, counts: dict[str, int]) -> None:
        from .parents import close_parent_run

        if info.get("parent_run_id"):
            close_parent_run(info, counts)

    def sweep_stopped(self, sweep: dict) -> None:
        from .parents import end_parent_killed

        end_parent_killed(sweep)

    # -- runs whose process died
    def describe(self) -> dict:
        return {**super().describe(), "uri": self.uri}

    def end_killed(self, record: dict) -> None:
        run_id = record["mlflow_run_id"]
        run = with_retry(lambda: self.client.get_run(run_id), "get run")
        if run.info.status == RUNNING:
            with_retry(lambda: self.client.set_tag(run_id, "error", str(record.get("error", ""))[:5000]), "tag error")
            with_retry(lambda: self.client.set_terminated(run_id, "KILLED"), "set status")
            log.warning("MLflow run %s ended as KILLED (its process is gone)", run_id)

    def record_race(self, info: dict, tables: dict[str, list[dict]], verdict: str,
                    run_tags: dict[str, dict[str, str]]) -> None:
        from mlflow.entities import RunTag

        client = self.client
        parent = info.get("parent_run_id")
        if parent:
            for name, rows in tables.items():
                log_table(client, parent, rows, f"race/{name}.json")
            tags = [RunTag("race.verdict", verdict[:5000]), RunTag("race.looks", str(len(tables.get("rounds", []))))]
            with_retry(lambda: client.log_batch(parent, tags=tags), "tag race parent")
        for run_id, tags in run_tags.items():
            items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
            with_retry(lambda r=run_id, t=items: client.log_batch(r, tags=t), "tag dropped run")

    # -- reading back
    def find_sweep(self, sweep: str | None) -> SweepRecord:
        from .parents import find_sweep, sweep_dirs

        parent = find_sweep(self.client, sweep)
        tags = parent.data.tags
        return SweepRecord(id=tags.get("sweep.id", parent.info.run_id[:6]), run_id=parent.info.run_id,
                           keys=[k for k in tags.get("sweep.keys", "").split(", ") if k],
                           command=tags.get("sweep.command", ""), dirs=sweep_dirs(parent))

    def sweep_runs(self, sweep: SweepRecord) -> list[RunRow]:
        from .parents import children_of, row_of

        parent = with_retry(lambda: self.client.get_run(sweep.run_id), "get parent run")
        return [row_of(r) for r in children_of(self.client, parent)]

    def experiment_runs(self, experiment: str) -> list[RunRow]:
        from .parents import row_of, training_runs

        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in self.client.search_experiments()]
            raise FileNotFoundError(f"no MLflow experiment named {experiment!r} at {self.uri} (have: {names})")
        return [row_of(r) for r in training_runs(self.client, exp.experiment_id)]

    def metric_history(self, run: RunRow, key: str) -> list[tuple[int, float]]:
        if not run.run_id:
            return super().metric_history(run, key)
        history = with_retry(lambda: self.client.get_metric_history(run.run_id, key), "history")
        return sorted((m.step, m.value) for m in history)

    def attach_report(self, folder: Path, files: list[str], sweep: SweepRecord | None, experiment: str | None,
                      tables: dict[str, list[dict]] | None = None) -> None:
        """The report's files as ``report/*`` artifacts (same paths: a new report replaces the old) of the
        sweep's parent run, or of the experiment's one run in the separate ``reports`` experiment; ``tables``
        as MLflow tables (``report/<name>.json``, which the UI's artifact view shows as tables)."""
        client = self.client
        if sweep is not None:
            run_id = sweep.run_id
        else:
            reports_id = get_or_create_experiment(client, self.uri, REPORTS_EXPERIMENT)
            found = with_retry(lambda: client.search_runs(
                [reports_id], filter_string=f"tags.`report.experiment` = '{experiment}'", max_results=1),
                "find report run")
            run_id = found[0].info.run_id if found else create_run(
                client, reports_id, experiment, {"report.experiment": experiment}).info.run_id
        for name in files:
            with_retry(lambda n=name: client.log_artifact(run_id, str(folder / n), "report"), f"log {name}")
        for name, rows in (tables or {}).items():
            if rows:
                log_table(client, run_id, rows, f"report/{name}.json")
        if sweep is None:
            with_retry(lambda: client.set_terminated(run_id, "FINISHED"), "end report run")

    def run_file(self, run: RunRow, name: str) -> Path | None:
        local = super().run_file(run, name)
        if local is not None or not run.run_id:
            return local
        try:
            return Path(with_retry(lambda: self.client.download_artifacts(run.run_id, name), f"download {name}"))
        except Exception as err:  # noqa: BLE001 - a run without the file: the caller says so
            log.warning("run %s (%s) has no %s: %s", run.name, run.run_id, name, str(err)[:200])
            return None

    def links(self, ui: str) -> list[str]:
        from .mlflow_view import view_links

        return view_links(self.client, ui)

    def model_folder(self, model_uri: str) -> Path:
        """The run-dir-shaped folder (``best_model/`` + ``config_resolved.yaml``) of a logged model."""
        from mlflow.artifacts import download_artifacts

        from .registry import open_downloaded_model
        from .store import fluent_uri

        with fluent_uri(self.uri):  # models:/ URIs resolve in the registry, which defaults elsewhere
            return open_downloaded_model(Path(download_artifacts(artifact_uri=model_uri, tracking_uri=self.uri)))

    def sync(self, run_dir: Path) -> dict:
        """Send what the store lacks of ``run_dir`` (see :mod:`extractive_qa.sync`)."""
        from mlflow.entities import Metric

        from .mlflow_tracker import run_file_artifacts
        from .params import param_batches, safe_params

        record = read_run_record(run_dir)
        if record is None or not (run_dir / "config_resolved.yaml").is_file():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no run.json or config_resolved.yaml)")
        cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
        experiment = str(OmegaConf.select(cfg, "tracking.experiment_name") or cfg.experiment_name)
        client, experiment_id = connect(self.uri, experiment, OmegaConf.select(cfg, "tracking.artifact_root"))
        run_id = record.get("mlflow_run_id")
        if run_id:
            try:
                client.get_run(run_id)
            except Exception:  # noqa: BLE001 - a run id from another store: start one here
                run_id = None
        created = run_id is None
        if created:
            run_id = create_run(client, experiment_id, run_dir.name,
                                {"run_dir": str(run_dir), "synced_from": str(run_dir)}).info.run_id
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

