"""``run.json``: the record every run dir keeps of what the run is and how it stands.

It holds the run's identity (see :mod:`extractive_qa.engine.resume`), its status (RUNNING, FINISHED,
FAILED, KILLED), the MLflow run id, the best dev EM and, after a failure, the error. Resuming, sweep
summaries and ``python -m extractive_qa.sync`` read it; a damaged one is skipped with a warning that
names it, never fatal.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .outputs import write_json

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"
FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"


def read_run_record(run_dir: Path) -> dict | None:
    """``run.json`` of ``run_dir``; ``None`` (with a warning naming the file) when it is unreadable."""
    path = Path(run_dir) / RUN_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable run record %s (%s)", path, err)
        return None
    return record if isinstance(record, dict) else None


def update_run_record(run_dir: Path, **fields) -> dict:
    record = read_run_record(run_dir) or {}
    record.update(fields, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json(Path(run_dir) / RUN_RECORD, record)
    return record
