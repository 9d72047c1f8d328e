import pytest

from extractive_qa.core.metrics import (
    aggregate,
    char_f1,
    cmrc_em,
    cmrc_f1,
    cmrc_segments,
    exact_match,
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


def test_cmrc_segmentation_and_scores():
    assert cmrc_segments("光荣和ω-force") == ["光", "荣", "和", "ωforce"]
    assert cmrc_segments("《战国无双3》") == ["战", "国", "无", "双", "3"]
    assert cmrc_segments("Hello World 2019年") == ["hello", "world", "2019", "年"]
    assert cmrc_em("《战国无双3》", ["战国无双3"]) == 1.0
    assert cmrc_em("Tokyo Tower", ["tokyotower"]) == 1.0
    # LCS of [北,京,大,学] and [京,大,学,院] = 3 -> P = 3/4, R = 3/4
    assert cmrc_f1("京大学院", ["北京大学"]) == pytest.approx(0.75)
    assert cmrc_f1("", ["北京"]) == 0.0


def test_score_and_aggregate():
    s = score_prediction("台北", ["台北市"])
    assert s["em"] == 0.0 and s["f1"] == pytest.approx(0.8)
    assert score_prediction("x", []) == {"em": 0.0, "f1": 0.0, "em_cmrc": 0.0, "f1_cmrc": 0.0}
    agg = aggregate([score_prediction("台北", ["台北"]), score_prediction("東京", ["大阪"])])
    assert agg["em"] == 0.5 and agg["f1"] == 0.5
