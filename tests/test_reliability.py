"""Reliability: non-finite loss stops cleanly; two processes give what one gives."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import empty_store, read_metrics, run_module, run_with_faults


def tiny(synthetic, tmp: Path) -> list[str]:
    return [f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache", "model=tiny",
            f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}", "data.limit_train=64",
            "data.limit_dev=16", "data.limit_test=16", "epochs=1", "batch_size=8", "logging_steps=1"]


def test_non_finite_loss_stops_fails_the_run_and_keeps_the_finite_checkpoint(synthetic, tmp_path):
    uri = empty_store(tmp_path)
    run_dir = tmp_path / "run"
    res = run_module("extractive_qa.train", *tiny(synthetic, tmp_path), "lr=1e25", "eval_steps=1", "warmup_ratio=0",
                     "tracking=mlflow", f"tracking.uri={uri}", "experiment_name=nan", f"hydra.run.dir={run_dir}",
                     check=False)
    assert res.returncode == 3 and "Traceback" not in res.stderr
    assert "non-finite training loss" in res.stderr and "no checkpoint was written from this state" in res.stderr
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("nan").experiment_id])
    assert run.info.status == "FAILED"
    from safetensors.torch import load_file

    weights = load_file(run_dir / "best_model" / "model.safetensors")  # saved at step 1, before the blow-up
    assert all(bool(t.isfinite().all()) for t in weights.values())


def test_a_non_finite_loss_read_only_at_log_points_still_names_the_step_that_made_it(synthetic, tmp_path):
    """On a GPU the loss is not read on the host after every step (that would wait for the GPU each time): it is
    checked on the device and read at log points. The run must still stop there, before any logging, evaluation or
    checkpoint, naming the step whose loss first went non-finite -- the same step the every-step check names."""
    args = [*tiny(synthetic, tmp_path), "lr=1e25", "warmup_ratio=0", "logging_steps=4", "eval_steps=null",
            "tracking=none", "predict_test=false"]
    every = run_module("extractive_qa.train", *args, f"hydra.run.dir={tmp_path}/every", check=False)
    deferred = run_with_faults(["before:_train_epoch=set:_check_every_step=False"], *args,
                               f"hydra.run.dir={tmp_path}/deferred")
    named = []
    for res in (every, deferred):
        assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr[-2000:]
        named.append(re.search(r"non-finite training loss at step (\d+)", res.stderr).group(1))
    assert named[0] == named[1] and int(named[0]) < 4  # the step that made it, not the log point that read it
    assert not (tmp_path / "deferred" / "best_model").exists()  # nothing evaluated or kept from that state
    metrics = tmp_path / "deferred" / "metrics.jsonl"
    assert not metrics.exists() or not [m for m in read_metrics(tmp_path / "deferred") if "train/loss" in m]


@pytest.mark.slow
def test_two_processes_match_one(synthetic, tmp_path):
    if not shutil.which("accelerate", path=str(Path(sys.executable).parent)):
        pytest.skip("accelerate CLI not installed")
    # Grouped batches are sharded whole across ranks (another order than one process at twice the batch):
    # plain shuffled batches split the same global batch, so one process and two see the same data.
    common = [*tiny(synthetic, tmp_path), "tracking=none", "group_by_length=false",
              "eval_batch_tokens=700",  # a few windows per batch: uneven shards across ranks
              "+model.config_overrides.hidden_dropout_prob=0.0",
              "+model.config_overrides.attention_probs_dropout_prob=0.0",
              "data.limit_dev=30", "data.limit_test=13", "max_steps=4"]
    run_module("extractive_qa.train", *common, "batch_size=8", f"hydra.run.dir={tmp_path}/one")
    accelerate = str(Path(sys.executable).parent / "accelerate")
    import os
    import subprocess

    from helpers import ROOT

    # On a machine without GPUs, `--multi_gpu` is accelerate's torchrun-based launcher; the processes
    # form a gloo group over CPUs (`--cpu` alone would start a single process without mpirun).
    out = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "extractive_qa.train", *common,
                          "batch_size=4", f"hydra.run.dir={tmp_path}/two"],
                         capture_output=True, text=True, cwd=ROOT, timeout=900, env={**os.environ,
                                                                                     "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    assert "2 process(es)" in out.stdout + out.stderr
    one, two = tmp_path / "one", tmp_path / "two"
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["best_dev_em"] == m2["best_dev_em"] and m1["best_dev_f1"] == pytest.approx(m2["best_dev_f1"])
    rows = [[json.loads(line)["prediction"] for line in (d / "dev_predictions.jsonl").read_text().splitlines()]
            for d in (one, two)]
    assert len(rows[1]) == 30 and rows[0] == rows[1]
    subs = [list(csv.reader(open(d / "test_predictions.csv", encoding="utf-8"))) for d in (one, two)]
    assert len(subs[1]) == 14 and subs[0] == subs[1]
    assert len(list(tmp_path.glob("**/metrics.json"))) == 2  # only the main process wrote files


def _resume_args(synthetic, tmp: Path) -> list[str]:
    return [*tiny(synthetic, tmp), "data.limit_train=160", "epochs=2", "checkpoint_steps=10", "keep_checkpoints=2",
            "predict_test=false", "logging_steps=5"]


def _final_weights(run_dir: Path):
    from safetensors.torch import load_file

    from extractive_qa.engine.checkpointing import checkpoints_of

    last = checkpoints_of(run_dir)[-1]
    return last.name, load_file(last / "model.safetensors")


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(synthetic, tmp_path):
    import signal

    import torch

    uri = empty_store(tmp_path)
    args = [*_resume_args(synthetic, tmp_path), "tracking=mlflow", f"tracking.uri={uri}"]
    run_module("extractive_qa.train", *args, "experiment_name=straight", f"hydra.run.dir={tmp_path}/straight")

    killed = tmp_path / "killed"
    # SIGKILL right after the step-10 checkpoint is written (mid-epoch: 20 steps per epoch).
    res = run_with_faults(["after:_save:10=SIGKILL"], *args, "experiment_name=killed", f"hydra.run.dir={killed}")
    assert res.returncode == -signal.SIGKILL
    run_module("extractive_qa.train", *args, "experiment_name=killed", f"resume={killed}",
               f"hydra.run.dir={tmp_path}/ignored")

    name_a, a = _final_weights(tmp_path / "straight")
    name_b, b = _final_weights(killed)
    assert name_a == name_b == "step_40"
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "straight", killed))
    assert ma["best_dev_em"] == mb["best_dev_em"] and ma["best_dev_f1"] == mb["best_dev_f1"] and mb["steps"] == 40
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same MLflow run, continued
    assert len(list((killed / "checkpoints").glob("step_*"))) == 2  # keep_checkpoints


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_trajectory(synthetic, tmp_path):
    """A GPU too small for 8 windows at once (injected: every forward pass of more than 4 windows raises CUDA's
    out-of-memory error) trains on: the micro-batch is halved, accumulation doubled, and the run is exactly a run
    started with batch_size=4 grad_accum_steps=2 -- same losses, same weights. Evaluation halves its token budget
    the same way. Both are recorded with the run."""
    import torch
    from safetensors.torch import load_file

    from helpers import read_metrics

    common = [*tiny(synthetic, tmp_path), "data.limit_train=96", "epochs=1", "logging_steps=2", "tracking=none",
              "predict_test=false", "eval_batch_tokens=4096"]
    small = run_with_faults(["before:_micro_step=oom_rows>4",
                             "before:extractive_qa.engine.evaluation._forward=oom_tokens>600"],
                            *common, "batch_size=8", f"hydra.run.dir={tmp_path}/small_gpu")
    assert small.returncode == 0, small.stderr[-3000:]
    log = small.stdout + small.stderr
    assert "8 -> 4 windows per micro-batch at step 1" in log and "eval_batch_tokens 4096 -> 2048" in log
    start = run_module("extractive_qa.train", *common, "batch_size=4", "grad_accum_steps=2",
                       f"hydra.run.dir={tmp_path}/started_small")
    assert start.returncode == 0
    losses = [[m["train/loss"] for m in read_metrics(tmp_path / d) if "train/loss" in m]
              for d in ("small_gpu", "started_small")]
    assert len(losses[0]) >= 3 and losses[0] == pytest.approx(losses[1], abs=1e-6)
    a, b = (load_file(tmp_path / d / "best_model" / "model.safetensors") for d in ("small_gpu", "started_small"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    record = json.loads((tmp_path / "small_gpu" / "run.json").read_text())
    assert record["oom_fallback"][0] == "micro_batch: 8 -> 4 windows per micro-batch at step 1"
    assert record["oom_fallback"][1].startswith("eval_batch_tokens: 4096 -> 2048")
    # Nothing smaller than one window: one clear error, the run FAILED.
    none = run_with_faults(["before:_micro_step=oom_rows>0"], *common, "batch_size=8", f"hydra.run.dir={tmp_path}/none")
    assert none.returncode == 2 and "Traceback" not in none.stderr
    assert "out of GPU memory at step 1 even with one window per micro-batch" in none.stderr
    assert json.loads((tmp_path / "none" / "run.json").read_text())["status"] == "FAILED"
