"""Bad input: each case gives a clear error naming the file, the record and the fix (see also
test_data.py's malformed-file cases), or a counted repair -- and no test id is ever dropped or
duplicated in the predictions."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from extractive_qa.core.data import DataFormatError, RepairKind, read_examples
from extractive_qa.core.outputs import write_submission
from extractive_qa.core.postprocess import oracle_logits, postprocess_predictions
from extractive_qa.core.windowing import WindowConfig, encode_examples, eval_windows

from helpers import hw7_file, hw7_question

LONG = ("的是在了和有人這中大為上個國我以要他時來用們生到作地於出就分對成會可主發年動同工也能下" * 1200)[:50_000]


def _oracle_texts(examples, tokenizer, window=None):
    window = window or WindowConfig()
    enc = encode_examples(examples, tokenizer, window)
    windows = eval_windows(enc, window)
    s, e = oracle_logits(enc, windows)
    return enc, windows, postprocess_predictions(enc, windows, s, e, max_answer_len=100)


def test_dirty_but_readable_file_is_repaired_counted_and_fully_predicted(tmp_path, char_tokenizer):
    paragraphs = [
        "𠮷𠮷野家在東京。",          # 0: characters outside the BMP before the answer
        "張三住在台北\u3000市。",     # 1: full-width space inside the answer
        "李四住在台\u200b北。",       # 2: zero-width space inside the answer
        "",                           # 3: empty context
        LONG[:25_000] + "上海" + LONG[25_000:],  # 4: a 50,002-character paragraph
        "王五在銀行工作。",
    ]
    questions = [
        hw7_question(1, 0, "在哪裡？", "東京", 7, 8),            # UTF-16 offset (2 extra units)
        hw7_question(2, 1, "住哪？", "台北\u3000市", 4),
        hw7_question(3, 2, "住哪？", "台\u200b北", 4),
        hw7_question(4, 3, "空段落？", "台北", 0),                # answer not in (empty) context
        hw7_question(5, 4, "哪個城市？", "上海", 25_000),
        hw7_question(6, 5, "", "銀行", 3),                        # empty question
        hw7_question(7, 5, "王五" * 200 + "在哪裡工作？", "銀行", 3),  # far longer than max_question_len
        hw7_question(8, 5, "在哪？", "銀行", 999),                # answer_start past the end
        hw7_question(9, 5, "哪？", "學校", 0),                    # answer not in the context
    ]
    examples = read_examples(hw7_file(tmp_path / "dirty.json", paragraphs, questions))
    r = examples.repairs
    assert r[RepairKind.UTF16_OFFSET] == 1 and r[RepairKind.EMPTY_CONTEXT] == 1 and r[RepairKind.EMPTY_QUESTION] == 1
    assert r[RepairKind.SHIFTED] == 1 and r[RepairKind.NOT_IN_CONTEXT] == 2 and r[RepairKind.NO_TRAINING_LABEL] == 2
    enc, windows, preds = _oracle_texts(examples.examples, char_tokenizer)
    assert enc.stats["questions_truncated"] == 1
    assert len(np.flatnonzero(windows.example_index == 4)) > 100  # the long paragraph is covered by many windows
    by_id = {p.id: p.text for p in preds}
    unlabelled = by_id.pop("9")  # no gold span: the oracle has no evidence, but the question still gets a span
    assert unlabelled and unlabelled in paragraphs[5], unlabelled  # ... of its own paragraph, never another's
    assert by_id == {"1": "東京", "2": "台北\u3000市", "3": "台\u200b北", "4": "", "5": "上海", "6": "銀行",
                     "7": "銀行", "8": "銀行"}


def test_test_file_predictions_keep_every_id_exactly_once(tmp_path, char_tokenizer):
    paragraphs = ["台北是城市。", "", LONG[:5000]]
    questions = [hw7_question(i, i % 3, "哪裡？" if i % 4 else "") for i in range(40)]
    examples = read_examples(hw7_file(tmp_path / "test.json", paragraphs, questions))
    window = WindowConfig(max_seq_len=64, max_question_len=8, doc_overlap=16)
    enc = encode_examples(examples.examples, char_tokenizer, window)
    windows = eval_windows(enc, window)
    rng = np.random.default_rng(0)
    lengths = [enc.sequence_length(int(i), int(c))
               for i, c in zip(windows.example_index, windows.context_len, strict=True)]
    preds = postprocess_predictions(enc, windows, [rng.normal(size=n) for n in lengths],
                                    [rng.normal(size=n) for n in lengths])
    out = write_submission(tmp_path / "sub.csv", examples.examples, preds)
    with open(out, newline="", encoding="utf-8") as f:
        ids = [row["ID"] for row in csv.DictReader(f)]
    assert ids == [str(i) for i in range(40)]


def test_submission_refuses_to_drop_or_duplicate(tmp_path, char_tokenizer):
    questions = [hw7_question(1, 0, "哪？"), hw7_question(2, 0, "哪？")]
    examples = read_examples(hw7_file(tmp_path / "t.json", ["台北"], questions))
    _, _, preds = _oracle_texts(examples.examples, char_tokenizer)
    with pytest.raises(ValueError, match="1 questions have no prediction"):
        write_submission(tmp_path / "s.csv", examples.examples, preds[:1])


def test_submission_quotes_commas_and_newlines_or_strips_commas(tmp_path, char_tokenizer):
    from extractive_qa.core.postprocess import Prediction

    examples = read_examples(hw7_file(tmp_path / "t.json", ["x"], [hw7_question(1, 0, "q"), hw7_question(2, 0, "q")]))
    preds = [Prediction(id="1", text='台北, "市"', score=0.0), Prediction(id="2", text="a\nb", score=0.0)]
    with open(write_submission(tmp_path / "a.csv", examples.examples, preds), newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["ID", "Answer"], ["1", '台北, "市"'], ["2", "a b"]]
    with open(write_submission(tmp_path / "b.csv", examples.examples, preds, strip_commas=True), encoding="utf-8") as f:
        assert f.read().splitlines()[1] == '1,"台北 ""市"""'


def test_non_bmp_and_unk_characters_round_trip(char_tokenizer, tmp_path):
    examples = read_examples(hw7_file(tmp_path / "u.json", ["他叫𠮷田ＡＢＣ，住在龘城。"],
                                      [hw7_question(1, 0, "叫什麼？", "𠮷田ＡＢＣ", 3),
                                       hw7_question(2, 0, "住哪？", "龘城", 11)]))
    assert examples.repairs[RepairKind.UTF16_OFFSET] == 1  # "龘城" at UTF-16 offset 11 is character 10
    _, _, preds = _oracle_texts(examples.examples, char_tokenizer)
    assert [p.text for p in preds] == ["𠮷田ＡＢＣ", "龘城"]


def test_empty_test_file_is_an_error(tmp_path):
    path = hw7_file(tmp_path / "empty.json", [], [])
    with pytest.raises(DataFormatError, match="holds no questions"):
        read_examples(path)


def test_nan_infinity_and_compressed_files(tmp_path):
    import gzip
    import json
    import zipfile

    good = {"questions": [hw7_question(1, 0, "哪？", "台北", 0)], "paragraphs": ["台北"]}
    text = json.dumps(good, ensure_ascii=False)
    (tmp_path / "nan.json").write_text(text.replace('"answer_start": 0', '"answer_start": NaN'), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"nan.json: the non-standard JSON literal NaN \(first on line 1\)"):
        read_examples(tmp_path / "nan.json")
    (tmp_path / "inf.json").write_text(text.replace('"id": 1', '"id": -Infinity'), encoding="utf-8")
    with pytest.raises(DataFormatError, match="-Infinity.*JSON has no NaN or Infinity"):
        read_examples(tmp_path / "inf.json")
    (tmp_path / "data.json").write_bytes(gzip.compress(text.encode()))  # gzip, whatever the name: read as is
    assert [e.answer_text for e in read_examples(tmp_path / "data.json")] == ["台北"]
    with zipfile.ZipFile(tmp_path / "z.json", "w") as zf:
        zf.writestr("hw7.json", text)
    with pytest.raises(DataFormatError, match="z.json: the file is a zip archive, not JSON. Fix: unpack it"):
        read_examples(tmp_path / "z.json")
    (tmp_path / "latin.json").write_bytes(text.replace("台北", "caf\u00e9").encode("latin-1", "replace"))
    with pytest.raises(DataFormatError, match="not UTF-8"):
        read_examples(tmp_path / "latin.json")


def test_squad_v2_unanswerable_questions_are_refused_or_dropped_and_counted(tmp_path):
    from helpers import write_json

    qas = [{"id": "a", "question": "哪？", "answers": [{"text": "台北", "answer_start": 0}]},
           {"id": "b", "question": "誰？", "answers": [], "is_impossible": True,
            "plausible_answers": [{"text": "台北", "answer_start": 0}]}]
    data = [{"paragraphs": [{"context": "台北", "qas": qas}]}]
    path = write_json(tmp_path / "v2.json", {"version": "v2.0", "data": data})
    with pytest.raises(DataFormatError, match=r"id='b'.*unanswerable.*data.unanswerable=drop"):
        read_examples(path)
    kept = read_examples(path, unanswerable="drop")
    assert [e.id for e in kept] == ["a"] and kept.repairs[RepairKind.UNANSWERABLE] == 1
    only = write_json(tmp_path / "only.json", {"data": [{"paragraphs": [{"context": "台北", "qas": qas[1:]}]}]})
    with pytest.raises(DataFormatError, match=r"holds no questions \(1 unanswerable ones were dropped\)"):
        read_examples(only, unanswerable="drop")
