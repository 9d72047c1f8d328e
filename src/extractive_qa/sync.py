"""``python -m extractive_qa.sync RUN_DIR [RUN_DIR ...]``: send a run folder's record to the tracking store.

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
from pathlib import Path

from .core.config import project_root
from .core.errors import SetupError, run_cli
from .tracking.base import backend_named


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m extractive_qa.sync`` (also read by the docs' test of every command)."""
    parser = argparse.ArgumentParser(prog="python -m extractive_qa.sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI or the project's mlflow.db)")
    parser.add_argument("--tracking", default="mlflow",
                        help="the backend to send to: a conf/tracking/ option (default: mlflow)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = arguments()
    args = parser.parse_args(argv)
    try:
        backend = backend_named(args.tracking, project_root(), args.uri)
        for run_dir in args.run_dirs:
            print(json.dumps(backend.sync(run_dir.resolve())))
    except (SetupError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    run_cli(main)  # one-line errors, secrets kept out, a prompt end (core/errors.py)
