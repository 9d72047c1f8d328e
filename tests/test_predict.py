"""`make predict`: one row per test id, as the run itself predicted; the newest run by default; members
ranked by optimize_metric; clear errors."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest

from extractive_qa.core.data import read_examples
from extractive_qa.tracking.base import RunRow, TrackingBackend

from helpers import HW7_DIR, few_questions, needs_shared, run_module

TEST_SLICE = 200  # test questions the shared run predicts (see conftest.shared_run)


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
    small.write_text(json.dumps({**raw, "questions": raw["questions"][:TEST_SLICE]}, ensure_ascii=False),
                     encoding="utf-8")
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




class Rows(TrackingBackend):
    """A store holding a sweep of ``rows``: what top_k reads back."""

    def __init__(self, rows):
        super().__init__()
        self.rows = rows

    def find_sweep(self, sweep):
        from extractive_qa.tracking.base import SweepRecord

        return SweepRecord(id=str(sweep), run_id="p", keys=["seed"])

    def sweep_runs(self, sweep):
        return self.rows


def test_top_k_members_are_ranked_by_optimize_metric_and_named_as_their_runs(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    import extractive_qa.predict as predict_module

    def run(name, em, f1, status="FINISHED", model=True):
        (tmp_path / name / "best_model").mkdir(parents=True, exist_ok=not model)
        return RunRow(name=name, values={}, status=status, run_dir=str(tmp_path / name) if model else None,
                      params={"optimize_metric": "em"}, metrics={"best/dev_em": em, "best/dev_f1": f1})

    rows = [run("s a", 0.70, 0.74), run("s b", 0.72, 0.76), run("s c", 0.72, 0.80), run("s d", 0.9, 0.9, "FAILED"),
            run("s e", 0.95, 0.95, model=False)]
    monkeypatch.setattr(predict_module, "_backend", lambda cfg: Rows(rows))

    def top(k: int, metric=None):
        cfg = OmegaConf.create({"sweep": "s", "experiment": None, "top_k": k, "optimize_metric": metric})
        return [name for name, _ in predict_module.top_runs(cfg)]

    assert top(2) == ["s c", "s b"]  # the runs' own metric (EM): a tie, broken by F1
    assert top(2, "f1") == ["s c", "s b"] and top(3, "f1") == ["s c", "s b", "s a"]
    rows[0].metrics["best/dev_f1"] = 0.99
    assert top(1) == ["s c"] and top(1, "f1") == ["s a"]  # one override, another member
    with pytest.raises(FileNotFoundError, match="top_k=4 but only 3 finished runs"):
        top(4)


def test_without_a_store_reading_runs_back_is_one_clear_message(tmp_path):
    """tracking=none keeps no store: top_k and reports say so, naming the way out, instead of calling MLflow."""
    res = run_module("extractive_qa.predict", "top_k=2", "sweep=abcdef", "tracking=none", check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "tracking=none keeps none" in res.stderr and "tracking=mlflow" in res.stderr and "run_dirs=" in res.stderr
    res = run_module("extractive_qa.compare", "--tracking", "none", "--sweep", "abcdef", check=False)
    assert res.returncode != 0 and "tracking=none keeps none" in res.stderr and "Traceback" not in res.stderr


@needs_shared
def test_predict_says_when_the_weights_are_not_the_ones_the_run_saved(shared_run, tmp_path):
    """best_model/ carries a manifest (written last, swapped in whole): changed weights are named, an old run
    without a manifest is said to be unverifiable, and the newest-run default passes over an incomplete one."""
    run = tmp_path / "run"
    shutil.copytree(shared_run, run)
    small = few_questions(HW7_DIR / "hw7_test.json", tmp_path / "test20.json", 20)  # the weights are the point
    ok = run_module("extractive_qa.predict", f"run_dir={run}", f"output={tmp_path}/a.csv", f"test_file={small}")
    assert "warning" not in ok.stderr
    weights = run / "best_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # same size, other bytes
    changed = run_module("extractive_qa.predict", f"run_dir={run}", f"output={tmp_path}/b.csv", f"test_file={small}")
    assert "are not the ones the run saved (model.safetensors does not match its checksum)" in changed.stderr
    (run / "best_model" / "manifest.json").unlink()
    old = run_module("extractive_qa.predict", f"run_dir={run}", f"output={tmp_path}/c.csv", f"test_file={small}")
    assert "unverified: saved without a manifest" in old.stderr
    # The newest run by default: one whose best model was cut short by a kill is passed over, and named.
    newer = tmp_path / "newer"
    shutil.copytree(shared_run, newer)
    (newer / "best_model" / "model.safetensors").write_bytes(b"")
    os.utime(newer / "best_model")  # the newest (copies keep their times)
    picked = run_module("extractive_qa.predict", f"paths.output_dir={tmp_path}", f"output={tmp_path}/d.csv",
                        f"test_file={small}")
    assert f"skipped {newer}: its best_model/ is incomplete (model.safetensors has 0 bytes" in picked.stderr


def test_plain_make_predict_after_a_sweep_takes_the_sweeps_best_and_says_so(tmp_path, capsys):
    """The newest job of a sweep is as often its worst (the probe: dev EM 0.0, named only in a progress bar).
    Plain `make predict` takes the newest sweep's best finished run by optimize_metric and says so first."""
    from extractive_qa.engine.checkpointing import write_manifest
    from extractive_qa.predict import default_run

    sweep = tmp_path / "sweeps" / "s"
    for job, (em, f1) in enumerate([(0.40, 0.50), (0.55, 0.60), (0.0, 0.1)]):  # job 2, the newest, is the worst
        run = sweep / str(job)
        (run / "best_model").mkdir(parents=True)
        (run / "best_model" / "config.json").write_text("{}")
        write_manifest(run / "best_model")
        (run / "config_resolved.yaml").write_text("data: {}\n")
        (run / "run.json").write_text(json.dumps({"status": "FINISHED", "run_name": f"lr={job} · abcdef",
                                                  "sweep": {"dir": str(sweep), "id": "abcdef", "job": job},
                                                  "optimize_metric": "em", "best": {"em": em, "f1": f1}}))
        os.utime(run / "best_model", (1000 + job, 1000 + job))
    assert default_run(tmp_path) == sweep / "1"
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"predicting with lr=1 · abcdef ({sweep / '1'}): the best of sweep abcdef (3 finished runs)"
                            " by dev EM 0.5500")
    assert default_run(tmp_path, "f1") == sweep / "1"
