"""A Hydra multirun as one sweep: its identity, an MLflow parent run, each job's outcome, a summary.

:class:`SweepCallback` (configured under ``hydra.callbacks`` in ``conf/train.yaml``) runs in the
process that launches the jobs, whatever the launcher (in-process, joblib, submitit):

* at the start it names the sweep -- a short id from a digest of its overrides as typed, the keys it
  sweeps, the command -- writes that to ``<sweep dir>/sweep.json`` (jobs read it from there) and, with
  MLflow, opens the sweep's **parent run**; re-running the same command finds the same parent again;
* each job records its outcome in ``<sweep dir>/.jobs/<num>.json`` (:func:`record_job_outcome`);
* at the end it counts the outcomes, ends the parent FINISHED only when every job finished (FAILED or
  KILLED otherwise, with the counts as tags), prints one summary line per failed job and exits with
  status 1 when any job failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..core.outputs import write_json
from ..core.roles import role_of_override
from ..core.runs import RUN_RECORD, RUNNING, process_alive, read_run_record, this_process
from ..core.secrets import redact_tree
from .naming import command_line

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
JOBS_DIR = ".jobs"
SWEEP_SYNTAX = ("range(", "choice(", "interval(", "glob(", "tag(")


def swept_key(override: str) -> str | None:
    """``lr=1e-3,5e-3`` -> ``lr``; ``seed=range(3)`` -> ``seed``; ``lr=1e-3`` -> None."""
    if "=" not in override:
        return None
    key, value = override.split("=", 1)
    return key.lstrip("+~") if ("," in value or value.startswith(SWEEP_SYNTAX)) else None


def short_id(digest: str, length: int = 6) -> str:
    """A short, letters-only name for a digest (``qkfzbm``). Letters only because the id is typed back on
    Hydra command lines (``make predict ARGS="top_k=3 sweep=ID"``), where a hex id such as ``79e635``
    or ``012345`` is read as a number (7.9e636 = inf; 12345) and no longer names the sweep."""
    n, letters = int(digest, 16), []
    for _ in range(length):
        n, r = divmod(n, 26)
        letters.append(chr(ord("a") + r))
    return "".join(letters)


def describe_sweep(overrides: list[str], search_space: dict | None = None) -> dict:
    """Digest, short id and swept keys of a sweep from its overrides as typed (and an Optuna search space).
    Overrides whose role is not part of a sweep (paths, tracking, launcher, resume: :mod:`extractive_qa.core.roles`)
    leave the identity alone: re-running with another of these is the same sweep."""
    relevant = sorted(o for o in overrides if role_of_override(o).sweep)
    if search_space:
        relevant += sorted(f"{k}={v}" for k, v in search_space.items())
    digest = hashlib.sha256(json.dumps(relevant).encode()).hexdigest()[:16]
    keys = [k for k in (swept_key(o) for o in overrides) if k] + sorted(search_space or {})
    return {"digest": digest, "id": short_id(digest), "swept_keys": list(dict.fromkeys(keys)), "overrides": relevant}


def sweep_of_job() -> dict | None:
    """The running Hydra job's sweep (``sweep.json`` plus its job number), ``None`` outside a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(hc.sweep.dir).resolve()
    try:
        info = json.loads((sweep_dir / SWEEP_FILE).read_text())
    except (OSError, ValueError):  # launched without the callback: a sweep without a name
        info = {"dir": str(sweep_dir), "digest": None, "id": sweep_dir.name, "swept_keys": []}
    return {**info, "job": int(hc.job.num)}


def record_job_outcome(sweep: dict | None, status: str, run_dir: Path | None, error: str | None = None,
                       best: float | None = None) -> None:
    """``<sweep dir>/.jobs/<job>.json``: the job's status, run dir, error and best dev score (by the sweep's
    ``optimize_metric``)."""
    if sweep is None:
        return
    write_json(Path(sweep["dir"]) / JOBS_DIR / f"{sweep['job']}.json",
               {"job": sweep["job"], "status": status, "run_dir": str(run_dir) if run_dir else None, "error": error,
                "best": best, "optimize_metric": sweep.get("optimize_metric")})


def job_outcomes(sweep_dir: Path) -> list[dict]:
    """Every job's outcome: as it recorded it, else -- a job whose process died before it could (kill -9, out of
    memory) -- as its run folder's ``run.json`` reads (KILLED once its process is gone)."""
    outcomes = []
    for path in sorted((sweep_dir / JOBS_DIR).glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1):
        try:
            outcomes.append(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            log.warning("unreadable job outcome %s (%s)", path, err)
    known = {o.get("job") for o in outcomes}
    for record_path in sweep_dir.glob(f"*/{RUN_RECORD}"):
        job = record_path.parent.name
        if job.isdigit() and int(job) not in known and (record := read_run_record(record_path.parent)):
            outcomes.append({"job": int(job), "status": record.get("status", RUNNING),
                             "run_dir": str(record_path.parent), "error": record.get("error"), "best": None})
    return sorted(outcomes, key=lambda o: o.get("job", -1))


def _backend(config: DictConfig):
    from .base import backend_for

    return backend_for(config.tracking, config.paths.root)


def _experiment_name(config: DictConfig) -> str:
    return str(OmegaConf.select(config, "tracking.experiment_name") or config.experiment_name)


class SweepCallback(Callback):
    """See the module docstring."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        space = OmegaConf.select(config, "hydra.sweeper.params")
        info = describe_sweep(list(config.hydra.overrides.task), OmegaConf.to_container(space) if space else None)
        info.update(dir=str(sweep_dir), command=command_line(),
                    experiment=_experiment_name(config), optimize_metric=str(config.get("optimize_metric") or "em"),
                    parent_run_id=None, tracking_uri=None, launcher=this_process())
        info.update(_backend(config).open_sweep(config, info))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_json(sweep_dir / SWEEP_FILE, redact_tree(info))
        log.info("sweep %s (%s) in %s", info["id"], ", ".join(info["swept_keys"]) or "no swept keys", sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        try:
            info = json.loads((sweep_dir / SWEEP_FILE).read_text())
        except (OSError, ValueError):
            return
        outcomes = job_outcomes(sweep_dir)
        counts = {s: sum(o["status"] == s for o in outcomes) for s in ("FINISHED", "PRUNED", "FAILED", "KILLED")}
        if info.get("others_running"):  # a study shared with other processes: the last one closes the parent
            log.info("%d trials of this study still run elsewhere: the sweep's parent stays open for them",
                     info["others_running"])
        else:
            _backend(config).close_sweep(info, counts)
        failed = [o for o in outcomes if o["status"] not in ("FINISHED", "PRUNED")]
        lines = [f"sweep {info['id']}: {len(outcomes)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
        lines += [f"  job {o['job']} {o['status']}: {(o.get('error') or '').splitlines()[0] if o.get('error') else ''}"
                  + (f" (log: {o['run_dir']}/train.log)" if o.get("run_dir") else "") for o in failed]
        print("\n".join(lines), file=sys.stderr if failed else sys.stdout, flush=True)
        print(next_steps(info), flush=True)
        if failed:
            sys.exit(1)


def next_steps(info: dict) -> str:
    """What to do once a sweep has ended: its report (the verdict) and the UI (its runs, grouped by configuration)."""
    store = info.get("tracking_uri") or ""
    ui = "make ui" if not store.startswith(("http://", "https://")) else f"open {store}"
    return (f"next: make report ARGS=\"--sweep {info['id']}\"   (is the difference real? the report, also in the "
            f"sweep's parent run)\n      {ui}   (the runs of experiment {info.get('experiment', '')!r}, grouped by "
            "configuration)")


_watchdog: dict = {}  # this process's watch on its sweep's launcher (one per process, across its jobs)


def watch_launcher(sweep: dict | None) -> None:
    """In a job that runs in a process of its own (joblib/loky workers, submitit), end this process when the
    sweep's launcher is gone: a job still training is stopped as Ctrl-C would (a checkpoint, KILLED), an idle
    worker exits at once. Without it, a killed launcher left ~840 MB workers alive for minutes. The basic
    launcher runs its jobs in its own process: nothing to watch there."""
    import os
    import threading

    launcher = (sweep or {}).get("launcher")
    if not launcher or launcher.get("pid") == os.getpid() or _watchdog.get("thread"):
        return

    def watch() -> None:
        import signal
        import time

        while process_alive(launcher) is not False:
            time.sleep(1.0)
        log.warning("the sweep's launcher (pid %s) is gone: this worker stops", launcher.get("pid"))
        if _watchdog.get("job_running"):
            os.kill(os.getpid(), signal.SIGTERM)  # a graceful stop: checkpoint, KILLED, exit
            while _watchdog.get("job_running"):
                time.sleep(0.2)
        os._exit(0)

    _watchdog["thread"] = threading.Thread(target=watch, name="launcher-watchdog", daemon=True)
    _watchdog["thread"].start()


def job_running(running: bool) -> None:
    _watchdog["job_running"] = running
