"""Nothing false, nothing lost (issue 23), each case provoked for real: bad config values, a full disk, a
process killed without a word, a resume after a kill, ids made of control characters, non-finite numbers in
JSON, a CSV row with more cells than its header."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from extractive_qa.core.runs import KILLED, RUNNING, read_run_record, this_process

from helpers import empty_store, run_module, run_script, run_with_faults
from helpers.disk import FILL_ENV, LEAVE_ENV, tmpfs


def tiny(synthetic, tmp: Path, uri: str | None = None, experiment: str = "integrity") -> list[str]:
    tracking = [f"tracking.uri={uri}", f"experiment_name={experiment}"] if uri else ["tracking=none"]
    return [f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache", "model=tiny",
            f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}", "data.limit_train=80",
            "data.limit_dev=12", "data.limit_test=8", "epochs=2", "batch_size=8", "logging_steps=1",
            "predict_test=false", *tracking]


def mlflow_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def strict_json(text: str):
    """``json.loads`` that refuses the NaN / Infinity Python writes by default."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- configs checked before anything runs
BAD_VALUES = {  # override -> what the one line must say
    "epochs=0": "epochs=0: input should be greater than or equal to 1. Fix: epochs=2",
    "batch_size=0": "batch_size=0: input should be greater than or equal to 1. Fix: batch_size=16",
    "seed=abc": "seed=abc: input should be a valid integer",
    "lr=-1": "lr=-1: input should be greater than 0. Fix: lr=3e-5",
    "window.doc_overlap=400": "window: doc_overlap=400 must be smaller than the 317 context tokens",
    "window.max_seq_len=16": "window: max_seq_len=16 leaves under 8 context tokens",
    "max_answer_len=0": "max_answer_len=0: input should be greater than or equal to 1",
    "warmup_ratio=1.5": "warmup_ratio=1.5: input should be less than 1",
    "attention=flash": "attention=flash: input should be 'auto', 'sdpa' or 'eager'",
    "compile=no": "compile=no: input should be a valid boolean. Fix: compile=false or true",
}


@pytest.mark.parametrize("override", list(BAD_VALUES))
def test_a_bad_config_value_is_one_line_exit_2_and_leaves_nothing(synthetic, tmp_path, override):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    res = run_module("extractive_qa.train", *tiny(synthetic, tmp_path, uri), override, check=False)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {lines[0].removeprefix('error: ')}"] and BAD_VALUES[override] in lines[0], lines
    runs = tmp_path / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "no run folder is left behind"
    assert not mlflow_runs(uri, "integrity") if (tmp_path / "mlflow.db").exists() else True


def test_a_fresh_process_refuses_a_bad_value_before_it_imports_torch(synthetic, tmp_path):
    """What the entry point's precheck is for (core/precheck.py): in a fresh interpreter the bad value is refused
    with the same line and exit 2 before torch is imported. (The test above runs forked from an interpreter that has
    torch already, where the job's own check refuses it.)"""
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('torch imported:', 'torch' in sys.modules)); "
            "sys.argv = ['train', *sys.argv[1:]]; runpy.run_module('extractive_qa.train', run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code, *tiny(synthetic, tmp_path), "epochs=0"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {BAD_VALUES['epochs=0']}"), lines
    assert res.stdout.strip() == "torch imported: False"
    assert not (tmp_path / "outputs").exists()  # not even the run folder Hydra would make


def test_a_bad_value_in_a_sweep_fails_its_job_with_the_same_line(synthetic, tmp_path):
    """In a sweep (checked per job, inside Hydra's job): that job FAILED with the line, no MLflow run for it."""
    uri = empty_store(tmp_path)
    res = run_module("extractive_qa.train", "-m", *tiny(synthetic, tmp_path, uri, "sweepbad"), "batch_size=0",
                     f"hydra.sweep.dir={tmp_path}/sweep", check=False)
    assert res.returncode == 1
    assert "job 0 FAILED: error: batch_size=0: input should be greater than or equal to 1" in res.stderr
    assert [r for r in mlflow_runs(uri, "sweepbad") if r.data.tags.get("sweep.parent") != "true"] == []


def test_bad_predict_values_are_one_line_exit_2(tmp_path):
    res = run_module("extractive_qa.predict", "top_k=0", "combine=vote", f"paths.output_dir={tmp_path}",
                     check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.splitlines() == [
        "error: top_k=0: input should be greater than or equal to 1. Fix: top_k=3 (the best runs to ensemble), or null",
        "error: combine=vote: input should be 'auto', 'logits' or 'nbest'. Fix: combine=auto (or logits, nbest)"]


# ---------------------------------------------------------------- a full disk
def _disk_full_outcome(res, run: Path, uri: str, experiment: str) -> None:
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no space left on the disk of" in lines[0] and "paths.output_dir=" in lines[0]
    assert "Traceback" not in res.stderr
    assert not list(run.rglob(".tmp_*")), "the half-written folder is removed first"
    record = json.loads((run / "run.json").read_text())
    said = f"error: no space left on the disk of {run} ("
    assert lines[0].startswith(said) and record["status"] == "FAILED" and record["error"].startswith(said), record
    assert said in (run / "train.log").read_text()  # and train.log says it too
    (mlflow_run,) = mlflow_runs(uri, experiment)
    assert mlflow_run.info.status == "FAILED"


def test_a_full_disk_during_a_checkpoint_fails_the_run_truly_and_frees_the_space(synthetic, tmp_path):
    """A real full disk: a 40 MB tmpfs holding the run folder, filled to its last 64 KB by another writer
    just before the step-2 checkpoint (the bug report: 30 MB, checkpoint_steps=2)."""
    with tmpfs(tmp_path / "disk", 40) as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs needs root (the injected ENOSPC test below covers the same path)")
        uri = empty_store(tmp_path)  # the store lives on another disk, as a server's would
        run = disk / "run"
        res = run_with_faults(["before:_save:2=call:helpers.disk:fill_disk"], *tiny(synthetic, tmp_path, uri, "full"),
                              "checkpoint_steps=2", f"paths.output_dir={disk}", f"hydra.run.dir={run}",
                              env={FILL_ENV: str(disk)})
        _disk_full_outcome(res, run, uri, "full")


def test_a_full_disk_met_by_torchs_writer_is_named_a_full_disk(synthetic, tmp_path):
    """Room for the checkpoint's weights (safetensors, 2.1 MB) but not for its optimizer state: torch's zip
    writer fails with "RuntimeError: [enforce fail at inline_container.cc] . unexpected pos", which names no
    disk. The run still ends in the one disk-full line, in run.json, MLflow and train.log."""
    with tmpfs(tmp_path / "disk", 40) as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs needs root")
        uri = empty_store(tmp_path)
        run = disk / "run"
        res = run_with_faults(["before:_save:2=call:helpers.disk:fill_disk"], *tiny(synthetic, tmp_path, uri, "torch"),
                              "checkpoint_steps=2", f"paths.output_dir={disk}", f"hydra.run.dir={run}",
                              env={FILL_ENV: str(disk), LEAVE_ENV: "3000"})
        _disk_full_outcome(res, run, uri, "torch")
        (mlflow_run,) = mlflow_runs(uri, "torch")
        assert mlflow_run.data.tags["error"].startswith("error: no space left on the disk of")


def test_a_write_failing_with_enospc_inside_the_best_model_removes_the_half_written_folder(synthetic, tmp_path):
    """The same path without a tmpfs: the write of the first best model fails at a named point (its manifest,
    after the weights); the half-written folder goes (a kill while a later best is written keeps the previous
    one: tests/test_first_run.py)."""
    uri = empty_store(tmp_path)
    run = tmp_path / "run"
    res = run_with_faults(["before:extractive_qa.engine.checkpointing.write_manifest=enospc"],
                          *tiny(synthetic, tmp_path, uri, "enospc"), "eval_steps=5", f"hydra.run.dir={run}")
    _disk_full_outcome(res, run, uri, "enospc")
    assert not (run / "best_model").exists()


# ---------------------------------------------------------------- a process killed without a word
def _dead_process() -> dict:
    """The record of a process that has exited (its pid, and a start time no live process has)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return {**this_process(), "pid": int(child.stdout), "proc_start": "-1"}


def test_a_running_record_whose_process_is_gone_reads_killed_and_a_live_one_running(tmp_path):
    alive, dead = tmp_path / "alive", tmp_path / "dead"
    for folder, process in ((alive, this_process()), (dead, _dead_process())):
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"status": RUNNING, "process": process}))
    other_host = tmp_path / "elsewhere"
    other_host.mkdir()
    (other_host / "run.json").write_text(json.dumps({"status": RUNNING, "process": {
        **_dead_process(), "host": socket.gethostname() + "-other"}}))
    assert read_run_record(alive)["status"] == RUNNING
    assert read_run_record(other_host)["status"] == RUNNING  # cannot be told from here
    record = read_run_record(dead)
    assert record["status"] == KILLED and "ended without recording a status" in record["error"]
    assert json.loads((dead / "run.json").read_text())["status"] == KILLED  # written down for every reader


def test_a_run_killed_before_its_first_checkpoint_reads_killed_to_resume_reports_and_mlflow(synthetic, tmp_path):
    uri = empty_store(tmp_path)
    args = tiny(synthetic, tmp_path, uri, "killed")
    killed = tmp_path / "outputs" / "runs" / "killed"
    res = run_with_faults(["after:_optimizer_step:3=SIGKILL"], *args, f"hydra.run.dir={killed}")
    assert res.returncode == -signal.SIGKILL
    raw = json.loads((killed / "run.json").read_text())
    assert raw["status"] == RUNNING and raw["process"]["pid"] and raw["heartbeat"].endswith("(step 3)")
    (before,) = mlflow_runs(uri, "killed")
    assert before.info.status == "RUNNING"  # what the store said for good before this issue

    # resume=auto says why it cannot continue it, and trains a fresh run
    again = run_module("extractive_qa.train", *args, "resume=auto",
                       f"hydra.run.dir={tmp_path}/outputs/runs/again")
    said = again.stdout + again.stderr
    assert f"run {killed} was killed: its process (pid {raw['process']['pid']}" in said
    assert f"resume=auto: starting fresh: no run of this identity ({raw['identity']['digest']}) can be continued: " \
           f"{killed} (KILLED) has no complete checkpoint" in said
    assert json.loads((killed / "run.json").read_text())["status"] == KILLED
    by_name = {r.info.run_id: r for r in mlflow_runs(uri, "killed")}
    assert by_name[before.info.run_id].info.status == "KILLED"
    assert "ended without recording a status" in by_name[before.info.run_id].data.tags["error"]


def test_plain_make_predict_ends_a_run_killed_before_its_first_evaluation(synthetic, tmp_path):
    """A run with no model to predict with is still read by plain `make predict`, which ends it KILLED in run.json
    and in MLflow, as every reader does (it stayed RUNNING in MLflow for good)."""
    uri = empty_store(tmp_path)
    killed = tmp_path / "outputs" / "runs" / "killed"
    res = run_with_faults(["after:_optimizer_step:2=SIGKILL"], *tiny(synthetic, tmp_path, uri, "killed"),
                          f"hydra.run.dir={killed}")
    assert res.returncode == -signal.SIGKILL
    (before,) = mlflow_runs(uri, "killed")
    assert before.info.status == "RUNNING"
    predicted = run_module("extractive_qa.predict", f"paths.output_dir={tmp_path}/outputs", f"tracking.uri={uri}",
                           check=False)
    assert predicted.returncode == 2 and "no trained run with a complete best_model/" in predicted.stderr
    assert json.loads((killed / "run.json").read_text())["status"] == KILLED
    (after,) = mlflow_runs(uri, "killed")
    assert after.info.status == "KILLED"


def test_a_sweep_job_killed_without_a_word_counts_as_killed(tmp_path):
    from extractive_qa.tracking.sweep import job_outcomes

    sweep = tmp_path / "sweep"
    (sweep / ".jobs").mkdir(parents=True)
    (sweep / ".jobs" / "0.json").write_text(json.dumps({"job": 0, "status": "FINISHED", "run_dir": "x"}))
    (sweep / "1").mkdir()
    (sweep / "1" / "run.json").write_text(json.dumps({"status": RUNNING, "process": _dead_process()}))
    assert [(o["job"], o["status"]) for o in job_outcomes(sweep)] == [(0, "FINISHED"), (1, KILLED)]


def test_a_report_reads_a_dead_run_as_killed(tmp_path):
    from extractive_qa.tracking.parents import row_of

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"status": RUNNING, "process": _dead_process()}))

    class Run:  # the fields of an MLflow run that row_of reads
        class info:
            run_name, status, run_id = "r", "RUNNING", "abc"

        class data:
            tags, metrics, params = {"run_dir": str(run_dir)}, {}, {}

    assert row_of(Run).status == KILLED


# ---------------------------------------------------------------- resume without duplicates
def test_resume_after_a_kill_during_the_second_checkpoint_logs_every_step_once(synthetic, tmp_path):
    uri = empty_store(tmp_path)
    args = [*tiny(synthetic, tmp_path, uri, "dupes"), "checkpoint_steps=2"]
    run = tmp_path / "outputs" / "runs" / "r"
    res = run_with_faults(["before:_save:4=SIGKILL"], *args, f"hydra.run.dir={run}")
    assert res.returncode == -signal.SIGKILL
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[:4] == [1, 2, 3, 4]  # logged before the kill; the checkpoint holds step 2
    run_module("extractive_qa.train", *args, f"resume={run}", f"hydra.run.dir={tmp_path}/second")
    loss_steps = [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                  if "train/loss" in m]
    assert loss_steps == list(range(1, 21))
    (mlflow_run,) = mlflow_runs(uri, "dupes")
    history = MlflowClient(uri).get_metric_history(mlflow_run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 21))
    dev = MlflowClient(uri).get_metric_history(mlflow_run.info.run_id, "dev/em")
    assert sorted(m.step for m in dev) == [10, 20]


# ---------------------------------------------------------------- files that always parse
CONTROL = [chr(c) for c in [*range(32), 127, 0x85, 0x2028, 0x2029]]


def test_ids_made_of_control_characters_round_trip_through_csv_and_pandas(tmp_path):
    import csv

    import pandas as pd

    from extractive_qa.core.answers import read_answers
    from extractive_qa.core.data import Example
    from extractive_qa.core.outputs import write_submission
    from extractive_qa.core.postprocess import Prediction

    ids = [*CONTROL, *(f"q{c}x" for c in CONTROL), "\r\n", "=1+1", "a,b", '"q"', ""]
    examples = [Example(id=i, question="?", context="c", context_key="k") for i in ids]
    predictions = [Prediction(id=i, text=f"答{n}\r\n,\"", score=0.0) for n, i in enumerate(ids)]
    path = write_submission(tmp_path / "submission.csv", examples, predictions)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == ids and len(rows) == len(ids) + 1
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(frame["ID"]) == ids and list(frame["Answer"])[3] == '答3  ,"'
    assert list(read_answers(path)) == ids


def test_json_files_hold_null_where_a_number_is_not_finite(tmp_path):
    from extractive_qa.core.outputs import json_text, nbest_json, write_json, write_jsonl
    from extractive_qa.core.postprocess import Prediction

    empty_context = Prediction(id="q1", text="", score=float("-inf"))
    write_json(tmp_path / "test_nbest.json", nbest_json([empty_context]))
    assert strict_json((tmp_path / "test_nbest.json").read_text())["q1"][0]["score"] is None
    write_jsonl(tmp_path / "rows.jsonl", [{"loss": float("nan"), "x": [1.0, float("inf")]}])
    assert strict_json((tmp_path / "rows.jsonl").read_text()) == {"loss": None, "x": [1.0, None]}
    import numpy as np

    numbers = {"a": np.float32("nan"), "b": np.float64(2.5), "c": np.int64(3)}
    assert json_text(numbers) == '{"a": null, "b": 2.5, "c": 3.0}'


def test_evaluate_refuses_a_row_with_more_cells_than_its_header(tmp_path):
    references = tmp_path / "dev.json"
    references.write_text(json.dumps({"questions": [{"id": 0, "paragraph_id": 0, "question_text": "哪裡？",
                                                     "answer_text": "歐洲", "answer_start": 0, "answer_end": 1}],
                                      "paragraphs": ["歐洲很大。"]}, ensure_ascii=False), encoding="utf-8")
    predictions = tmp_path / "pred.csv"
    predictions.write_text("ID,Answer\n0,歐,洲\n", encoding="utf-8")
    res = run_module("extractive_qa.evaluate", str(predictions), str(references), check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{predictions}, record line 2: 3 cells under a 2-column header" in res.stderr
    assert '"歐,洲"' in res.stderr


def test_the_process_record_names_this_process():
    record = this_process()
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert record["proc_start"] is None or record["proc_start"].isdigit()


# ---------------------------------------------------------------- atomic best models
_SAVE_TWICE = """
import os, signal, sys
from pathlib import Path
from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering
from extractive_qa.engine import checkpointing

model_dir, folder, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = BertForQuestionAnswering(BertConfig.from_pretrained(model_dir))
checkpointing.save_model_folder(model, tokenizer, folder, {"step": 1})
real = getattr(checkpointing, kill_at)

def killed(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

setattr(checkpointing, kill_at, killed)
checkpointing.save_model_folder(model, tokenizer, folder, {"step": 2})
"""


@pytest.mark.parametrize(("kill_after", "kept_step"), [("share_files", 1), ("_set_aside", 2)])
def test_a_kill_while_a_better_model_is_saved_keeps_a_complete_best_model(synthetic, tmp_path, kill_after, kept_step):
    """kill -9 while the second best model is written (before its manifest: the previous one stays) or between
    the two renames (no best_model/ at all for a moment: the complete new one is put back), and make predict's
    choice of run takes it."""
    from extractive_qa.engine.checkpointing import model_folder_problem
    from extractive_qa.predict import newest_run

    run = tmp_path / "outputs" / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config_resolved.yaml").write_text("{}\n")
    script = tmp_path / "save_twice.py"
    script.write_text(_SAVE_TWICE)
    res = run_script(script, str(synthetic["model"]), str(run / "best_model"), kill_after)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert newest_run(tmp_path / "outputs") == run
    assert model_folder_problem(run / "best_model") is None
    assert json.loads((run / "best_model" / "saved.json").read_text())["step"] == kept_step
    assert sorted(p.name for p in run.iterdir()) == ["best_model", "config_resolved.yaml"]


def test_a_dead_run_is_ended_in_the_store_by_whichever_reader_can(tmp_path, monkeypatch):
    """Issue 29: a dead run read by a process that cannot reach its store (or has no tracking loaded, as `make
    predict` had) became KILLED in run.json only, and every later reader saw KILLED and left MLflow RUNNING for
    good. Now the record says whether the store was told; the next reader that can, tells it."""
    from mlflow.tracking import MlflowClient

    from extractive_qa.core import runs
    from extractive_qa.core.runs import read_run_record
    from extractive_qa.tracking.mlflow_backend import MlflowBackend

    uri = empty_store(tmp_path)
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("dead")).info.run_id
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    store = MlflowBackend({"uri": uri}, tmp_path).describe()
    (run_dir / "run.json").write_text(json.dumps({"status": RUNNING, "process": _dead_process(),
                                                  "mlflow_run_id": run_id, "tracking_store": store}))
    monkeypatch.setattr(runs, "_KILLED_LISTENERS", [])  # a reader without the tracking listener (old predict)
    first = read_run_record(run_dir)
    assert first["status"] == KILLED and first["store_ended"] is False
    assert client.get_run(run_id).info.status == "RUNNING"
    monkeypatch.undo()  # the next reader has it
    second = read_run_record(run_dir)
    assert second["status"] == KILLED and second["store_ended"] is True
    assert client.get_run(run_id).info.status == "KILLED"
    assert json.loads((run_dir / "run.json").read_text())["store_ended"] is True


def test_a_best_model_lost_to_a_kill_is_explained_and_its_half_written_folder_cleaned(tmp_path):
    """A run killed while its first best model was written: make predict blamed save_model=false although an
    evaluation had run, and left .tmp_best_model behind. Now it says what happened, and the next reader of a
    dead run cleans the unfinished folder (never while the run is alive: its own save may be mid-swap)."""
    import pytest

    from extractive_qa.predict import check_run_dir

    run = tmp_path / "run"
    (run / ".tmp_best_model").mkdir(parents=True)
    (run / ".tmp_best_model" / "model.safetensors").write_bytes(b"\0" * 10)  # no manifest: unfinished
    (run / "config_resolved.yaml").write_text("save_model: true\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 5, "time_ms": 0, "dev/em": 0.1}) + "\n")
    alive = {"status": RUNNING, "process": this_process()}
    (run / "run.json").write_text(json.dumps(alive))
    with pytest.raises(FileNotFoundError):
        check_run_dir(run)
    assert (run / ".tmp_best_model").is_dir()  # a live run's save is left alone
    (run / "run.json").write_text(json.dumps({**alive, "process": _dead_process()}))
    with pytest.raises(FileNotFoundError) as err:
        check_run_dir(run)
    said = str(err.value)
    assert "it evaluated, but no complete best_model/ survived: the run is KILLED" in said
    assert "save_model=false" not in said and f"resume={run}" in said
    assert not (run / ".tmp_best_model").exists()
