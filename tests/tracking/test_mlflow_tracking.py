"""MLflow tracking: every job a complete run (tags, params, metrics, inputs, artifacts); truthful statuses;
secrets kept out; parallel and submitit launchers; an Optuna study that survives a restart; system metrics."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from extractive_qa.core.config import CONF_DIR
from extractive_qa.tracking.mlflow_tracker import MlflowTracker
from extractive_qa.tracking.naming import run_name_from_overrides
from extractive_qa.tracking.params import safe_params

from helpers import empty_store, run_module, run_with_faults


def tiny_overrides(synthetic, tmp, uri: str, experiment: str = "tracking-test") -> list[str]:
    return [f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache", "tracking=mlflow", f"tracking.uri={uri}",
            "model=tiny", f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}",
            "data.limit_train=48", "data.limit_dev=12", "data.limit_test=12", "epochs=1", "max_steps=6",
            "logging_steps=1", "batch_size=8", f"experiment_name={experiment}"]


def children(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    return sorted((r for r in runs if "job.num" in r.data.tags), key=lambda r: int(r.data.tags["job.num"]))


def test_a_run_that_raises_ends_failed_with_its_cause(synthetic, tmp_path):
    uri = empty_store(tmp_path)
    res = run_with_faults(["before:_setup_training=raise"], *tiny_overrides(synthetic, tmp_path, uri),
                          f"hydra.run.dir={tmp_path}/run")
    assert res.returncode != 0 and "fault injected" in res.stderr
    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("tracking-test").experiment_id])
    assert run.info.status == "FAILED" and "fault injected" in run.data.tags["error"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "FAILED"


def _compose_cfg(tmp_path, uri, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=["tracking=mlflow", f"tracking.uri={uri}", f"paths.output_dir={tmp_path}",
                                           "experiment_name=status-test", *overrides])


def test_ctrl_c_marks_the_run_killed_and_secrets_stay_out(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    uri = empty_store(tmp_path)
    cfg = _compose_cfg(tmp_path, uri, "tracking.system_metrics=false")
    with pytest.raises(KeyboardInterrupt):
        with MlflowTracker(uri, cfg, tmp_path, "ctrl-c") as tracker:
            tracker.log_metrics({"train/loss": 1.0}, 1)
            raise KeyboardInterrupt
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("status-test").experiment_id])
    assert run.info.status == "KILLED"
    assert not any("hunter2" in v for v in [*run.data.params.values(), *run.data.tags.values()])
    cfg = _compose_cfg(tmp_path, uri)
    OmegaConf.set_struct(cfg, False)
    cfg.model.api_token = "x"
    cfg.model.hub_password = "y"
    params = safe_params(cfg)
    assert "model.init" in params and "model.api_token" not in params and "model.hub_password" not in params


def test_system_metrics_are_on_by_default_and_off_with_one_override(tmp_path):
    uri = empty_store(tmp_path)
    with MlflowTracker(uri, _compose_cfg(tmp_path, uri), tmp_path, "on") as tracker:
        monitor = tracker._monitor
        assert monitor is not None
        # One sample, published now instead of after the 10 s interval: no clock in the test.
        monitor.publish_metrics({**monitor.collect_metrics(), **monitor.aggregate_metrics()})
        monitor.mlflow_logger.flush()
        run_id = tracker.run_id
    assert any(k.startswith("system/cpu") for k in MlflowClient(uri).get_run(run_id).data.metrics)
    with MlflowTracker(uri, _compose_cfg(tmp_path, uri, "tracking.system_metrics=false"), tmp_path, "off") as tracker:
        assert tracker._monitor is None


def test_run_names_lead_with_what_differs():
    from extractive_qa.tracking.naming import short_keys

    overrides = ["warmup_ratio=0.1", "seed=2", "experiment=offline_smoke", "data.dir=/a/b/hw7-drcd"]
    sweep = {"id": "a1b2c3", "swept_keys": ["warmup_ratio", "seed"]}
    assert run_name_from_overrides(overrides, sweep) == "wr=0.1 seed=2 · a1b2c3"  # fits ~18 characters
    # A single run: what changes training, never tracking, paths, logging or checkpoint keys.
    single = [*overrides, "tracking.log_model=true", "tracking.register_model=hw7-qa", "logging_steps=5",
              "paths.output_dir=/x", "checkpoint_steps=100"]
    assert run_name_from_overrides(single) == "warmup_ratio=0.1 seed=2 experiment=offline_smoke data.dir=hw7-drcd"
    assert run_name_from_overrides([]) == "defaults"
    # a swept path by its file name
    assert run_name_from_overrides(["data.dev_file=/x/dev.json"], {"id": "f", "swept_keys": ["data.dev_file"]}) == \
        "df=dev.json · f"
    assert short_keys(["window.doc_overlap", "lr", "max_grad_norm", "weight_decay", "warmup_ratio"]) == {
        "window.doc_overlap": "do", "lr": "lr", "max_grad_norm": "mgn", "weight_decay": "wd", "warmup_ratio": "wr"}
    # short forms that would collide keep their full keys
    assert short_keys(["warmup_ratio", "weight_ratio"]) == {"warmup_ratio": "warmup_ratio",
                                                            "weight_ratio": "weight_ratio"}


def test_parallel_joblib_jobs_share_one_fresh_sqlite_store(synthetic, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"  # fresh: both jobs race on the schema migration
    run_module("extractive_qa.train", "-m", "launcher=joblib", "warmup_ratio=0.1,0.5", *tiny_overrides(synthetic,
                                                                                                       tmp_path, uri),
               "max_steps=4", f"hydra.sweep.dir={tmp_path}/sweep")
    runs = children(uri, "tracking-test")
    assert [r.info.run_name.split(" · ")[0] for r in runs] == ["wr=0.1", "wr=0.5"]
    client = MlflowClient(uri)
    lr = []
    for r in runs:
        assert r.info.status == "FINISHED" and "best/dev_em" in r.data.metrics and "mlflow.parentRunId" in r.data.tags
        history = sorted(client.get_metric_history(r.info.run_id, "train/lr"), key=lambda m: m.step)
        assert len(history) == 4
        lr.append([m.value for m in history])
    assert lr[0] != lr[1]


def test_submitit_sweep_runs_jobs_in_their_own_processes_under_one_parent(synthetic, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    uri = empty_store(tmp_path)
    run_module("extractive_qa.train", "-m", "launcher=submitit_local", "seed=1,2", *tiny_overrides(synthetic, tmp_path,
                                                                                                   uri),
               "max_steps=2", "predict_test=false", f"hydra.sweep.dir={tmp_path}/sweep")
    runs = children(uri, "tracking-test")
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(runs) == 2 and len(parents) == 1 and {r.info.status for r in runs} == {"FINISHED"}
    parent = MlflowClient(uri).get_run(parents.pop())
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs.finished"] == "2"
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))) == 2  # submitit ran both jobs


def test_an_optuna_study_in_sqlite_is_continued_by_the_same_command(synthetic, tmp_path):
    """hparams_search=optuna on Optuna 5 (the project's own sweeper): the study lives in sqlite; re-running the
    command with n_trials=3 continues it -- one new trial trains, the study holds 3."""
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ["-m", "hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=cont",
            *tiny_overrides(synthetic, tmp_path, empty_store(tmp_path)), "max_steps=2",
            "predict_test=false"]
    first = run_module("extractive_qa.train", *args, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}/s1")
    assert "Best value" in first.stdout + first.stderr
    assert (tmp_path / "s1" / "optimization_results.yaml").is_file()
    run_module("extractive_qa.train", *args, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path}/s2")
    assert len(list(tmp_path.glob("s*/[0-9]*/metrics.json"))) == 3  # the second command trained one trial
    study = optuna.load_study(study_name="cont", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert optuna.__version__.split(".")[0] >= "4"


def test_a_search_prunes_hopeless_trials_and_counts_them_apart(synthetic, tmp_path):
    """pruner=median: trials whose learning rate cannot learn are stopped at an evaluation below the median of
    the trials before them: PRUNED in Optuna, their MLflow runs KILLED with status=PRUNED (what they wrote kept),
    run.json PRUNED, and the sweep's summary counts them apart from failures (exit 0)."""
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    res = run_module("extractive_qa.train", "-m", "hparams_search=optuna", f"hydra.sweeper.storage={storage}",
                     "hydra.sweeper.study_name=prune", "hydra.sweeper.pruner=median", "hydra.sweeper.sampler=grid",
                     "hydra.sweeper.pruner_warmup_steps=10",
                     "hydra.sweeper.n_trials=6", "hydra.sweeper.seed=0",
                     "~hydra.sweeper.params", "lr=choice(2e-3,1e-9)", "seed=choice(1,2,3)",
                     *tiny_overrides(synthetic, tmp_path, empty_store(tmp_path), "pruning"),
                     "data.limit_train=400", "data.limit_dev=40", "max_steps=null", "epochs=2", "eval_steps=10",
                     "batch_size=16", "predict_test=false", f"hydra.sweep.dir={tmp_path}/sweep")
    study = optuna.load_study(study_name="prune", storage=storage)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    # The median pruner stops what falls below the median at an evaluation: the lr that cannot learn, and
    # sometimes a seed of the one that can; the best is still found.
    assert any(t.params["lr"] == 1e-9 for t in pruned), [(t.params, t.state) for t in study.trials]
    assert study.best_params["lr"] == 2e-3
    assert "PRUNED" in res.stdout + res.stderr  # the sweep's summary line counts them
    runs = children(f"sqlite:///{tmp_path}/mlflow.db", "pruning")
    tagged = [r for r in runs if r.data.tags.get("status") == "PRUNED"]
    assert len(tagged) == len(pruned) and {r.info.status for r in tagged} == {"KILLED"}
    records = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/run.json")]
    assert sum(r["status"] == "PRUNED" for r in records) == len(pruned)


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["launcher=slurm", "experiment=hw7_strong"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 1


def test_a_killed_launcher_leaves_no_workers_and_its_parent_ends_killed(synthetic, tmp_path):
    """kill -9 of a joblib sweep's launcher while both jobs train: the loky workers used to live on (3 x ~840 MB,
    minutes later) and the parent said RUNNING until the sweep was re-run. Now each worker stops (its job KILLED,
    as after Ctrl-C) and exits, and the next reader of the sweep ends its parent KILLED. Waits on conditions."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from extractive_qa.core.runs import process_alive
    from extractive_qa.tracking.parents import find_sweep

    from helpers import ROOT, child_env

    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    uri = empty_store(tmp_path)
    sweep_dir = tmp_path / "sweep"
    args = [*tiny_overrides(synthetic, tmp_path, uri, "orphans"), "max_steps=100000", "epochs=1000",
            "data.limit_train=200", "predict_test=false", f"hydra.sweep.dir={sweep_dir}"]
    launcher = subprocess.Popen([sys.executable, "-m", "extractive_qa.train", "-m", "launcher=joblib", "seed=1,2",
                                 *args], cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def until(condition, what: str, limit: float = 180.0):
        deadline = time.monotonic() + limit  # turns a hang into a failure; the wait itself is on the condition
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            assert what.startswith("workers") or launcher.poll() is None, "the launcher ended early"
            time.sleep(0.2)

    def records() -> list[dict]:
        out = []
        for path in sorted(sweep_dir.glob("[0-9]/run.json")):
            try:
                out.append(json.loads(path.read_text()))
            except ValueError:
                pass
        return out

    try:
        until(lambda: len([r for r in records() if r.get("heartbeat")]) == 2, "both jobs to train")
        workers = [r["process"] for r in records()]
        assert all(w["pid"] != launcher.pid for w in workers)  # the jobs run in worker processes
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        until(lambda: all(process_alive(w) is False for w in workers), "workers to exit", 120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert {r["status"] for r in records()} == {"KILLED"}  # stopped as Ctrl-C would stop them
    assert find_sweep(MlflowClient(uri), str(sweep_dir)).info.status == "KILLED"


def test_a_parent_whose_launcher_died_with_its_jobs_is_ended_by_the_next_reader(tmp_path):
    """kill -9 of the whole process group: no job could end the parent. The next reader (report, predict,
    compare: all find the sweep through find_sweep) sees the launcher is gone and ends it KILLED, counting jobs."""
    import subprocess
    import sys

    from extractive_qa.core.runs import this_process
    from extractive_qa.tracking.parents import LAUNCHER_TAG, find_sweep

    uri = empty_store(tmp_path)
    client = MlflowClient(uri)
    experiment = client.create_experiment("orphan")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    launcher = {**this_process(), "pid": int(dead.stdout), "proc_start": "-1"}
    parent = client.create_run(experiment, tags={"sweep.parent": "true", "sweep.id": "abcdef",
                                                 LAUNCHER_TAG: json.dumps(launcher)}).info.run_id
    for status in ("FINISHED", "FAILED"):
        job = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
        client.set_terminated(job, status)
    found = find_sweep(client, "abcdef")
    assert found.info.status == "KILLED" and "launcher (pid" in found.data.tags["error"]
    assert (found.data.tags["jobs.finished"], found.data.tags["jobs.failed"]) == ("1", "1")
    alive = client.create_run(experiment, tags={"sweep.parent": "true", "sweep.id": "ghijkl",
                                                LAUNCHER_TAG: json.dumps(this_process())}).info.run_id
    assert find_sweep(client, "ghijkl").info.status == "RUNNING" and alive  # its launcher (this test) lives


def test_a_jobs_trial_prunes_with_the_sweeps_pruner_not_optunas_default(tmp_path):
    """A job reaches its trial through the storage; optuna.load_study would give it the median pruner whatever
    the sweep said (the pruning bench showed pruned trials with pruner=none). The sweep's pruner goes with it."""
    import optuna

    from extractive_qa.tracking.study import TrialLink

    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="p", storage=storage, direction="maximize")
    for _ in range(3):  # three trials that reached 0.5 at step 10
        trial = study.ask()
        trial.report(0.5, 10)
        study.tell(trial, 0.5)
    for pruner, pruned in (("none", False), ("median", True)):
        trial = study.ask()
        assert TrialLink(storage, "p", trial._trial_id, pruner).report(0.0, 10) is pruned, pruner


# Last in this file: the seed sweep it reads is built by the first test that asks (test_train.py's first, which
# often starts at the same moment on the other worker); the tests above run meanwhile instead of waiting on its lock.
def test_every_job_is_a_complete_run(seed_sweep):
    uri, sweep_dir = seed_sweep["uri"], seed_sweep["sweep_dir"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("seeds")
    assert exp.artifact_location.startswith("file://") and str(seed_sweep["tmp"]) in exp.artifact_location
    runs = children(uri, "seeds")
    for job, run in enumerate(runs):
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert run.info.status == "FINISHED" and params["seed"] == str(job + 1)
        assert tags["sweep.dir"] == str(sweep_dir.resolve())
        assert json.loads(tags["sweep.values"]) == {"seed": str(job + 1)}
        assert len(tags["git.commit"]) in (40, 7) or tags["git.commit"] == "unknown"
        assert tags["git.dirty"] in ("true", "false", "unknown")
        assert tags["command"].startswith("python -m extractive_qa.train -m seed=1,2,3")
        assert params["window.max_seq_len"] == "384" and params["optimizer._target_"] == "torch.optim.AdamW"
        assert {"train/loss", "train/acc", "train/lr", "train/tokens_per_s", "dev/em", "dev/f1", "dev/em_cmrc2018",
                "dev/f1_cmrc2018", "best/dev_em", "best/dev_f1_cmrc2018", "wall_time_s"} <= set(metrics)
        run_dir = sweep_dir / str(job)
        logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                  if "train/loss" in line]
        assert [m.step for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"),
                                       key=lambda m: m.step)] == logged
        inputs = {(d.dataset.name, [t.value for t in d.tags][0]) for d in run.inputs.dataset_inputs}
        assert inputs == {("hw7_train.json", "train"), ("hw7_dev.json", "dev"), ("hw7_test.json", "test")}
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config_resolved.yaml", "dev_predictions.jsonl", "test_predictions.csv", "test_nbest.json", "run.json",
                "dev_nbest.json", "data_report.json", "metrics.json", ".hydra"} <= artifacts
        # tracking.log_model: an MLflow 3 logged model of this run, READY, linked to the run's best dev scores
        (model,) = client.search_logged_models([exp.experiment_id],
                                               filter_string=f"source_run_id = '{run.info.run_id}'")
        assert model.name == "model" and str(model.status) in ("READY", "LoggedModelStatus.READY")
        assert {m.key for m in model.metrics} >= {"best/dev_em", "best/dev_f1"}
        assert {m.step for m in model.metrics} == {0}
        assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
