"""The training recipe end to end: it learns, it writes every per-run file, sweeps run as typed,
the predictor writes one row per test id, and missing model or data stop with one clear message."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from extractive_qa.core.data import read_examples

from helpers import HW7_DIR, empty_store, needs_shared, read_metrics, run_module

TEST_SLICE = 200  # test questions the shared run predicts (conftest.shared_run)


def common(tmp: Path) -> list[str]:
    """Keep every test run out of the project's outputs/, cache and MLflow store."""
    return [f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache", "tracking=none"]




def test_tiny_model_learns_synthetic_chinese_qa(seed_sweep, synthetic):
    """Each of the seed sweep's tiny models (random init, no dropout, 4 epochs on 1,500 questions) learns the task.
    Seeds differ (seeds 1-4 x {bf16, fp32} end between EM 0.72 and 0.84, their first evaluation at 0.13-0.18, the
    loss down 6.5-10.7x; with dropout seeds 1-9 ended between 0.45 and 0.82), so the bar is learning, not a score:
    EM at least 0.5 and 3x its first evaluation, the loss down 3x."""
    from extractive_qa.evaluate import evaluate

    for run_dir in seed_sweep["runs"]:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        history = read_metrics(run_dir)
        first_em = next(m["dev/em"] for m in history if "dev/em" in m)
        assert metrics["best_dev_em"] >= max(0.5, 3 * first_em), metrics
        losses = [m["train/loss"] for m in history if "train/loss" in m]
        assert losses[-1] < losses[0] / 3
        # `evaluate` on the run's dev predictions reproduces the dev scores the run logged (one scoring code).
        report = evaluate(str(run_dir / "dev_predictions.jsonl"), str(synthetic["data"] / "hw7_dev.json"))
        for key in ("em", "f1", "em_cmrc2018", "f1_cmrc2018"):
            assert report[key] == metrics[f"best_dev_{key}"], key


@needs_shared
def test_end_to_end_run_on_shared_hw7_writes_every_file(shared_run):
    for name in ("config_resolved.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml", "dev_predictions.jsonl",
                 "dev_nbest.json", "test_predictions.csv", "test_nbest.json", "metrics.json", "metrics.jsonl",
                 "data_report.json", "best_model/model.safetensors", "best_model/config.json",
                 "best_model/tokenizer_config.json"):
        assert (shared_run / name).is_file(), name
    rows = [json.loads(line) for line in (shared_run / "dev_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and set(rows[0]) >= {"id", "question", "prediction", "references", "em", "f1"}
    test_ids = [ex.id for ex in read_examples(HW7_DIR / "hw7_test.json")][:TEST_SLICE]
    with open(shared_run / "test_predictions.csv", newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["ID", "Answer"] and [r[0] for r in table[1:]] == test_ids
    metrics = json.loads((shared_run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["test_questions"] == len(test_ids)
    report = json.loads((shared_run / "data_report.json").read_text())
    assert report["questions"] == 48 and report["oracle_em"] == 1.0
    logged = read_metrics(shared_run)
    assert [m["step"] for m in logged if "train/loss" in m] == [1, 2, 3]
    assert any("dev/em" in m for m in logged)


def test_warmup_sweep_runs_two_jobs_with_different_lr_curves(synthetic, tmp_path):
    res = run_module("extractive_qa.train", "-m", "warmup_ratio=0.1,0.5", *common(tmp_path), "model=tiny",
                     f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}", "data.limit_train=64",
                     "data.limit_dev=16", "data.limit_test=16", "epochs=1", "max_steps=8", "logging_steps=1",
                     "batch_size=8",
                     f"hydra.sweep.dir={tmp_path}/sweep")
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"], res.stdout
    curves = [[m["train/lr"] for m in read_metrics(j) if "train/lr" in m] for j in jobs]
    assert len(curves[0]) == len(curves[1]) == 8 and curves[0] != curves[1]
    # warmup 0.1 of 8 steps peaks after 1 step; 0.5 after 4
    assert curves[0].index(max(curves[0])) < curves[1].index(max(curves[1]))
    for j in jobs:
        assert (j / "test_predictions.csv").is_file()


def test_the_training_trajectory_does_not_depend_on_the_evaluation_cadence(synthetic, tmp_path):
    """Evaluating every 3 steps or only at the epoch's end trains the same model: evaluation draws nothing from
    torch's global RNG (a data loader's seed draw there used to shift every later dropout mask), so eval_steps is
    free to change on resume, as the resume rules say."""
    from helpers import read_metrics

    losses = []
    for eval_steps in ("null", "3"):
        run_dir = tmp_path / f"eval_{eval_steps}"
        res = run_module("extractive_qa.train", *common(tmp_path), "model=tiny",
                         f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}",
                         "data.limit_train=200", "epochs=1", "batch_size=16", "logging_steps=2", "predict_test=false",
                         f"eval_steps={eval_steps}", f"hydra.run.dir={run_dir}")
        losses.append([m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m])
        assert "attention: eager for training, sdpa for evaluation (attention=auto on cpu)" in res.stdout + res.stderr
    assert len(losses[0]) >= 5 and losses[0] == losses[1]


def test_missing_data_stops_with_one_message(tmp_path):
    res = run_module("extractive_qa.train", *common(tmp_path), f"data.dir={tmp_path}/nowhere", check=False)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "Could not fetch the train data file" in res.stderr and "experiment=offline_smoke" in res.stderr


def test_unreachable_hub_stops_fast_with_one_message(synthetic, tmp_path):
    res = run_module("extractive_qa.train", *common(tmp_path), f"data.dir={synthetic['data']}",
                     "model.name_or_path=no-such-org/no-such-model", env={"HF_HUB_OFFLINE": "1"}, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "Could not fetch tokenizer 'no-such-org/no-such-model'" in res.stderr and "offline_smoke" in res.stderr


def test_fp16_on_cpu_is_a_clear_error(synthetic, tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    res = run_module("extractive_qa.train", *common(tmp_path), "model=tiny", f"model.name_or_path={synthetic['model']}",
                     f"data.dir={synthetic['data']}", "precision=fp16", check=False)
    assert res.returncode == 2 and "fp16 needs a CUDA GPU" in res.stderr and "Traceback" not in res.stderr


def test_an_output_dir_that_cannot_be_created_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = run_module("extractive_qa.train", f"paths.output_dir={blocker}/outputs", "tracking=none", check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"cannot create run folders under {blocker}/outputs" in res.stderr and "paths.output_dir=" in res.stderr


def test_train_loss_is_a_mean_over_full_windows_and_a_short_tail_is_not_a_point(tmp_path):
    from extractive_qa.recipe import LogWindow, TrainingRecipe

    window = LogWindow()
    window.add(4.0, 0.0, windows=32, tokens=100)
    window.add(8.0, 1.0, windows=2, tokens=5)  # a small last batch counts for its two windows
    assert window.metrics()["train/loss"] == pytest.approx((4 * 32 + 8 * 2) / 34)
    cfg = OmegaConf.create({"epochs": 1, "batch_size": 8, "grad_accum_steps": 1, "logging_steps": 4, "eval_steps": None,
                            "checkpoint_steps": None})
    logged = []

    class Recorder:
        def log_metrics(self, metrics, step):
            logged.append(step)

    class Schedule:
        def get_last_lr(self):
            return [1e-3]

    class Bar:
        def set_postfix(self, **kwargs):
            pass

    for total, expected in ((9, [4, 8]), (10, [4, 8, 10])):  # a tail of 1 step is dropped, of 2 steps (>= 4/2) kept
        logged.clear()
        recipe = TrainingRecipe(cfg, tmp_path)
        recipe.tracker, recipe.scheduler, recipe.total_steps = Recorder(), Schedule(), total
        recipe._log_window = LogWindow()
        for step in range(1, total + 1):
            recipe.progress.step = step
            recipe._log_window.add(1.0, 0.5, 8, 80)
            recipe._maybe_log(0.0, Bar())
        assert logged == expected


@pytest.mark.parametrize(("metric", "kept_step"), [("em", 2), ("f1", 3), ("f1_cmrc2018", 1)])
def test_optimize_metric_decides_which_evaluation_is_kept(monkeypatch, metric, kept_step):
    """Three evaluations whose EM, F1 and official F1 peak at different steps: the run keeps the one its
    optimize_metric says (the same rule every later pick uses: core.metrics.selection_key)."""
    import extractive_qa.recipe as train_module
    from extractive_qa.recipe import TrainingRecipe

    planned = iter([{"em": 0.5, "f1": 0.6, "em_cmrc2018": 0.5, "f1_cmrc2018": 0.9},
                    {"em": 0.6, "f1": 0.55, "em_cmrc2018": 0.6, "f1_cmrc2018": 0.5},
                    {"em": 0.4, "f1": 0.7, "em_cmrc2018": 0.4, "f1_cmrc2018": 0.6}])
    monkeypatch.setattr(train_module, "predict", lambda *a, **k: [])
    monkeypatch.setattr(train_module, "score", lambda preds, enc: (next(planned), []))

    class Quiet:
        def log_metrics(self, metrics, step):
            pass

        def wait_for_everyone(self):
            pass

    cfg = OmegaConf.create({"epochs": 1, "batch_size": 8, "grad_accum_steps": 1, "logging_steps": 1, "eval_steps": 1,
                            "checkpoint_steps": None, "optimize_metric": metric, "eval_batch_tokens": "auto"})
    recipe = TrainingRecipe(cfg, Path("."))
    recipe.tracker, recipe.accelerator, recipe.is_main = Quiet(), Quiet(), False
    recipe.model = recipe.post = recipe.dev_windows = recipe._stop = None
    recipe.encoded = {"dev": None}
    for step in (1, 2, 3):
        recipe.progress.step = step
        recipe.evaluate(float(step))
    assert recipe.progress.best["step"] == kept_step


def test_a_finished_run_reports_its_recorded_best_by_the_asked_metric():
    from extractive_qa.recipe import recorded_best

    record = {"best_dev_em": 0.5, "best": {"em": 0.5, "f1": 0.75}}
    assert recorded_best(record, "f1") == 0.75 and recorded_best(record, "em") == 0.5
    assert recorded_best({"best_dev_em": 0.4}, "em") == 0.4  # a run.json from before optimize_metric


def test_early_stopping_stops_where_an_uninterrupted_run_would_even_after_a_resume(synthetic, tmp_path):
    """early_stopping.patience=2 with a min_delta no evaluation can reach: evaluations at steps 2, 4, 6 -- the
    first sets the best, the next two bring too little, training ends at step 6 with the usual best model and
    test predictions, recorded in run.json and MLflow. A run killed after step 4 (its checkpoint holds the
    counter) and resumed stops at step 6 too."""
    import signal

    from mlflow.tracking import MlflowClient

    from helpers import run_with_faults

    uri = empty_store(tmp_path)
    args = [f"paths.output_dir={tmp_path}/outputs", f"paths.cache_dir={tmp_path}/cache", f"tracking.uri={uri}",
            "experiment_name=early", "model=tiny", f"model.name_or_path={synthetic['model']}",
            f"data.dir={synthetic['data']}", "data.limit_train=96", "data.limit_dev=12", "data.limit_test=8",
            "epochs=3", "batch_size=8", "eval_steps=2", "logging_steps=2", "checkpoint_steps=2",
            "early_stopping.patience=2", "early_stopping.min_delta=1.0", "tracking.system_metrics=false"]
    run_module("extractive_qa.train", *args, f"hydra.run.dir={tmp_path}/whole")
    whole = tmp_path / "whole"
    assert json.loads((whole / "metrics.json").read_text())["steps"] == 6  # of 36
    record = json.loads((whole / "run.json").read_text())
    assert record["status"] == "FINISHED" and record["early_stopped"]["step"] == 6
    assert record["early_stopped"]["evaluations_without_improvement"] == 2
    assert (whole / "best_model" / "model.safetensors").is_file() and (whole / "test_predictions.csv").is_file()
    client = MlflowClient(uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("early").experiment_id])
    assert logged.data.tags["early_stopped_at_step"] == "6"

    killed = run_with_faults(["after:_save:4=SIGKILL"], *args, f"hydra.run.dir={tmp_path}/cut")
    assert killed.returncode == -signal.SIGKILL
    run_module("extractive_qa.train", *args, f"resume={tmp_path}/cut", f"hydra.run.dir={tmp_path}/ignored")
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["steps"] == 6
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["early_stopped"]["step"] == 6
