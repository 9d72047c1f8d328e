import json

import pytest

from extractive_qa.core.data import DataFormatError, RepairKind, locate_answer, read_examples

from helpers import HW7_DIR, SQUAD_DIR, hw7_file, hw7_question, needs_shared, write_json


@needs_shared
def test_real_hw7_files():
    train = read_examples(HW7_DIR / "hw7_train.json")
    dev = read_examples(HW7_DIR / "hw7_dev.json")
    test = read_examples(HW7_DIR / "hw7_test.json")
    assert (len(train), len(dev), len(test)) == (3493, 1893, 1631)
    assert train.format == "hw7" and not train.repairs
    for ex in dev:
        assert ex.has_label and ex.context[ex.answer_start : ex.answer_end] == ex.answer_text
    assert all(not ex.answers and not ex.has_label for ex in test)
    assert len({ex.id for ex in test}) == len(test)


@needs_shared
def test_real_squad_files_keep_every_reference_and_count_repairs():
    drcd = read_examples(SQUAD_DIR / "DRCD_dev.json")
    assert len(drcd) == 3524 and drcd.format == "squad"
    assert all(len(ex.answers) == 2 for ex in drcd)
    cmrc = read_examples(SQUAD_DIR / "cmrc2018_dev.json")
    assert len(cmrc) == 3219
    raw = json.loads((SQUAD_DIR / "cmrc2018_dev.json").read_text(encoding="utf-8"))
    minus_one = sum(a["answer_start"] == -1 for art in raw["data"] for p in art["paragraphs"]
                    for q in p["qas"] for a in q["answers"])
    # Every answer_start of -1 in CMRC2018 dev is a reference absent from its context.
    assert cmrc.repairs[RepairKind.NOT_IN_CONTEXT] == minus_one == 193
    assert cmrc.repairs[RepairKind.UTF16_OFFSET] == 7
    for ex in cmrc:
        assert ex.context[ex.answer_start : ex.answer_end] == ex.answer_text


def test_locate_answer_repairs():
    ctx = "𠮷野家在東京，東京很大"
    # "東京" is at character 4 (UTF-16 offset 5: the first character is outside the BMP).
    assert locate_answer(ctx, "東京", 4) == (4, None)
    assert locate_answer(ctx, "東京", 5) == (4, RepairKind.UTF16_OFFSET)
    assert locate_answer(ctx, "東京", -1) == (4, RepairKind.START_MINUS_ONE)
    assert locate_answer(ctx, "東京", 8) == (7, RepairKind.UTF16_OFFSET)
    assert locate_answer(ctx, "東京", 9) == (7, RepairKind.SHIFTED)
    assert locate_answer(ctx, "大阪", 3) == (None, RepairKind.NOT_IN_CONTEXT)
    assert locate_answer(ctx, "東京", 999) == (7, RepairKind.SHIFTED)


def test_dirty_hw7_file_is_repaired_and_counted(tmp_path):
    paragraphs = ["𠮷野家在東京開店。", "張三住在台北。", "沒有答案的段落。"]
    path = hw7_file(tmp_path / "dirty.json", paragraphs, [
        hw7_question(1, 0, "在哪裡開店？", "東京", 5, 6),      # utf-16 offset
        hw7_question(2, 1, "誰住在台北？", "張三", -1, -1),     # start -1
        hw7_question(3, 2, "答案？", "大阪", 0, 1),             # not in context
        hw7_question(4, 1, "住在哪？", "台北", 4, 9),           # wrong answer_end
        hw7_question(5, 1, "空？", "", 0, 0),                   # empty answer
    ])
    es = read_examples(path)
    assert dict(es.repairs) == {RepairKind.UTF16_OFFSET: 1, RepairKind.START_MINUS_ONE: 1,
                                RepairKind.NOT_IN_CONTEXT: 1, RepairKind.NO_TRAINING_LABEL: 1,
                                RepairKind.END_MISMATCH: 1, RepairKind.EMPTY_ANSWER: 1}
    by_id = {ex.id: ex for ex in es}
    assert by_id["1"].answer_start == 4 and by_id["1"].answer_text == "東京"
    assert by_id["2"].answer_start == 0
    assert not by_id["3"].has_label and by_id["3"].answers == ["大阪"]  # kept for scoring
    assert by_id["4"].context[by_id["4"].answer_start : by_id["4"].answer_end] == "台北"
    assert by_id["5"].answers == [] and not by_id["5"].has_label


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"questions": [', "invalid JSON at line 1"),
        ("[1, 2]", "unknown top-level shape"),
        ('{"questions": [{"id": 7, "paragraph_id": 0}], "paragraphs": ["p"]}',
         "record #0 (id=7): missing key(s) ['question_text']"),
        ('{"questions": [{"id": 7, "paragraph_id": 3, "question_text": "q"}], "paragraphs": ["p"]}', "paragraph_id 3"),
        ('{"questions": [{"id": 1, "paragraph_id": 0, "question_text": "q"}, '
         '{"id": 1, "paragraph_id": 0, "question_text": "r"}], "paragraphs": ["p"]}', "duplicate question id"),
        ('{"questions": [], "paragraphs": []}', "holds no questions"),
        ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q"}]}]}]}', "missing key(s) ['id']"),
    ],
)
def test_malformed_files_name_file_record_and_fix(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        read_examples(path)
    msg = str(err.value)
    assert str(path) in msg and expected in msg and "Fix:" in msg


def test_squad_file_with_several_references(tmp_path):
    path = write_json(tmp_path / "s.json", {"version": "v1", "data": [{"title": "t", "paragraphs": [{
        "context": "BERT 是由 Google 提出的模型。",
        "qas": [{"id": "q1", "question": "誰提出了 BERT？", "answers": [
            {"text": "Google", "answer_start": 8}, {"text": "由 Google", "answer_start": 6},
            {"text": "谷歌", "answer_start": 0}]}]}]}]})
    es = read_examples(path)
    (ex,) = es.examples
    assert ex.answers == ["Google", "由 Google", "谷歌"]
    assert ex.answer_start == 8 and ex.answer_text == "Google"
    assert es.repairs[RepairKind.NOT_IN_CONTEXT] == 1


def test_a_key_twice_in_one_record_is_refused_naming_the_record(tmp_path):
    from extractive_qa.core.data import DataFormatError

    path = tmp_path / "dup.json"
    path.write_text('{"paragraphs": ["台北是城市。"], "questions": [{"id": 7, "paragraph_id": 0, '
                    '"question_text": "哪裡？", "answer_text": "台北", "answer_text": "高雄", "answer_start": 0, '
                    '"answer_end": 1}]}', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"dup.json, record 7: the key 'answer_text' appears twice in one object"):
        read_examples(path)
