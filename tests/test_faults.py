"""Faults provoked for real, at exact points (tests/fault_runner.py), never by racing a clock:
resume identity, a tracking server that dies mid-run, damaged checkpoints, a bad job in a sweep,
signals during start-up and evaluation."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from extractive_qa.engine.checkpointing import checkpoints_of

from helpers import empty_store, mlflow_server, run_module, run_with_faults


def tiny(synthetic, tmp: Path, uri: str | None = None, experiment: str = "faults") -> list[str]:
    tracking = [f"tracking.uri={uri}", f"experiment_name={experiment}"] if uri else ["tracking=none"]
    return [f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache", "model=tiny",
            f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}", "data.limit_train=80",
            "data.limit_dev=12", "data.limit_test=8", "epochs=2", "batch_size=8", "logging_steps=2",
            "predict_test=false",
            *tracking]


def runs_of(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def children(uri: str, experiment: str) -> list:
    return [r for r in runs_of(uri, experiment) if "mlflow.parentRunId" in r.data.tags]


def metric_steps(run_dir: Path, key: str) -> list[int]:
    return [m["step"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if key in m]


# ---------------------------------------------------------------- resume identity
@pytest.fixture(scope="module")
def lr_sweep(synthetic, tmp_path_factory):
    """`-m lr=1e-3,5e-3 resume=auto checkpoint_steps=5`: the exact command of the bug report."""
    tmp = tmp_path_factory.mktemp("lr_sweep")
    uri = empty_store(tmp)
    args = ["-m", "lr=1e-3,5e-3", "resume=auto", "checkpoint_steps=5", *tiny(synthetic, tmp, uri, "identity")]
    first = run_module("extractive_qa.train", *args, f"hydra.sweep.dir={tmp}/outputs/sweep1")
    return {"tmp": tmp, "uri": uri, "args": args, "first": first}


def test_each_sweep_job_trains_its_own_run_and_a_rerun_trains_nothing(lr_sweep):
    tmp, uri = lr_sweep["tmp"], lr_sweep["uri"]
    jobs = [tmp / "outputs" / "sweep1" / str(j) for j in (0, 1)]
    for job in jobs:  # job 1 trained its own 20 steps instead of "resuming" job 0's final checkpoint
        assert json.loads((job / "metrics.json").read_text())["steps"] == 20
        assert json.loads((job / "run.json").read_text())["status"] == "FINISHED"
    lrs = {r.data.params["lr"] for r in children(uri, "identity")}
    assert lrs == {"0.001", "0.005"}
    again = run_module("extractive_qa.train", *lr_sweep["args"], f"hydra.sweep.dir={tmp}/outputs/sweep2")
    assert again.stdout.count("already finished") == 2
    # nothing trained, no stray folders
    assert not (tmp / "outputs" / "sweep2" / "0").exists() and not (tmp / "outputs" / "sweep2" / "1").exists()
    assert len(children(uri, "identity")) == 2
    (parent,) = [r for r in runs_of(uri, "identity") if r.data.tags.get("sweep.parent") == "true"]
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs.finished"] == "2"


def test_resume_with_another_trajectory_is_refused_listing_the_keys(lr_sweep, synthetic, tmp_path):
    run = lr_sweep["tmp"] / "outputs" / "sweep1" / "0"
    base = tiny(synthetic, lr_sweep["tmp"], lr_sweep["uri"], "identity")
    # A finished run is reported, never retrained, and keeps its status.
    done = run_module("extractive_qa.train", *base, "lr=1e-3", f"resume={run}", f"hydra.run.dir={tmp_path}/a")
    assert "already finished" in done.stdout
    ckpt = checkpoints_of(run)[-1]
    record = (run / "run.json").read_text()
    (run / "run.json").write_text(json.dumps({**json.loads(record), "status": "KILLED"}))  # as if it had been stopped
    try:
        for change, expected in (("lr=5e-3", "lr: 0.001 -> 0.005"),
                                 ("model.config_overrides.hidden_size=64",
                                  "model.config_overrides.hidden_size: 128 -> 64"),
                                 ("epochs=3", "epochs: 2 -> 3")):
            res = run_module("extractive_qa.train", *base, "lr=1e-3", change, f"resume={ckpt}",
                             f"hydra.run.dir={tmp_path}/b", check=False)
            assert res.returncode == 2 and expected in res.stderr, res.stderr
            assert "resume_allow_changes=true" in res.stderr and "Traceback" not in res.stderr
    finally:
        (run / "run.json").write_text(record)
    status = {r.info.run_id: r.info.status for r in children(lr_sweep["uri"], "identity")}
    assert set(status.values()) == {"FINISHED"}  # a refused resume never touches the run's status


# ---------------------------------------------------------------- tracking outage
def test_server_gone_for_good_then_sync_and_server_down_at_start(synthetic, tmp_path, tracking_server):
    server = mlflow_server.ensure_running(tracking_server)
    uri = mlflow_server.uri(server)
    res = run_with_faults(["after:_maybe_log:2=call:helpers.mlflow_server:kill"], *tiny(synthetic, tmp_path, uri,
                                                                                        "gone"),
                          f"hydra.run.dir={tmp_path}/run", env=mlflow_server.env(server))
    assert res.returncode == 0 and "python -m extractive_qa.sync" in res.stdout + res.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "FINISHED"
    # Down at start: one clear message, the ways out named.
    down = run_module("extractive_qa.train", *tiny(synthetic, tmp_path, uri, "gone"), f"hydra.run.dir={tmp_path}/x",
                      check=False)
    assert down.returncode == 2 and "tracking=none" in down.stderr and "MLFLOW_TRACKING_URI" in down.stderr
    assert "Traceback" not in down.stderr
    mlflow_server.relaunch(server)
    synced = run_module("extractive_qa.sync", str(tmp_path / "run"), "--uri", uri)
    assert json.loads(synced.stdout.splitlines()[-1])["status"] == "FINISHED"
    (run,) = runs_of(uri, "gone")
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "train/loss"))
    assert steps == metric_steps(tmp_path / "run", "train/loss")
    again = run_module("extractive_qa.sync", str(tmp_path / "run"), "--uri", uri).stdout.splitlines()[-1]
    assert json.loads(again)["metrics_sent"] == 0


# ---------------------------------------------------------------- damaged checkpoints
def test_damaged_checkpoints_fall_back_and_never_silently(synthetic, tmp_path):
    uri = empty_store(tmp_path)
    args = [*tiny(synthetic, tmp_path, uri, "damage"), "checkpoint_steps=4", "keep_checkpoints=3"]
    run = tmp_path / "outputs" / "runs" / "r"
    res = run_with_faults(["after:_save:12=SIGKILL"], *args, f"hydra.run.dir={run}")
    assert res.returncode == -signal.SIGKILL
    assert [c.name for c in checkpoints_of(run)] == ["step_8", "step_10", "step_12"]  # 10: the end of epoch 1
    step12, step10 = run / "checkpoints" / "step_12", run / "checkpoints" / "step_10"
    weights = step12 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    (step10 / "random_states_0.pkl").write_bytes(b"")  # emptied: would resume on another trajectory
    other = tmp_path / "outputs" / "runs" / "unrelated"
    other.mkdir(parents=True)
    (other / "run.json").write_text('{"identity": {"dig')  # a torn record elsewhere must not break resume=auto
    resumed = run_module("extractive_qa.train", *args, "resume=auto", f"hydra.run.dir={tmp_path}/second")
    err = resumed.stdout + resumed.stderr
    assert f"skipping damaged checkpoint {step12}: model.safetensors has 100 bytes" in err
    assert f"skipping damaged checkpoint {step10}: random_states_0.pkl has 0 bytes" in err
    assert f"ignoring unreadable run record {other / 'run.json'}" in err
    assert f"resuming {run} from step_8" in err
    assert json.loads((run / "metrics.json").read_text())["steps"] == 20
    (mlflow_run,) = runs_of(uri, "damage")
    assert mlflow_run.info.status == "FINISHED"


def test_no_good_checkpoint_is_one_clear_error(synthetic, tmp_path):
    args = [*tiny(synthetic, tmp_path), "checkpoint_steps=4", "keep_checkpoints=1"]
    run = tmp_path / "r"
    run_with_faults(["after:_save:4=SIGKILL"], *args, f"hydra.run.dir={run}")
    (run / "checkpoints" / "step_4" / "scheduler.bin").write_bytes(b"\0" * 3)
    res = run_module("extractive_qa.train", *args, f"resume={run}", f"hydra.run.dir={tmp_path}/x", check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "scheduler.bin has 3 bytes" in res.stderr and f"no usable checkpoint in {run}" in res.stderr
    assert "resume=fresh" in res.stderr


# ---------------------------------------------------------------- sweeps survive a bad job
def test_a_bad_job_fails_alone_and_the_sweep_says_so(synthetic, tmp_path):
    uri = empty_store(tmp_path)
    res = run_module("extractive_qa.train", "-m",
                     f"data.dev_file={synthetic['data']}/hw7_dev.json,{tmp_path}/missing.json",
                     "data.archive_url=null", *tiny(synthetic, tmp_path, uri, "survive"), "max_steps=2",
                     f"hydra.sweep.dir={tmp_path}/sweep", check=False)
    assert res.returncode == 1
    assert "2 jobs: 1 FINISHED, 1 FAILED" in res.stdout + res.stderr and "job 1 FAILED: error:" in res.stderr
    assert "missing.json" in (tmp_path / "sweep" / "1" / "train.log").read_text()
    by_job = {r.data.tags["job.num"]: r for r in children(uri, "survive")}
    assert by_job["0"].info.status == "FINISHED" and by_job["1"].info.status == "FAILED"
    assert "missing.json" in by_job["1"].data.tags["error"]
    (parent,) = [r for r in runs_of(uri, "survive") if r.data.tags.get("sweep.parent") == "true"]
    assert parent.info.status == "FAILED" and parent.data.tags["jobs.failed"] == "1"


# ---------------------------------------------------------------- signals outside the loop
def test_sigterm_during_start_up_and_during_the_last_evaluation(synthetic, tmp_path):
    uri = empty_store(tmp_path)
    res = run_with_faults(["after:_setup_tracking=SIGTERM"], *tiny(synthetic, tmp_path, uri, "startup"),
                          f"hydra.run.dir={tmp_path}/a")
    assert res.returncode == 130 and "during start-up" in res.stderr and "Traceback" not in res.stderr
    (run,) = runs_of(uri, "startup")
    assert run.info.status == "KILLED"
    args = [*tiny(synthetic, tmp_path, uri, "last-eval"), "predict_test=true"]
    final = tmp_path / "outputs" / "runs" / "b"
    res = run_with_faults(["before:evaluate#2=SIGTERM"], *args, f"hydra.run.dir={final}")  # the epoch-2 evaluation
    assert res.returncode == 130 and "during evaluation at step 20" in res.stderr
    (run,) = runs_of(uri, "last-eval")
    assert run.info.status == "KILLED"
    run_module("extractive_qa.train", *args, "resume=auto", f"hydra.run.dir={tmp_path}/c")
    assert MlflowClient(uri).get_run(run.info.run_id).info.status == "FINISHED"
    assert (final / "test_predictions.csv").is_file() and not (tmp_path / "c").exists()
    metrics = json.loads((final / "metrics.json").read_text())
    stopped = json.loads((checkpoints_of(final)[-1] / "trainer_state.json").read_text())
    assert metrics["steps"] == 20 and metrics["wall_time_s"] > stopped["wall_time_s"] > 0  # both parts counted
    log = (final / "train.log").read_text()
    assert "resuming" in log and "done in" in log  # the resumed part's log went on in the run's own train.log


def test_a_fault_that_never_fires_fails_its_test(synthetic, tmp_path):
    """A test whose fault never acted proves nothing: the runner names it and exits 97, and run_with_faults
    raises -- even when the program itself succeeded."""
    with pytest.raises(AssertionError, match=r"these faults never fired: after:_save:9999=SIGKILL"):
        run_with_faults(["after:_save:9999=SIGKILL"], *tiny(synthetic, tmp_path), "max_steps=2",
                        f"hydra.run.dir={tmp_path}/run")


def test_an_unreadable_rng_state_refuses_the_resume(synthetic, tmp_path):
    """A checkpoint whose manifest agrees with its files but whose RNG state cannot be read: Accelerate would
    skip it with an INFO line and resume on another trajectory. The resume is refused, naming the file."""
    from extractive_qa.engine.checkpointing import write_manifest

    args = [*tiny(synthetic, tmp_path), "checkpoint_steps=4", "keep_checkpoints=1"]
    run = tmp_path / "r"
    run_with_faults(["after:_save:4=SIGKILL"], *args, f"hydra.run.dir={run}")
    step4 = run / "checkpoints" / "step_4"
    (step4 / "random_states_0.pkl").write_bytes(b"not a torch file")
    write_manifest(step4)  # the manifest now vouches for the bad file: only reading it can tell
    res = run_module("extractive_qa.train", *args, f"resume={run}", f"hydra.run.dir={tmp_path}/x", check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"checkpoint {step4}: its RNG state random_states_0.pkl cannot be read" in res.stderr
    assert "resume=fresh" in res.stderr


def test_a_damaged_sqlite_store_is_named_damaged_and_the_run_says_failed(synthetic, tmp_path):
    """A truncated mlflow.db was reported as a server to "start", and the new run's run.json stayed RUNNING."""
    source = tmp_path / "good.db"
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{source}").create_experiment("x")  # a real store, then cut short
    db = tmp_path / "mlflow.db"
    db.write_bytes(source.read_bytes()[:20000])
    run = tmp_path / "run"
    res = run_module("extractive_qa.train", *tiny(synthetic, tmp_path, f"sqlite:///{db}", "damaged"),
                     f"hydra.run.dir={run}", check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"error: the MLflow store {db} is damaged: sqlite cannot read it" in res.stderr
    assert f"mv {db} {db}.damaged" in res.stderr and "start it" not in res.stderr
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "FAILED" and "is damaged" in record["error"]
