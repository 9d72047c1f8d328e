"""Which run a job continues, and whether it may: run identity, run records, resume points.

A run's **identity** is its experiment, the config that decides its training trajectory (model, data
digests, window, optimizer, schedule, batch sizes, length, seed, precision, processes) and, in a
sweep, the sweep and the job number. Every run dir holds ``run.json`` -- the identity, a status
(RUNNING / FINISHED / FAILED / KILLED), the MLflow run id, the best dev EM -- updated as the run goes.

``resume=auto`` continues the newest unfinished run of the SAME identity from its newest checkpoint
that verifies; a FINISHED run of that identity is reported, never retrained. ``resume=<run dir or
checkpoint>`` continues that run, but refuses when the trajectory config differs (listing the keys)
unless ``resume_allow_changes=true``. Keys that cannot change the trajectory (logging, evaluation
cadence, output paths, tracking) may differ freely.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from ..core.config import flatten, to_plain
from ..core.errors import SetupError
from ..core.roles import role_of
from ..core.runs import FINISHED, RUN_RECORD, RUNNING, process_alive, read_run_record
from .checkpointing import checkpoints_of, load_trainer_state, newest_good_checkpoint, verify_checkpoint

log = logging.getLogger(__name__)

class ResumeError(SetupError):
    """A resume that cannot or must not go ahead; the message names the run, the checkpoint and the fix."""


class AlreadyFinished(Exception):
    """The run this job would resume has already finished."""

    def __init__(self, run_dir: Path, record: dict):
        super().__init__(f"{run_dir} already FINISHED (best dev EM {record.get('best_dev_em')}); nothing to resume. "
                         "Start a new run with resume=fresh.")
        self.run_dir, self.record = run_dir, record


def trajectory_config(cfg: DictConfig, digests: dict[str, str], processes: int) -> dict[str, str]:
    """The keys of ``cfg`` that decide the trajectory (their role says ``resume``: :mod:`extractive_qa.core.roles`)
    as strings, the data digests and the process count."""
    flat = flatten(to_plain(cfg))
    keep = {k: str(v) for k, v in flat.items() if role_of(k).resume}
    keep.update({f"data.{split}_digest": d for split, d in digests.items()})
    keep["processes"] = str(processes)
    return dict(sorted(keep.items()))


def run_identity(cfg: DictConfig, digests: dict[str, str], processes: int, sweep: dict | None) -> dict:
    identity = {"experiment": str(cfg.experiment_name), "trajectory": trajectory_config(cfg, digests, processes),
                "sweep": sweep.get("digest") if sweep else None, "job": sweep.get("job") if sweep else None}
    identity["digest"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return identity


def trajectory_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """``key: old -> new`` for every trajectory key that differs."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys if old.get(k) != new.get(k)]


@dataclass
class ResumePoint:
    """Where a job continues: ``run_dir`` from ``checkpoint`` (with its trainer ``state``)."""

    run_dir: Path
    checkpoint: Path
    state: dict
    record: dict = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)  # trajectory changes allowed by resume_allow_changes


def _runs_of(output_dir: Path, identity: dict, current: Path) -> list[tuple[Path, dict]]:
    found = []
    for path in output_dir.rglob(RUN_RECORD):
        run_dir = path.parent
        if run_dir.resolve() == current.resolve():
            continue
        record = read_run_record(run_dir)
        if record and record.get("identity", {}).get("digest") == identity["digest"]:
            found.append((run_dir, record))
    return found


def _auto(output_dir: Path, identity: dict, current: Path) -> ResumePoint | None:
    runs = _runs_of(output_dir, identity, current)
    finished = [(d, r) for d, r in runs if r.get("status") == FINISHED]
    resumable, passed_over = [], []
    for run_dir, record in runs:
        status = record.get("status")
        if status == FINISHED:
            continue
        if status == RUNNING and process_alive(record.get("process")):
            passed_over.append(f"{run_dir} is running now (pid {record['process']['pid']}): not continued twice")
        elif (checkpoint := newest_good_checkpoint(run_dir)) is not None:
            resumable.append((checkpoint.stat().st_mtime, run_dir, checkpoint, record))
        else:
            passed_over.append(f"{run_dir} ({status}) has no complete checkpoint to continue from (with "
                               "checkpoint_steps=N a run keeps one every N steps and at epoch ends)")
    if resumable:
        _, run_dir, checkpoint, record = max(resumable, key=lambda r: r[0])
        return ResumePoint(run_dir, checkpoint, load_trainer_state(checkpoint), record)
    if finished:
        run_dir, record = max(finished, key=lambda r: r[1].get("updated", ""))
        raise AlreadyFinished(run_dir, record)
    if passed_over:
        log.warning("resume=auto: starting fresh: no run of this identity (%s) can be continued: %s",
                    identity["digest"], "; ".join(passed_over))
    else:
        log.info("resume=auto: no unfinished run of this identity (%s) under %s; starting fresh",
                 identity["digest"], output_dir)
    return None


def _explicit(path: Path, identity: dict, allow_changes: bool) -> ResumePoint:
    """``path`` is a run dir (its newest good checkpoint) or one checkpoint (it, or an older good one)."""
    is_checkpoint = path.parent.name == "checkpoints"
    run_dir = path.parent.parent if is_checkpoint else path
    record = read_run_record(run_dir) or {}
    if record.get("status") == FINISHED:
        raise AlreadyFinished(run_dir, record)
    checkpoint = newest_good_checkpoint(run_dir, int(path.name.split("_", 1)[1]) if is_checkpoint else None)
    if checkpoint is None:
        found = "; ".join(f"{c.name}: {verify_checkpoint(c)}" for c in checkpoints_of(run_dir)) or "it has none"
        raise ResumeError(f"resume={path}: no usable checkpoint in {run_dir} ({found}). "
                          "Fix: resume another run, or start again with resume=fresh.")
    state = load_trainer_state(checkpoint)
    saved = state.get("identity", {}).get("trajectory")
    changes = trajectory_changes(saved, identity["trajectory"]) if saved is not None else []
    if saved is None:
        log.warning("checkpoint %s records no identity (an older version wrote it): its config cannot be checked",
                    checkpoint)
    if changes and not allow_changes:
        raise ResumeError(f"resume={path}: this config would train a different run than {run_dir} did:\n  "
                          + "\n  ".join(changes)
                          + "\nFix: resume with the run's own settings (its config_resolved.yaml), "
                          "start a new run (resume=fresh), or continue anyway with resume_allow_changes=true "
                          "(recorded in the run).")
    return ResumePoint(run_dir, checkpoint, state, record, changes)


def find_resume_point(resume: str | None, output_dir: Path, identity: dict, current_run_dir: Path,
                      in_sweep: bool, allow_changes: bool = False) -> ResumePoint | None:
    """The run and checkpoint this job continues, ``None`` for a fresh run; :class:`AlreadyFinished`
    when that run has finished, :class:`ResumeError` when it cannot be resumed as asked.

    ``resume``: ``null`` -- ``auto`` inside a sweep (re-running a sweep continues it), fresh otherwise;
    ``fresh`` -- always a new run; ``auto``; or a run dir / checkpoint folder.
    """
    mode = str(resume) if resume else ("auto" if in_sweep else "fresh")
    if mode == "fresh":
        return None
    if mode == "auto":
        return _auto(output_dir, identity, current_run_dir)
    path = Path(mode).expanduser().resolve()
    if not path.exists():
        raise ResumeError(f"resume={resume}: no such run dir or checkpoint. Fix: resume=auto, resume=fresh or an "
                          "existing outputs/... path")
    return _explicit(path, identity, allow_changes)


def check_rng_state(checkpoint: Path, process_index: int) -> None:
    """Refuse a checkpoint whose RNG state cannot be read. Accelerate's ``load_state`` skips an unreadable
    one with an INFO line and goes on: the resumed run would then draw other dropout masks and batch orders
    than the run it claims to continue. Read with ``weights_only=True`` (no code from the file)."""
    from accelerate.utils import load

    path = Path(checkpoint) / f"random_states_{process_index}.pkl"
    try:
        states = load(path)
        if "torch_manual_seed" not in states:
            raise ValueError("it holds no torch RNG state")
    except Exception as err:  # noqa: BLE001 - any failure refuses the resume, naming the file and the fix
        raise ResumeError(f"checkpoint {checkpoint}: its RNG state {path.name} cannot be read ({type(err).__name__}: "
                          f"{str(err)[:200]}), so a resume would not replay the same batches and dropout. Fix: "
                          "resume from an earlier checkpoint (resume=<run dir>/checkpoints/step_N) or start "
                          "fresh (resume=fresh)") from None
