"""The MLflow parent run of a sweep: opened (or found again) at the start, closed with the jobs' counts.

Children point at it with MLflow's ``mlflow.parentRunId`` tag, so the UI nests them under it. A sweep
is found again by its digest (``sweep.digest`` tag): re-running the same command continues the same
parent instead of adding another.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from ..core.runs import RUNNING, read_run_record
from ..core.secrets import redact
from .base import RunRow
from .naming import CONFIGURATION_TAG, GROUP_TAG, PARENT_TAG, configuration_label
from .store import client_for, connect, create_run, with_retry

log = logging.getLogger(__name__)

RUN_COLOR_TAG = "mlflow.runColor"  # the colour the UI draws a run in (tables, bars, curves, legends)
# Okabe & Ito's colour-blind-safe palette: one colour per configuration, shared by its seeds.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
PARENT_COLOR = "#999999"


LAUNCHER_TAG = "sweep.launcher"  # the process that launched the sweep (host, pid, start): gone means the sweep is over


def end_if_orphaned(client, parent) -> object:
    """A sweep's parent still RUNNING whose launching process is gone (killed, a closed session) ends KILLED,
    with its jobs counted as their run folders and the store read now: whoever reads the sweep next tells the
    store, as with a run (core/runs.py). Returns the parent as it now stands."""
    from ..core.runs import process_alive

    if parent.info.status != RUNNING:
        return parent
    try:
        launcher = json.loads(parent.data.tags.get(LAUNCHER_TAG) or "{}")
    except ValueError:
        launcher = {}
    if process_alive(launcher) is not False:
        return parent
    jobs = [row_of(r) for r in children_of(client, parent)]  # reading each ends a dead job KILLED too
    counts = {s: sum(j.status == s for j in jobs) for s in ("FINISHED", "FAILED", "KILLED", RUNNING)}
    _set_tags(client, parent.info.run_id, {**{f"jobs.{s.lower()}": str(n) for s, n in counts.items()},
                                           "error": f"killed: the sweep's launcher (pid {launcher.get('pid')} on "
                                                    f"{launcher.get('host')}) ended before the sweep did"})
    with_retry(lambda: client.set_terminated(parent.info.run_id, "KILLED"), "end orphaned parent")
    log.warning("sweep %s: its launcher is gone; parent run %s ended KILLED", parent.data.tags.get("sweep.id"),
                parent.info.run_id)
    return with_retry(lambda: client.get_run(parent.info.run_id), "get parent run")


DIR_TAG_PREFIX = "sweep.dirs."  # + a digest of a folder the sweep ran in; the folder is the value


def dir_tag(folder: str) -> str:
    """The parent's tag naming one folder its sweep ran in. One tag per folder, not one list in a tag: processes
    that join a sweep at once (one Optuna study from two machines) each add theirs, and a read-modify-write of
    a shared list lost one of them (seen once in three runs of the two-process test)."""
    import hashlib

    return DIR_TAG_PREFIX + hashlib.sha256(folder.encode()).hexdigest()[:12]


def sweep_dirs(run) -> list[str]:
    """Every folder the parent's sweep ran in (also from stores written before, with a ``sweep.dirs`` list)."""
    tags = run.data.tags
    listed = tags.get("sweep.dirs", tags.get("sweep.dir", "")).split("\n")
    tagged = [v for k, v in tags.items() if k.startswith(DIR_TAG_PREFIX)]
    return list(dict.fromkeys(d for d in [*listed, *tagged] if d))


def find_parent_run(client, experiment_id: str, digest: str):
    runs = with_retry(lambda: client.search_runs(
        [experiment_id], filter_string=f"tags.`sweep.digest` = '{digest}' and tags.`{PARENT_TAG}` = 'true'",
        order_by=["attributes.start_time DESC"], max_results=1), "find parent run")
    return runs[0] if runs else None


def open_parent_run(uri: str, config: DictConfig, info: dict) -> str:
    """The parent run id of the sweep ``info`` describes (see :mod:`.sweep`), in the store at ``uri``."""
    client, experiment_id = connect(uri, info["experiment"], config.tracking.get("artifact_root"))
    tags = {"sweep.id": info["id"], "sweep.digest": info["digest"], "sweep.keys": ", ".join(info["swept_keys"]),
            "sweep.command": info["command"][:5000], "sweep.overrides": " ".join(info["overrides"])[:5000],
            "sweep.dir": info["dir"], PARENT_TAG: "true", "mlflow.note.content": _note(info),
            LAUNCHER_TAG: json.dumps(info.get("launcher") or {})}
    tags[dir_tag(info["dir"])] = info["dir"]
    found = find_parent_run(client, experiment_id, info["digest"])
    if found is not None:
        run_id = found.info.run_id
        with_retry(lambda: client.update_run(run_id, status="RUNNING"), "reopen parent run")
        log.info("continuing sweep %s: parent run %s", info["id"], run_id)
    else:
        from .naming import short_keys

        spelled = [f"{s}={k}" if s != k else k for k, s in short_keys(info["swept_keys"]).items()]
        name = f"sweep {info['id']}: {', '.join(spelled) or 'one job'}"
        created = create_run(client, experiment_id, name, tags).info.run_id
        run_id = _one_parent(client, experiment_id, info["digest"], created)
    _set_tags(client, run_id, tags)
    return run_id


def _one_parent(client, experiment_id: str, digest: str, mine: str) -> str:
    """Several processes that start the same sweep at once (one Optuna study from several machines, a SLURM
    array) each create a parent; they all agree on the earliest (start time, then id) and the others delete
    their own: one parent per sweep."""
    runs = with_retry(lambda: client.search_runs(
        [experiment_id], filter_string=f"tags.`sweep.digest` = '{digest}' and tags.`{PARENT_TAG}` = 'true'",
        max_results=100), "find parent runs")
    chosen = min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if runs else mine
    if chosen != mine:
        with_retry(lambda: client.delete_run(mine), "delete duplicate parent")
        log.info("another process opened this sweep's parent first: joining %s", chosen)
    return chosen


def _set_tags(client, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, redact(v)) for k, v in tags.items()]
    with_retry(lambda: client.log_batch(run_id, tags=items), "tag parent run")


def _note(info: dict) -> str:
    keys = ", ".join(info["swept_keys"]) or "nothing"
    return (f"Sweep `{info['id']}` over {keys}.\n\n`{info['command']}`\n\nIts jobs are the runs nested under this one; "
            "when seeds are swept, each configuration also has a run (`… · N seeds · id`) with the mean and std of "
            "its jobs' best dev scores (`seeds/*`: compare configurations side by side in the chart view). "
            "`make report` writes the comparison, with intervals and p-values, into this run's artifacts (report/).")


def children_of(client, parent, configurations: bool = False) -> list:
    """The runs nested under ``parent``: its jobs, or (``configurations=True``) its configuration runs."""
    runs = with_retry(lambda: client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=5000), "find child runs")
    return [r for r in runs if (CONFIGURATION_TAG in r.data.tags) == configurations]


def training_runs(client, experiment_id: str) -> list:
    """The experiment's training runs: every run but the sweeps' parents and configuration runs."""
    runs = with_retry(lambda: client.search_runs([experiment_id], max_results=5000), "find runs")
    return [r for r in runs if PARENT_TAG not in r.data.tags and CONFIGURATION_TAG not in r.data.tags]


def row_of(run) -> RunRow:
    """A :class:`~extractive_qa.tracking.base.RunRow` from an MLflow run (its ``sweep.values`` tag holds the
    swept values)."""
    try:
        values = json.loads(run.data.tags.get("sweep.values") or "{}")
    except ValueError:
        values = {}
    status, run_dir = run.info.status, run.data.tags.get("run_dir")
    if run.data.tags.get("status") == "PRUNED":  # MLflow has no PRUNED status: the run's tag says it
        status = "PRUNED"
    if status == RUNNING and run_dir and Path(run_dir).is_dir():
        # A run whose process died without a word still says RUNNING in the store: its run dir can tell (and
        # reading it as KILLED ends the store's run KILLED too, see core/runs.py).
        status = (read_run_record(Path(run_dir)) or {}).get("status", status)
    return RunRow(name=run.info.run_name, values=values, status=status, metrics=dict(run.data.metrics),
                  run_id=run.info.run_id, params=dict(run.data.params), run_dir=run_dir)


def close_parent_run(info: dict, counts: dict[str, int]) -> None:
    """End the parent: FINISHED only when every job finished; the counts become tags, the best job's dev
    scores its metrics, and -- when seeds are swept -- each configuration gets its run (:func:`configuration_runs`)."""
    from .summary import parent_metrics

    client = client_for(info["tracking_uri"])
    run_id = info["parent_run_id"]
    parent = with_retry(lambda: client.get_run(run_id), "get parent run")
    jobs = [row_of(r) for r in children_of(client, parent)]
    if len(jobs) > sum(counts.values()):  # jobs of other processes too (an Optuna study several ran): count all
        counts = {s: sum(j.status == s for j in jobs) for s in counts}
    _set_tags(client, run_id, {f"jobs.{s.lower()}": str(n) for s, n in counts.items()})
    metric = info.get("optimize_metric") or "em"
    _log_at_step_0(client, run_id, parent_metrics(jobs, metric))
    finished = [j for j in jobs if j.status == "FINISHED" and j.metrics]
    if finished:
        from .registry import mark_best_version
        from .summary import rank

        marked = mark_best_version(client, rank(finished, metric)[0].run_id, info["id"])
        if marked:
            _set_tags(client, run_id, {"sweep.best_model": ", ".join(marked)})
    configuration_runs(client, parent, jobs, info)
    colour_by_configuration(client, parent, jobs)
    from .mlflow_view import publish_view

    publish_view(client, parent.info.experiment_id, metric)
    status = "FINISHED" if not counts.get("FAILED") and not counts.get("KILLED") else (
        "FAILED" if counts.get("FAILED") else "KILLED")
    with_retry(lambda: client.set_terminated(run_id, status), "end parent run")


def _log_at_step_0(client, run_id: str, metrics: dict[str, float]) -> None:
    """Comparison numbers at step 0: MLflow's chart view draws a metric that every run logs at step 0 as one
    bar per run (logged at a run's last step, it is a dot on a step axis)."""
    from mlflow.entities import Metric

    if metrics:
        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
        with_retry(lambda: client.log_batch(run_id, metrics=batch), "log metrics")


def colour_by_configuration(client, parent, jobs: list[RunRow]) -> None:
    """One colour per configuration for its jobs and its configuration run (seeds of one configuration
    share it), grey for the parent: in the chart view the bars of a configuration read as a group, and
    configurations never come out in two shades of red. MLflow's own colours are drawn at random."""
    from .summary import group_by_config

    groups = group_by_config(jobs)
    colour = {r.run_id: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups) for r in g.runs}
    for config in children_of(client, parent, configurations=True):
        values = json.loads(config.data.tags.get("sweep.values") or "{}")
        match = next((i for i, g in enumerate(groups) if g.values == values), None)
        if match is not None:
            colour[config.info.run_id] = PALETTE[match % len(PALETTE)]
    colour[parent.info.run_id] = PARENT_COLOR
    for run_id, value in colour.items():
        _set_tags(client, run_id, {RUN_COLOR_TAG: value})


def configuration_runs(client, parent, jobs: list[RunRow], info: dict) -> list[str]:
    """One run per configuration of a sweep that swept seeds, nested under its parent beside the jobs:
    named by what differs (``warmup_ratio=0.1 · 2 seeds · vbaxpx``), its swept values as params, the mean and
    std over its seeds as ``seeds/*`` metrics. In the chart view the configurations then stand side by
    side in one chart per score. A re-run sweep updates them instead of adding more."""
    from mlflow.entities import Param

    from .summary import configuration_metrics, group_by_config, seeds_swept

    finished = [j for j in jobs if j.status == "FINISHED"]
    if not seeds_swept(finished):
        return []
    existing = {r.data.tags.get("sweep.values"): r.info.run_id
                for r in children_of(client, parent, configurations=True)}
    metric = info.get("optimize_metric") or "em"
    experiment = parent.info.experiment_id
    made = []
    for group in group_by_config(finished):
        values = json.dumps(group.values, sort_keys=True, ensure_ascii=False)
        n = len(group.runs)
        names = ", ".join(sorted(r.name for r in group.runs))
        tags = {"mlflow.parentRunId": parent.info.run_id, CONFIGURATION_TAG: "true", "sweep.id": info["id"],
                "sweep.values": values, "mlflow.note.content": f"Mean and std over {n} seeds of: {names}.",
                GROUP_TAG: configuration_label(group.values, list(info.get("swept_keys") or group.values),
                                               info["id"])}
        run_id = existing.get(values)
        if run_id is None:
            label, _, sweep_id = tags[GROUP_TAG].rpartition(" · ")
            name = f"{label} · {n} seeds · {sweep_id}"
            run = create_run(client, experiment, name, tags)
            run_id = run.info.run_id
            params = [Param(k, str(v)) for k, v in group.values.items()]
            if params:
                with_retry(lambda r=run_id, p=params: client.log_batch(r, params=p), "log configuration params")
        else:
            _set_tags(client, run_id, tags)
        _log_at_step_0(client, run_id, configuration_metrics(group, metric))
        with_retry(lambda r=run_id: client.set_terminated(r, "FINISHED"), "end configuration run")
        made.append(run_id)
    return made


def end_parent_killed(sweep: dict | None) -> None:
    """A job was interrupted: the sweep stops here, so its parent ends KILLED now."""
    if not sweep or not sweep.get("parent_run_id"):
        return
    try:
        client_for(sweep["tracking_uri"]).set_terminated(sweep["parent_run_id"], "KILLED")
    except Exception as err:  # noqa: BLE001 - the job is stopping anyway
        log.warning("could not mark the sweep's parent run KILLED: %s", err)


def find_sweep(client, sweep: str | None):
    """The parent run of ``sweep`` (its id or its folder), or of the newest sweep in the store."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    condition = f"tags.`{PARENT_TAG}` = 'true'"
    folder = str(Path(sweep).resolve()) if sweep and ("/" in sweep or os.sep in sweep) else None
    if folder:  # any folder the sweep ran in (a re-run adds one)
        condition += f" and tags.`{dir_tag(folder)}` = '{folder}'"
    elif sweep:
        condition += f" and tags.`sweep.id` = '{sweep}'"

    def search(condition: str) -> list:
        return with_retry(lambda: client.search_runs(experiments, filter_string=condition,
                                                     order_by=["attributes.start_time DESC"], max_results=100),
                          "find sweep")

    found = search(condition)
    if folder and not found:  # a parent written before the folders had a tag each: matched loosely, then exactly
        found = [r for r in search(f"tags.`{PARENT_TAG}` = 'true' and tags.`sweep.dirs` LIKE '%{folder}%'")
                 if folder in sweep_dirs(r)]
    if not found:
        raise SystemExit(f"error: no sweep {sweep!r} in the store" if sweep else
                         "error: no sweep in the store; run one (python -m extractive_qa.train -m ...) "
                         "or pass --experiment NAME")
    return end_if_orphaned(client, found[0])
