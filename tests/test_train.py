"""The training recipe end to end: it learns, it writes every per-run file, sweeps run as typed,
the predictor writes one row per test id, and missing model or data stop with one clear message."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from extractive_qa.core.data import read_examples

from helpers import HW7_DIR, needs_shared, read_metrics, run_module


def common(tmp: Path) -> list[str]:
    """Keep every test run out of the project's outputs/, cache and MLflow store."""
    return [f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache", "tracking=none"]


TEST_SLICE = 200  # test questions the shared run predicts (the predictor test compares them one by one)


def test_tiny_model_learns_synthetic_chinese_qa(seed_sweep, synthetic):
    """Each of the seed sweep's tiny models (random init, 4 epochs on 1,500 questions) learns the task."""
    from extractive_qa.evaluate import evaluate

    for run_dir in seed_sweep["runs"]:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["best_dev_em"] >= 0.75, metrics
        losses = [m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m]
        assert losses[-1] < losses[0] / 4
        # `evaluate` on the run's dev predictions reproduces the dev scores the run logged (one scoring code).
        report = evaluate(str(run_dir / "dev_predictions.jsonl"), str(synthetic["data"] / "hw7_dev.json"))
        for key in ("em", "f1", "em_cmrc2018", "f1_cmrc2018"):
            assert report[key] == metrics[f"best_dev_{key}"], key


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory) -> Path:
    if not HW7_DIR.is_dir():
        pytest.skip("needs ../shared")
    tmp = tmp_path_factory.mktemp("shared_run")
    run_dir = tmp / "run"
    run_module("extractive_qa.train", *common(tmp), "experiment=offline_smoke", "data.limit_train=96", "data.limit_dev=48",
               f"data.limit_test={TEST_SLICE}", "epochs=1", "max_steps=3", "logging_steps=1", f"hydra.run.dir={run_dir}")
    return run_dir


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
                     "data.limit_dev=16", "data.limit_test=16", "epochs=1", "max_steps=8", "logging_steps=1", "batch_size=8",
                     f"hydra.sweep.dir={tmp_path}/sweep")
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"], res.stdout
    curves = [[m["train/lr"] for m in read_metrics(j) if "train/lr" in m] for j in jobs]
    assert len(curves[0]) == len(curves[1]) == 8 and curves[0] != curves[1]
    # warmup 0.1 of 8 steps peaks after 1 step; 0.5 after 4
    assert curves[0].index(max(curves[0])) < curves[1].index(max(curves[1]))
    for j in jobs:
        assert (j / "test_predictions.csv").is_file()


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


def predict_in_process(*overrides: str) -> dict:
    """The predictor, composed and run in this process (imports paid once for all the checks below)."""
    from hydra import compose, initialize_config_dir

    from extractive_qa.core.config import CONF_DIR
    from extractive_qa.predict import run_predict

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return run_predict(compose("predict", overrides=list(overrides)))


@needs_shared
def test_predictor_writes_every_test_id_once_as_the_run_did(shared_run, tmp_path):
    import torch

    from extractive_qa.core.errors import SetupError

    raw = json.loads((HW7_DIR / "hw7_test.json").read_text(encoding="utf-8"))
    small = tmp_path / "test_slice.json"
    small.write_text(json.dumps({**raw, "questions": raw["questions"][:TEST_SLICE]}, ensure_ascii=False), encoding="utf-8")
    out = predict_in_process(f"run_dir={shared_run}", f"test_file={small}", f"output={tmp_path}/sub.csv")
    assert out["output"] == str(tmp_path / "sub.csv")
    ids = [ex.id for ex in read_examples(small)]
    with open(tmp_path / "sub.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["ID"] for r in table] == ids and len(set(ids)) == len(ids) == TEST_SLICE
    # Same model, same precision rule, same post-processing code: the run's own test predictions.
    with open(shared_run / "test_predictions.csv", newline="", encoding="utf-8") as f:
        assert [r["Answer"] for r in csv.DictReader(f)] == [r["Answer"] for r in table]
    # Defaults: the newest run under outputs/, and its own folder; any precision the machine runs.
    newest = predict_in_process(f"paths.output_dir={shared_run.parent}", f"test_file={small}", "mixed_precision=no")
    assert newest["output"] == str(shared_run / "submission.csv")
    # An existing folder as output: the CSV goes inside, and no temporary file is left behind.
    folder = tmp_path / "folder"
    folder.mkdir()
    assert predict_in_process(f"run_dir={shared_run}", f"test_file={small}", f"output={folder}")["output"] == \
        str(folder / "submission.csv")
    assert sorted(p.name for p in folder.iterdir()) == ["submission.csv"]
    if not torch.cuda.is_available():
        with pytest.raises(SetupError, match="fp16 needs a CUDA GPU"):
            predict_in_process(f"run_dir={shared_run}", "mixed_precision=fp16")


def test_predictor_names_a_run_without_a_model(tmp_path):
    empty = tmp_path / "no_model"
    empty.mkdir()
    res = run_module("extractive_qa.predict", f"run_dir={empty}", check=False)
    assert res.returncode == 2 and "holds no trained model" in res.stderr and "Traceback" not in res.stderr


def test_train_loss_is_a_mean_over_full_windows_and_a_short_tail_is_not_a_point():
    from extractive_qa.train import LogWindow, TrainingRecipe

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
        recipe = TrainingRecipe(cfg, Path("."))
        recipe.tracker, recipe.scheduler, recipe.total_steps = Recorder(), Schedule(), total
        recipe._log_window = LogWindow()
        for step in range(1, total + 1):
            recipe.progress.step = step
            recipe._log_window.add(1.0, 0.5, 8, 80)
            recipe._maybe_log(0.0, Bar())
        assert logged == expected
