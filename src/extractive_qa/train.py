"""``python -m extractive_qa.train [overrides]`` (Hydra; ``-m`` for sweeps): one training job, with a true exit
code. The recipe itself -- setup, loop, evaluation, checkpoints, finish -- is :mod:`extractive_qa.recipe`.
Returns the best dev score by ``optimize_metric`` (what an Optuna sweep maximises).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # a bad config value is refused before the imports below load torch (README: timings)
    from .core.precheck import refuse_bad_config
    from .core.secrets import lift_passwords

    sys.argv[1:] = lift_passwords(sys.argv[1:])  # before anything reads or records the command line (core/secrets.py)
    refuse_bad_config("train", sys.argv[1:])

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .core.config import CONF_DIR, to_plain
from .core.errors import SetupError, disk_full_message, log_to_files, run_cli, setup_message
from .core.runs import FAILED, FINISHED, KILLED, PRUNED, RunPruned
from .core.schema import ConfigError, check_train_config
from .core.shutdown import collect_then_freeze_at_exit
from .engine.checkpointing import Interrupted
from .engine.setup import remove_if_only_logs
from .recipe import train
from .tracking.base import backend_for
from .tracking.sweep import job_running, record_job_outcome, sweep_of_job, watch_launcher

log = logging.getLogger(__name__)


def run_dir_of_job() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _error_text(err: BaseException) -> str:
    msg = str(err)
    return msg if msg.startswith("error: ") else setup_message([err]) if isinstance(err,
                                                                                    SetupError) else f"error: {msg}"


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Exit codes of a single run: 2 setup error, 3 non-finite loss, 130 interrupted. Inside a sweep a
    failed job is logged to its own train.log, recorded FAILED and returns ``None`` (Optuna marks the
    trial failed), and the sweep goes on; the sweep's summary and exit code tell (see tracking/sweep.py)."""
    sweep, job_dir = sweep_of_job(), run_dir_of_job()
    collect_then_freeze_at_exit()  # a launcher's worker process ends promptly too, not only `python -m` (run_cli)
    try:
        check_train_config(to_plain(cfg))
    except ConfigError as err:  # before anything is made: no run folder (Hydra's is removed), no MLflow run
        if sweep is None:
            print(err, file=sys.stderr)
            remove_if_only_logs(job_dir)
            sys.exit(2)
        log.error("job %s failed: %s", sweep["job"], err)
        record_job_outcome(sweep, FAILED, job_dir, error=str(err))
        return None
    watch_launcher(sweep)  # a worker process ends with its launcher
    job_running(True)
    try:
        best, run_dir = train(cfg, job_dir)
        record_job_outcome(sweep, FINISHED, run_dir, best=best)
        return best
    except RunPruned as pruned:  # an Optuna trial its pruner stopped: not a failure; the sweep goes on
        log.info("job %s %s", sweep["job"] if sweep else "", pruned)
        record_job_outcome(sweep, PRUNED, job_dir, error=str(pruned), best=pruned.value)
        return pruned.value
    except Interrupted as stopped:
        where = (f"resume={stopped.checkpoint.parent.parent}" if stopped.checkpoint
                 else "nothing to resume: run it again")
        print(f"stopped: {stopped}. The MLflow run is marked KILLED. Resume with the same command plus {where}",
              file=sys.stderr)
        record_job_outcome(sweep, KILLED, job_dir, error=str(stopped))
        if sweep is not None:
            backend_for(cfg.tracking, cfg.paths.root).sweep_stopped(sweep)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - reported, then handled per run mode
        disk_full = disk_full_message(err, str(job_dir if job_dir.is_dir() else cfg.paths.output_dir))
        text = disk_full or _error_text(err)
        if sweep is None and (disk_full or isinstance(err, (SetupError, FloatingPointError))):
            print(text, file=sys.stderr)
            log_to_files(text)  # train.log says why the run ended, as the terminal did
            sys.exit(3 if isinstance(err, FloatingPointError) else 2)
        if sweep is None:
            raise
        log.error("job %s failed: %s", sweep["job"], text, exc_info=not isinstance(err, (SetupError,
                                                                                         FloatingPointError)))
        record_job_outcome(sweep, FAILED, job_dir, error=text)
        return None
    finally:
        job_running(False)


if __name__ == "__main__":
    run_cli(main)
