"""MLflow tracking: one run per sweep job with tags, params, metrics, inputs and artifacts; truthful
statuses; a tracking server on loopback; the comparison report."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_module
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from extractive_qa.compare import compare
from extractive_qa.core.config import CONF_DIR
from extractive_qa.tracking.trackers import MlflowTracker, run_name_from_overrides, safe_params


def tiny_overrides(synthetic, tmp: Path, uri: str) -> list[str]:
    return [f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache", "tracking=mlflow", f"tracking.uri={uri}",
            "model=tiny", f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}",
            "data.limit_train=48", "data.limit_dev=12", "data.limit_test=12", "epochs=1", "max_steps=6",
            "logging_steps=1", "batch_size=8", "experiment_name=tracking-test"]


@pytest.fixture(scope="module")
def sweep_store(synthetic, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow_sweep")
    uri = f"sqlite:///{tmp}/mlflow.db"
    run_module("extractive_qa.train", "-m", "warmup_ratio=0.1,0.5", *tiny_overrides(synthetic, tmp, uri),
               f"hydra.sweep.dir={tmp}/sweep")
    return uri, tmp


def test_sweep_leaves_one_complete_run_per_job(sweep_store):
    uri, tmp = sweep_store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tracking-test")
    assert exp.artifact_location.startswith("file://") and str(tmp) in exp.artifact_location
    runs = sorted((r for r in client.search_runs([exp.experiment_id]) if "job.num" in r.data.tags),
                  key=lambda r: r.data.tags["job.num"])
    sweep_id = runs[0].data.tags["sweep.id"]
    assert [r.info.run_name for r in runs] == [f"{sweep_id} warmup_ratio=0.1", f"{sweep_id} warmup_ratio=0.5"]
    for job, run in enumerate(runs):
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert run.info.status == "FINISHED"
        assert tags["sweep.dir"] == str((tmp / "sweep").resolve()) and tags["job.num"] == str(job)
        assert len(tags["git.commit"]) in (40, 7) or tags["git.commit"] == "unknown"
        assert tags["git.dirty"] in ("true", "false", "unknown")
        assert tags["command"].startswith("python -m extractive_qa.train -m warmup_ratio=0.1,0.5")
        assert params["warmup_ratio"] == ("0.1", "0.5")[job]
        assert params["window.max_seq_len"] == "384" and params["optimizer._target_"] == "torch.optim.AdamW"
        assert {"train/loss", "train/acc", "train/lr", "train/tokens_per_s", "dev/em", "dev/f1", "best/dev_em",
                "wall_time_s"} <= set(metrics)
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6
        inputs = {(d.dataset.name, [t.value for t in d.tags][0]) for d in run.inputs.dataset_inputs}
        assert inputs == {("hw7_train.json", "train"), ("hw7_dev.json", "dev"), ("hw7_test.json", "test")}
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config_resolved.yaml", "dev_predictions.jsonl", "test_predictions.csv", "test_nbest.json",
                "dev_nbest.json", "data_report.json", "metrics.json", ".hydra"} <= artifacts
        assert "model" not in artifacts  # tracking.log_model=false
    lr = [[m.value for m in sorted(client.get_metric_history(r.info.run_id, "train/lr"), key=lambda m: m.step)] for r in runs]
    assert lr[0] != lr[1]


def test_comparison_report_writes_table_and_plots(sweep_store, tmp_path):
    uri, tmp = sweep_store
    out = compare(sweep=str(tmp / "sweep"), uri=uri, out_dir=tmp_path / "report")
    table = (out / "comparison.md").read_text()
    assert "| run | warmup_ratio | best dev EM |" in table and "warmup_ratio=0.5" in table
    for png in ("dev_em.png", "train_loss.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(uri)
    reports = client.search_runs([client.get_experiment_by_name("tracking-test").experiment_id],
                                 filter_string="tags.`extractive_qa.report` = 'true'")
    assert len(reports) == 1
    assert {a.path for a in client.list_artifacts(reports[0].info.run_id, "comparison")} == {
        "comparison/comparison.md", "comparison/dev_em.png", "comparison/train_loss.png"}


def test_a_run_that_raises_ends_failed(synthetic, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    res = run_module("extractive_qa.train", *tiny_overrides(synthetic, tmp_path, uri), "lr=-1.0",
                     f"hydra.run.dir={tmp_path}/run", check=False)
    assert res.returncode != 0 and "Invalid learning rate" in res.stderr
    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("tracking-test").experiment_id])
    assert run.info.status == "FAILED"


def _compose_cfg(tmp_path, uri):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=["tracking=mlflow", f"tracking.uri={uri}", f"paths.output_dir={tmp_path}",
                                           "experiment_name=status-test"])


def test_ctrl_c_marks_the_run_killed_and_secrets_stay_out(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = _compose_cfg(tmp_path, uri)
    with pytest.raises(KeyboardInterrupt):
        with MlflowTracker(cfg, tmp_path, {}) as tracker:
            tracker.log_metrics({"train/loss": 1.0}, 1)
            raise KeyboardInterrupt
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("status-test").experiment_id])
    assert run.info.status == "KILLED"
    assert not any("hunter2" in v for v in [*run.data.params.values(), *run.data.tags.values()])
    cfg = _compose_cfg(tmp_path, uri)
    OmegaConf.set_struct(cfg, False)
    cfg.tracking.api_token = "x"
    cfg.model.hub_password = "y"
    params = safe_params(cfg)
    assert "tracking.uri" in params and "tracking.api_token" not in params and "model.hub_password" not in params


def test_run_names_show_what_a_sweep_varies():
    overrides = ["warmup_ratio=0.1", "experiment=offline_smoke", "data.dir=/a/b"]
    sweep = {"id": "a1b2c3", "swept_keys": ["warmup_ratio"]}
    assert run_name_from_overrides(overrides, sweep) == "a1b2c3 warmup_ratio=0.1"
    assert run_name_from_overrides(overrides) == "warmup_ratio=0.1,experiment=offline_smoke"
    assert run_name_from_overrides([]) == "defaults"
    assert run_name_from_overrides(["data.dev_file=/x/dev.json"], {"id": "f", "swept_keys": ["data.dev_file"]}) == \
        "f data.dev_file=dev.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runs_reach_a_tracking_server_on_loopback(synthetic, tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art"),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        run_module("extractive_qa.train", *tiny_overrides(synthetic, tmp_path, uri), "max_steps=2",
                   "predict_test=false", f"hydra.run.dir={tmp_path}/run", env={"MLFLOW_TRACKING_URI": uri})
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("tracking-test").experiment_id])
        assert run.info.status == "FINISHED" and "dev/em" in run.data.metrics
        assert "dev_predictions.jsonl" in {a.path for a in client.list_artifacts(run.info.run_id)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_parallel_joblib_jobs_share_one_fresh_sqlite_store(synthetic, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"  # fresh: both jobs race on the schema migration
    run_module("extractive_qa.train", "-m", "launcher=joblib", "warmup_ratio=0.1,0.5", *tiny_overrides(synthetic, tmp_path, uri),
               "max_steps=4", f"hydra.sweep.dir={tmp_path}/sweep")
    client = MlflowClient(uri)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("tracking-test").experiment_id])
            if "job.num" in r.data.tags]
    assert sorted(r.info.run_name.split(" ", 1)[1] for r in runs) == ["warmup_ratio=0.1", "warmup_ratio=0.5"]
    for r in runs:
        assert r.info.status == "FINISHED" and "best/dev_em" in r.data.metrics
        assert len(client.get_metric_history(r.info.run_id, "train/loss")) == 4


def test_optuna_search_maximises_dev_em(synthetic, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    res = run_module("extractive_qa.train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                     *tiny_overrides(synthetic, tmp_path, f"sqlite:///{tmp_path}/mlflow.db"), "max_steps=2",
                     "predict_test=false", f"hydra.sweep.dir={tmp_path}/sweep")
    assert "Best value" in res.stdout + res.stderr
    assert len(list((tmp_path / "sweep").glob("[0-9]*/metrics.json"))) == 2
    assert (tmp_path / "sweep" / "optimization_results.yaml").is_file()


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["launcher=slurm", "experiment=hw7_strong"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 1
