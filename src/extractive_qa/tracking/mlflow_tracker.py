"""One MLflow run per job, sent through a queue that survives outages.

MLflow is driven through ``MlflowClient`` with an explicit run id rather than through Accelerate's
tracker or mlflow's fluent API: Accelerate's tracker sets no tracking URI, does not flatten the config
and drops non-numeric values, and the fluent API keeps a process-global "active run" that leaks from
one Hydra ``-m`` job into the next (all jobs share one process).

Tracking never slows or kills training. Every call goes into a queue that one background thread sends, in
order: the loop never waits for a sqlite write or an HTTP round trip (a synchronous write every ``logging_steps``
cost a tiny model's loop 5-10% of its speed on a CPU, and would cost a GPU's more: ``make bench
ARGS="bench.parts=[loop]"``). Nothing is lost to it: ``metrics.jsonl`` is written first, in the loop; the queue is
flushed before every checkpoint (a run resumed from one lacks nothing the checkpoint covers, and re-logs what came
after as it retraces it) and when the run ends. When the store stops answering mid-run, the tracker warns once,
keeps every call queued, tries again every ``RETRY_AFTER_S`` seconds and sends the queue, in order, when the store
is back -- at the latest when the run ends. What still cannot be sent then is named, with the command that sends it
later (``python -m extractive_qa.sync RUN_DIR``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from ..core.outputs import json_safe
from ..core.secrets import redact
from .base import Tracker
from .naming import GROUP_TAG, command_line, configuration_label, git_state, hydra_overrides, swept_values
from .params import param_batches, safe_params
from .store import connect, create_run, with_retry

log = logging.getLogger(__name__)
# MLflow's system-metrics thread announces every start and stop at INFO: noise in a sweep's log.
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

RUN_FILES = ("config_resolved.yaml", ".hydra/overrides.yaml", ".hydra/config.yaml", "dev_predictions.jsonl",
             "dev_nbest.json", "test_predictions.csv", "test_nbest.json", "metrics.json", "metrics.jsonl",
             "data_report.json", "submission.csv", "run.json")
RETRY_AFTER_S = 30.0
_UNREACHABLE = ("max retries exceeded", "connection refused", "connection reset", "connection aborted", "timed out",
                "temporarily unavailable", "database is locked", "failed to establish", "name or service not known",
                "remote end closed", "bad gateway", "service unavailable", "gateway time")


def run_file_artifacts(run_dir: Path) -> list[tuple[Path, str | None]]:
    """``(file, artifact folder)`` of each of the run's :data:`RUN_FILES` that exists (``.hydra/x`` goes
    under ``.hydra``, the others at the top)."""
    found = []
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            folder = str(Path(name).parent) if Path(name).parent != Path(".") else None
            found.append((run_dir / name, folder))
    return found


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` says the store could not be reached (worth queueing and resending), as opposed to a
    call the store refused or a bug (resending cannot fix those: they are logged and skipped)."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(err).__name__} {err}".lower()
    return any(s in text for s in _UNREACHABLE) or "connectionerror" in text


class MlflowTracker(Tracker):
    """One MLflow run per Hydra job (see the module docstring). ``run_id`` continues an existing run
    (resume), which stays as it was until :meth:`reopen`."""

    def __init__(self, uri: str, cfg: DictConfig, run_dir: Path, run_name: str, run_id: str | None = None,
                 resumed: bool = False, sweep: dict | None = None):
        self.uri = uri
        self.run_dir = run_dir
        name = str(cfg.tracking.get("experiment_name") or cfg.experiment_name)
        self.client, self.experiment_id = connect(self.uri, name, cfg.tracking.get("artifact_root"))
        self._queue: list[tuple[str, Callable[[], object]]] = []
        self._queued = threading.Condition()  # guards _queue; the writer waits on it
        self._writer: threading.Thread | None = None
        self._closing = False
        self._down_since: float | None = None
        self._next_try = 0.0
        self._logged_after_checkpoint: dict[str, set[int]] = {}  # see rewind()
        self._resumed = resumed and run_id is not None  # a run that had no MLflow run gets a new one
        self._reopened = False
        if self._resumed:
            self.run_id = str(run_id)
            run_name = with_retry(lambda: self.client.get_run(self.run_id), "get run").info.run_name or run_name
        else:
            overrides = hydra_overrides()
            tags = {"run_dir": str(run_dir), "command": command_line(), "mlflow.source.name": "extractive_qa.train",
                    **git_state(Path(cfg.paths.root))}
            tags[GROUP_TAG] = run_name  # a single run is a configuration of its own
            if sweep:
                values = swept_values(overrides, sweep)
                tags.update({"sweep.id": sweep["id"], "sweep.dir": sweep["dir"], "job.num": str(sweep["job"]),
                             "sweep.values": json.dumps(values, ensure_ascii=False),
                             GROUP_TAG: configuration_label(values, sweep.get("swept_keys") or [],
                                                                    sweep["id"])})
                if sweep.get("parent_run_id"):
                    tags["mlflow.parentRunId"] = sweep["parent_run_id"]
            run = create_run(self.client, self.experiment_id, run_name, tags)
            self.run_id = run.info.run_id
            self._log_params(safe_params(cfg))
        self.run_name = run_name
        self._in_sweep = sweep is not None
        self._optimize_metric = str(cfg.get("optimize_metric") or "em")
        self._monitor = None
        self._system_metrics = bool(cfg.tracking.get("system_metrics", False))
        if not self._resumed:
            self._start_system_metrics()
        log.info("MLflow run %s (%s) in experiment %r at %s", self.run_id, run_name, name, self.uri)

    def _start_system_metrics(self) -> None:
        """MLflow's own CPU / memory (/ GPU, with its optional dependency) sampling, in a thread; it stops
        by itself if the store goes away, so it never holds training up."""
        if not self._system_metrics:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, tracking_uri=self.uri, resume_logging=self._resumed)
            self._monitor.start()
        except Exception as err:  # noqa: BLE001 - optional: psutil missing, an old mlflow
            log.warning("system metrics are off: %s", err)
            self._monitor = None

    # -- sending: a queue, one writer thread, kept while the store is down
    def _send(self, what: str, call: Callable[[], object]) -> None:
        with self._queued:
            self._queue.append((what, call))
            if self._writer is None:
                self._writer = threading.Thread(target=self._write, name="mlflow-writer", daemon=True)
                self._writer.start()
            self._queued.notify_all()

    def _write(self) -> None:
        """The writer thread: sends the queue whenever it holds something and the store is up (or due a retry)."""
        while True:
            with self._queued:
                while not self._closing and (not self._queue or (
                        self._down_since is not None and time.monotonic() < self._next_try)):
                    wait = None if not self._queue else max(0.05, self._next_try - time.monotonic())
                    self._queued.wait(wait)
                if self._closing:
                    return
            self._drain()
            with self._queued:
                self._queued.notify_all()  # flush() waits for an empty queue

    def flush(self) -> bool:
        """Wait until everything queued so far is sent (``True``), or the store is found down (``False``, the queue
        kept for later). Before each checkpoint: a run resumed from it then lacks nothing the checkpoint covers."""
        with self._queued:
            while self._queue and self._down_since is None and self._writer is not None and self._writer.is_alive():
                self._queued.wait(1.0)
            return not self._queue

    def _stop_writer(self) -> None:
        with self._queued:
            self._closing = True
            self._queued.notify_all()
        if self._writer is not None and self._writer is not threading.current_thread():
            self._writer.join()

    def _drain(self) -> bool:
        """Send the queue in order; ``False`` (and queue kept) while the store is unreachable."""
        while True:
            with self._queued:
                if not self._queue:
                    break
                what, call = self._queue[0]
            try:
                with_retry(call, what)
            except Exception as err:  # noqa: BLE001 - tracking must never stop training
                if is_outage(err):
                    self._went_down(err)
                    return False
                log.warning("mlflow: %s failed and is skipped (%s: %s)", what, type(err).__name__, str(err)[:300])
            with self._queued:
                self._queue.pop(0)
        if self._down_since is not None:
            log.warning("MLflow at %s answers again after %.0fs: sent everything queued meanwhile", self.uri,
                        time.monotonic() - self._down_since)
            self._down_since = None
        return True

    def _went_down(self, err: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("MLflow at %s does not answer (%s: %s). Training goes on; metrics stay in %s and are sent "
                        "when it is back (retrying every %.0fs, and at the end).", self.uri, type(err).__name__,
                        str(err)[:200], self.run_dir / "metrics.jsonl", RETRY_AFTER_S)
        self._next_try = time.monotonic() + RETRY_AFTER_S

    # -- what a run logs
    def _log_params(self, params: dict[str, str]) -> None:
        for chunk in param_batches(params):
            self._send("log params", lambda c=chunk: self.client.log_batch(self.run_id, params=c))

    def log_inputs(self, splits: dict) -> None:
        if self._resumed:
            return  # logged when the run started
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
        self._send("log inputs", lambda: self.client.log_inputs(self.run_id, datasets=inputs))

    def rewind(self, step: int) -> None:
        """A resumed run re-trains the steps after its checkpoint's ``step`` that it logged before it was killed.
        MLflow cannot delete a metric's points, so the steps the store already holds are not sent again: its
        history keeps one point per step (the same values: a resumed run retraces its trajectory; with
        ``resume_allow_changes`` the store keeps the values first logged for those steps, ``metrics.jsonl`` the
        new ones)."""
        try:
            keys = with_retry(lambda: self.client.get_run(self.run_id), "get run").data.metrics
            for key in keys:
                if key.startswith("system/"):  # MLflow's monitor continues its own step count (resume_logging)
                    continue
                history = with_retry(lambda k=key: self.client.get_metric_history(self.run_id, k), "history")
                if later := {m.step for m in history if m.step > step}:
                    self._logged_after_checkpoint[key] = later
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            log.warning("mlflow: could not read the run's metric history (%s); steps after %d may appear twice",
                        str(err)[:200], step)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if step not in self._logged_after_checkpoint.get(k, ())]
        if batch:
            self._send("log metrics", lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_dict(self, obj: dict, name: str) -> None:
        self._send(f"log {name}", lambda: self.client.log_dict(self.run_id, json_safe(obj), name))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, redact(str(v))[:5000]) for k, v in tags.items()]
        self._send("set tags", lambda: self.client.log_batch(self.run_id, tags=items))

    def log_run_files(self, run_dir: Path) -> None:
        for path, folder in run_file_artifacts(run_dir):
            self._send(f"log {path.name}", lambda p=path, f=folder: self.client.log_artifact(self.run_id, str(p), f))

    def log_model(self, run_dir: Path, example: dict, register: str | None) -> None:
        """The best model as the run's pyfunc ``model`` artifact, registered as ``register`` (tracking/registry.py)."""
        from .registry import log_qa_model

        self._send("log model", lambda: log_qa_model(self.uri, self.run_id, run_dir, example, register))

    def reopen(self) -> None:
        self._reopened = True
        self._send("reopen run", lambda: self.client.update_run(self.run_id, status="RUNNING"))
        self._start_system_metrics()

    def finish(self, status: str) -> None:
        if self._resumed and not self._reopened:
            return  # the resume failed before training resumed: the run keeps the status it had
        if self._monitor is not None:
            self._monitor.finish()
        # MLflow has no PRUNED status: a pruned trial's run ends KILLED (stopped early, not broken) with its tag
        # `status` = PRUNED, which reports and sweep summaries count apart.
        ended = "KILLED" if status == "PRUNED" else status
        self._send("end run", lambda: self.client.set_terminated(self.run_id, ended))
        if not self._in_sweep:  # a sweep publishes its view once, when it ends (tracking/parents.py)
            from .mlflow_view import publish_view

            self._send("publish view", lambda: publish_view(self.client, self.experiment_id, self._optimize_metric))
        self._stop_writer()  # what it was sending is sent; the rest goes now, from here, once more whatever the retry
        if not self._drain():
            log.error("MLflow at %s is still unreachable: %d tracking calls were not sent "
                      "(the run's metrics are in %s). "
                      "Send them when it is back: python -m extractive_qa.sync %s", self.uri, len(self._queue),
                      self.run_dir / "metrics.jsonl", self.run_dir)
