"""`python -m extractive_qa.evaluate`: any predictions file against hw7 or SQuAD references."""

from __future__ import annotations

import json

import pytest

from extractive_qa.evaluate import evaluate

from helpers import hw7_file, hw7_question, run_module, write_json


@pytest.fixture
def references(tmp_path):
    return hw7_file(tmp_path / "dev.json", ["台北是城市。東京很大。"],
                    [hw7_question("q1", 0, "哪？", "台北", 0), hw7_question("q2", 0, "哪？", "東京", 6)])


def test_every_predictions_shape_scores_the_same(tmp_path, references):
    csv_path = tmp_path / "sub.csv"
    csv_path.write_text("ID,Answer\nq1,台北\nq2,東京很大\n", encoding="utf-8")
    jsonl = tmp_path / "dev_predictions.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "prediction": a}, ensure_ascii=False) + "\n"
                             for i, a in (("q1", "台北"), ("q2", "東京很大"))), encoding="utf-8")
    squad = write_json(tmp_path / "preds.json", {"q1": "台北", "q2": "東京很大"})
    nbest = write_json(tmp_path / "nbest.json", {"q1": [{"text": "台北"}], "q2": [{"text": "東京很大"}, {"text": "x"}]})
    reports = [evaluate(str(p), str(references)) for p in (csv_path, jsonl, squad, nbest)]
    for r in reports:
        assert (r["em"], r["f1"]) == (0.5, pytest.approx((1 + 2 / 3) / 2)) and r["missing"] == r["extra"] == 0
        assert r["official"]["EM"] == 50.0 and r["em_cmrc2018"] == 0.5


def test_missing_and_extra_ids_are_listed_and_fail(tmp_path, references):
    squad = write_json(tmp_path / "preds.json", {"q1": "台北", "zz": "x"})
    res = run_module("extractive_qa.evaluate", str(squad), str(references), check=False)
    assert res.returncode == 1 and "1 questions have no prediction and 1 predictions match no question" in res.stderr
    report = json.loads(res.stdout)
    assert report["missing_ids"] == ["q2"] and report["extra_ids"] == ["zz"] and report["em"] == 0.5


def test_bad_files_are_named(tmp_path, references):
    dup = tmp_path / "dup.csv"
    dup.write_text("ID,Answer\nq1,a\nq1,b\n", encoding="utf-8")
    res = run_module("extractive_qa.evaluate", str(dup), str(references), check=False)
    assert res.returncode == 2 and "dup.csv, record line 3: question id 'q1' appears twice" in res.stderr
    test_file = hw7_file(tmp_path / "test.json", ["台北"], [hw7_question("q1", 0, "哪？")])
    good = write_json(tmp_path / "preds.json", {"q1": "台北"})
    res = run_module("extractive_qa.evaluate", str(good), str(test_file), check=False)
    assert res.returncode == 2 and "no question has a reference answer" in res.stderr


def test_a_limited_run_is_scored_on_the_questions_it_predicted(shared_run):
    """`make evaluate` on a run of a preset that limits the dev set (offline_smoke, the README's example): it
    printed EM 0.0032 where the run logged 0.0200, 1,593 "missing" ids, exit 1. Now it scores the 48 questions
    the run scored, agrees with the run, and says how many of the file's that is; --all keeps the old reading."""
    import json as json_module

    from helpers import HW7_DIR, run_module

    res = run_module("extractive_qa.evaluate", str(shared_run / "dev_predictions.jsonl"),
                     str(HW7_DIR / "hw7_dev.json"))
    report = json_module.loads(res.stdout)
    logged = json_module.loads((shared_run / "metrics.json").read_text())
    assert report["questions"] == 48 and report["missing"] == 0 and report["questions_in_file"] == 1893
    assert report["scope"].startswith("the 48 of the file's 1893 questions the run scored")
    for key in ("em", "f1", "em_cmrc2018", "f1_cmrc2018"):
        assert report[key] == logged[f"best_dev_{key}"], key
    whole = run_module("extractive_qa.evaluate", str(shared_run / "dev_predictions.jsonl"),
                       str(HW7_DIR / "hw7_dev.json"), "--all", check=False)
    assert whole.returncode == 1 and json_module.loads(whole.stdout)["missing"] == 1893 - 48
