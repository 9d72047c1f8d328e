"""``run.json``: the record every run dir keeps of what the run is and how it stands.

It holds the run's identity (see :mod:`extractive_qa.engine.resume`), its status (RUNNING, FINISHED,
FAILED, KILLED), the MLflow run id, the best dev EM and, after a failure, the error. Resuming, sweep
summaries and ``python -m extractive_qa.sync`` read it; a damaged one is skipped with a warning that
names it, never fatal.

A process that dies without a word (``kill -9``, the out-of-memory killer, a closed notebook) cannot write
its status. So a run records its ``process`` -- host, pid and the process's start time -- and a
``heartbeat`` at each log point, and :func:`read_run_record` reads a RUNNING run whose process is gone as
KILLED: it writes that down and tells the listeners :func:`on_killed_run_found` registered (the MLflow
backend ends the store's run KILLED too). Every reader -- ``resume=auto``, ``make predict``, sweeps,
reports, ``sync`` -- goes through it. A run recorded by another host is left as it says (its process
cannot be looked at from here; its ``heartbeat`` tells a reader how fresh that is).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from .outputs import write_json
from .secrets import redact_tree

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"
FINISHED, FAILED, KILLED, RUNNING, PRUNED = "FINISHED", "FAILED", "KILLED", "RUNNING", "PRUNED"


class RunPruned(Exception):  # noqa: N818 - a run's end, not an error
    """An Optuna trial's run stopped by its pruner: what it wrote stays, its status is PRUNED."""

    def __init__(self, step: int, value: float):
        super().__init__(f"pruned at step {step} (dev score {value:.4f}): below what the study's pruner lets go on")
        self.step, self.value = step, value

_KILLED_LISTENERS: list[Callable[[Path, dict], None]] = []


def on_killed_run_found(listener: Callable[[Path, dict], None]) -> None:
    """Call ``listener(run_dir, record)`` when a RUNNING run turns out to have lost its process."""
    if listener not in _KILLED_LISTENERS:
        _KILLED_LISTENERS.append(listener)


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``): with the pid, it names one
    process for good -- a pid reused by a later process has another start."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in parentheses may hold spaces


def this_process() -> dict:
    """What identifies this process to a later reader: host, pid, its start (``/proc``) and the wall time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def process_alive(process: dict) -> bool | None:
    """Whether the recorded process still runs: ``None`` when that cannot be told from here (another host)."""
    if not isinstance(process, dict) or process.get("host") != socket.gethostname() or not process.get("pid"):
        return None
    pid = int(process["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with that pid: alive, but is it ours?
        pass
    if process.get("proc_start") is not None and Path("/proc").is_dir():
        return _process_start(pid) == process["proc_start"]
    return True


def read_run_record(run_dir: Path) -> dict | None:
    """``run.json`` of ``run_dir``; ``None`` (with a warning naming the file) when it is unreadable. A RUNNING
    run whose process is gone is returned -- and recorded -- as KILLED (see the module docstring)."""
    record = _read(run_dir)
    if record and record.get("status") == RUNNING and process_alive(record.get("process")) is False:
        record = _mark_killed(Path(run_dir), record)
    elif record and record.get("status") == KILLED and not record.get("store_ended", True) and _KILLED_LISTENERS:
        record = _tell_store(Path(run_dir), record)  # an earlier reader could not reach the store: mend it now
    return record


def _read(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RUN_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable run record %s (%s)", path, err)
        return None
    return record if isinstance(record, dict) else None


def _mark_killed(run_dir: Path, record: dict) -> dict:
    process = record["process"]
    beat = record.get("heartbeat") or process.get("started")
    error = (f"killed: its process (pid {process['pid']} on {process['host']}) ended without recording a status "
             f"(kill -9, out of memory, a closed session); last heard of at {beat}")
    record = {**record, "status": KILLED, "error": record.get("error") or error}
    log.warning("run %s was %s", run_dir, record["error"])
    return _tell_store(run_dir, {**record, "store_ended": False})


def _tell_store(run_dir: Path, record: dict) -> dict:
    """The listeners end the run KILLED in its tracking store too; ``store_ended`` records whether that was
    done, so a reader that could not (no store reachable, no listener in its process) leaves it to the next."""
    ended = bool(_KILLED_LISTENERS)
    for listener in _KILLED_LISTENERS:
        try:
            listener(run_dir, record)
        except Exception as err:  # noqa: BLE001 - the run dir says KILLED; the next reader tries the store again
            ended = False
            log.warning("could not mark %s KILLED in its tracking store (the next reader will try again): %s",
                        run_dir, err)
    record = {**record, "store_ended": ended}
    try:
        update_run_record(run_dir, status=KILLED, error=record["error"], store_ended=ended)
    except OSError as err:  # a read-only copy of someone's outputs: reading it as KILLED is still true
        log.warning("could not record %s as KILLED (%s)", run_dir, err)
    return record


def update_run_record(run_dir: Path, **fields) -> dict:
    record = _read(run_dir) or {}
    record.update(redact_tree(fields), updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json(Path(run_dir) / RUN_RECORD, record)
    return record


def read_metrics(run_dir: Path) -> list[tuple[str, float, int, int]]:
    """``(key, value, timestamp ms, step)`` of every line of ``metrics.jsonl`` (a torn last line is skipped; a
    ``null`` -- a number that was not finite, such as a diverged loss -- reads as NaN, as MLflow stores it)."""
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
        rows.extend((k, float("nan") if v is None else float(v), stamp, step) for k, v in entry.items())
    return rows
