"""Configurations compared from their runs' dev_predictions.jsonl, in-process: what is read, what is refused,
what the report's tables hold."""

import json

import numpy as np
import pytest

from extractive_qa.tracking.base import RunRow, TrackingBackend
from extractive_qa.tracking.comparison import Configuration, compare, load
from extractive_qa.tracking.report import long_buckets


def run_dir(tmp_path, name: str, em: list, seed: int = 0) -> RunRow:
    folder = tmp_path / name
    folder.mkdir()
    rng = np.random.default_rng(seed)
    rows = [{"id": f"q{i}", "question": f"問題{i}是誰？", "prediction": "台北" if x == 1 else "高雄",
             "references": ["台北"] if i else [], "em": x,
             "f1": x if x is None else float(x) * 0.5 + 0.5 * rng.random()}
            for i, x in enumerate(em)]
    (folder / "dev_predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return RunRow(name=name, values={}, status="FINISHED", metrics={"best/dev_em": float(np.mean(
        [x for x in em[1:] if x is not None]))}, run_dir=str(folder))


def test_a_null_score_is_refused_naming_the_run_file_and_question(tmp_path):
    a = Configuration("lr=1", [run_dir(tmp_path, "a1", [1, 1, 0, 1]), run_dir(tmp_path, "a2", [1, 0, None, 1])])
    b = Configuration("lr=2", [run_dir(tmp_path, "b1", [1, 0, 0, 1]), run_dir(tmp_path, "b2", [0, 0, 0, 1])])
    with pytest.raises(ValueError, match=r"run a2: .*a2/dev_predictions\.jsonl holds em=None for question 'q2'"):
        load(TrackingBackend(), [a, b])


def test_questions_without_references_are_left_out_and_tables_read_in_mlflow(tmp_path):
    rng = np.random.default_rng(0)
    em = [[int(x) for x in rng.random(60) < p] for p in (0.8, 0.75, 0.5, 0.45)]
    a = Configuration("wr=0.1", [run_dir(tmp_path, "a1", em[0], 1), run_dir(tmp_path, "a2", em[1], 2)])
    b = Configuration("wr=0.2", [run_dir(tmp_path, "b1", em[2], 3), run_dir(tmp_path, "b2", em[3], 4)])
    questions = load(TrackingBackend(), [a, b])
    assert len(questions.ids) == 59 and "q0" not in questions.ids  # q0 has no reference: not in the run's EM
    assert a.scores["em"].matrix.shape == (2, 59)
    result = compare([b, a], questions, "em", {"question word": ["誰/谁"] * 59})
    assert result.reference == "wr=0.1"  # the best by mean EM, whatever order the sides came in
    (row,) = result.differences
    assert row["verdict"] in ("real", "not established") and row["seeds"] == 2
    assert row["ΔEM (points)"] == pytest.approx(100 * (a.scores["em"].mean - b.scores["em"].mean), abs=0.01)
    assert not any("." in key for key in row)  # MLflow's table view reads a dot in a column name as a path
    long = long_buckets(result.buckets)
    assert {r["configuration"] for r in long} == {"wr=0.1", "wr=0.2"} and set(long[0]) == {
        "bucketing", "bucket", "questions", "configuration", "EM"}
