"""The course's metrics and the official CMRC2018/DRCD ones. Each official-metric value below is derived
by hand from the official script's rules (lower-case; strip the ENDS; drop its punctuation marks;
CJK characters one by one, other runs through nltk.word_tokenize; F1 from the longest common
contiguous run of tokens); the comment says why."""

import pytest

from extractive_qa.core.metrics import (
    aggregate,
    char_f1,
    cmrc2018_em,
    cmrc2018_f1,
    cmrc2018_segments,
    exact_match,
    score_answers,
    score_prediction,
)


def test_exact_match_is_string_equality_max_over_references():
    assert exact_match("台北", ["台北市", "台北"]) == 1.0
    assert exact_match("台北 ", ["台北"]) == 0.0
    assert exact_match("", ["台北"]) == 0.0


def test_char_f1_hand_computed():
    # pred 台北市 vs ref 台北: overlap 2, P = 2/3, R = 1 -> F1 = 0.8
    assert char_f1("台北市", ["台北"]) == pytest.approx(0.8)
    # whitespace ignored; max over references
    assert char_f1("New York", ["NewYork", "紐約"]) == pytest.approx(1.0)
    assert char_f1("東京", ["大阪"]) == 0.0
    # repeated characters count as a bag: pred 哈哈哈 vs ref 哈: overlap 1, P=1/3, R=1 -> 0.5
    assert char_f1("哈哈哈", ["哈"]) == pytest.approx(0.5)


OFFICIAL = [
    # (prediction, references, EM, F1, why)
    ("歐\u3000洲", ["歐洲"], 0, 1.0, "inner U+3000 survives the end-strip, so EM fails; it is no token, so F1 is 1"),
    (" 歐洲\u3000", ["歐洲"], 1, 1.0, "whitespace at the ends (U+3000 too) is stripped before comparing"),
    ("宽扎 ，", ["宽扎"], 0, 1.0,
     "strip happens before the comma is removed: '宽扎 ' keeps its space; F1 tokens equal"),
    ("《战国无双3》", ["战国无双3"], 1, 1.0, "《 and 》 are the script's marks: removed for EM and F1"),
    ("4.9", ["4"], 0, 0.0, "nltk keeps the decimal 4.9 as one token, which is not 4"),
    ("4.9米", ["4.9"], 0, 2 / 3, "tokens [4.9, 米] vs [4.9]: run 1, P = 1/2, R = 1"),
    ("1,985年", ["1985年"], 0, 0.5, "nltk keeps 1,985 whole (not 1985): only 年 matches, P = R = 1/2"),
    ("A. Smith", ["Smith"], 0, 2 / 3, "the initial A. stays one token: [a., smith] vs [smith], P = 1/2, R = 1"),
    ("J.K.罗琳", ["罗琳"], 0, 2 / 3, "only a run-final period is split: [j.k, ., 罗, 琳] vs [罗, 琳], P = 1/2, R = 1"),
    ("don't哭", ["do哭"], 0, 0.4,
     "nltk splits don't into do + n't: [do, n't, 哭] vs [do, 哭], run 1, P = 1/3, R = 1/2"),
    ("等等……", ["等等"], 0, 0.8, "the mark '……' is two characters and never matches one '…': [等, 等, ……], P = 2/3"),
    ("37℃", ["37"], 0, 0.0, "nltk keeps 37℃ as one token"),
    ("【注】", ["注"], 0, 0.5, "【 and 】 are not the script's marks: [【, 注, 】] vs [注], P = 1/3, R = 1"),
    ("５０年", ["50年"], 0, 0.5, "full-width digits are other characters than ASCII ones: only 年 matches"),
    ("Ｂ型", ["b型"], 0, 0.5, "lower() maps Ｂ to ｂ, not to b: only 型 matches"),
    ("", ["台北"], 0, 0.0, "an empty prediction has no tokens and matches nothing"),
    ("", ["》"], 1, 0.0, "a reference of marks only normalises to '' for EM, but has no tokens for F1"),
    ("台北市", ["北京", "台北"], 0, 0.8, "max over references: [台, 北, 市] vs [台, 北] gives P = 2/3, R = 1"),
    ("Tokyo Tower", ["tokyo tower"], 1, 1.0, "lower-case on both sides; the inner space is kept on both"),
]


@pytest.mark.parametrize(("prediction", "references", "em", "f1", "why"), OFFICIAL, ids=[c[4][:40] for c in OFFICIAL])
def test_official_cmrc2018_rules(prediction, references, em, f1, why):
    assert cmrc2018_em(prediction, references) == em, why
    assert cmrc2018_f1(prediction, references) == pytest.approx(f1, abs=1e-12), why


def test_mixed_segmentation():
    assert cmrc2018_segments("光荣和ω-force") == ["光", "荣", "和", "ωforce"]  # '-' dropped without ending the run
    assert cmrc2018_segments("Hello World 2019年") == ["hello", "world", "2019", "年"]


def test_score_and_aggregate():
    s = score_prediction("台北", ["台北市"])
    assert s["em"] == 0.0 and s["f1"] == pytest.approx(0.8)
    assert score_prediction("x", []) == {"em": 0.0, "f1": 0.0, "em_cmrc2018": 0.0, "f1_cmrc2018": 0.0}
    agg = aggregate([score_prediction("台北", ["台北"]), score_prediction("東京", ["大阪"])])
    assert agg["em"] == 0.5 and agg["f1"] == 0.5


def test_score_answers_scores_missing_answers_as_zero_over_questions_with_references():
    from extractive_qa.core.data import Example

    questions = [Example("1", "q", "台北", "c", ["台北"]), Example("2", "q", "東京", "c", ["東京"]),
                 Example("3", "q", "x", "c", [])]
    scores, rows = score_answers({"1": "台北"}, questions)
    assert scores["em"] == 0.5 and [r["prediction"] for r in rows] == ["台北", "", ""]
