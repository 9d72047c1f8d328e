"""Which run a job continues, in-process: identity, auto, explicit, finished, damaged -- over run dirs and
checkpoints written here."""

import json

import pytest

from extractive_qa.core.runs import update_run_record
from extractive_qa.engine.checkpointing import STATE_FILE, write_manifest
from extractive_qa.engine.resume import (
    AlreadyFinished,
    ResumeError,
    find_resume_point,
    run_identity,
    trajectory_changes,
)


def _run(root, name, identity, status, steps=(4,)):
    run = root / name
    run.mkdir(parents=True)
    update_run_record(run, identity=identity, status=status)
    for step in steps:
        ckpt = run / "checkpoints" / f"step_{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "model.safetensors").write_bytes(b"w" * step)
        (ckpt / STATE_FILE).write_text(json.dumps({"step": step, "identity": identity}))
        write_manifest(ckpt)
    return run


def test_auto_continues_only_the_same_identity_and_reports_a_finished_one(compose_train, tmp_path):
    cfg = compose_train()
    mine = run_identity(cfg, {"train": "t", "dev": "d"}, 1, None)
    other = run_identity(compose_train("lr=1e-4"), {"train": "t", "dev": "d"}, 1, None)
    assert mine["digest"] != other["digest"]
    out = tmp_path / "out"
    _run(out, "other", other, "KILLED", steps=(8,))
    killed = _run(out, "killed", mine, "KILLED", steps=(4, 6))
    point = find_resume_point("auto", out, mine, tmp_path / "new", in_sweep=False)
    assert point.run_dir == killed and point.checkpoint.name == "step_6" and point.state["step"] == 6
    assert find_resume_point(None, out, mine, tmp_path / "new", in_sweep=False) is None  # a single run starts fresh
    update_run_record(killed, status="FINISHED")
    with pytest.raises(AlreadyFinished):
        find_resume_point("auto", out, mine, tmp_path / "new", in_sweep=True)


def test_explicit_resume_refuses_another_trajectory_and_falls_back_past_damage(compose_train, tmp_path):
    digests = {"train": "t", "dev": "d"}
    saved = run_identity(compose_train(), digests, 1, None)
    run = _run(tmp_path / "out", "r", saved, "KILLED", steps=(4, 6))
    (run / "checkpoints" / "step_6" / "model.safetensors").write_bytes(b"x")  # truncated
    point = find_resume_point(str(run), tmp_path / "out", saved, tmp_path / "new", in_sweep=False)
    assert point.checkpoint.name == "step_4"
    changed = run_identity(compose_train("lr=1e-4", "batch_size=8"), digests, 1, None)
    with pytest.raises(ResumeError, match="lr: 3e-05 -> 0.0001"):
        find_resume_point(str(run), tmp_path / "out", changed, tmp_path / "new", in_sweep=False)
    allowed = find_resume_point(str(run), tmp_path / "out", changed, tmp_path / "new", in_sweep=False,
                                allow_changes=True)
    assert allowed.changes == ["batch_size: 16 -> 8", "lr: 3e-05 -> 0.0001", "optimizer.lr: 3e-05 -> 0.0001"]
    assert trajectory_changes({"a": "1"}, {"b": "2"}) == ["a: 1 -> (unset)", "b: (unset) -> 2"]
