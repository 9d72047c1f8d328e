"""The statistics behind "is the difference real?", on synthetic per-question results with a known truth."""

import numpy as np
import pytest

from extractive_qa.core.significance import (
    answer_length_bucket,
    em_by_bucket,
    flips,
    paired_difference,
    position_bucket,
    question_word,
    seeds_needed,
)


def test_a_planted_ten_point_gap_is_found():
    rng = np.random.default_rng(1)
    b = (rng.random(600) < 0.7).astype(float)  # B answers 70% right
    a = b.copy()
    wrong = np.flatnonzero(b == 0)
    a[rng.choice(wrong, size=60, replace=False)] = 1.0  # A also gets 60 more: +10 points
    diff = paired_difference(a, b)
    assert diff.delta == pytest.approx(0.10) and diff.n == 600
    assert diff.low > 0.05 and diff.high < 0.15 and diff.significant
    assert diff.p_value == pytest.approx(1 / 10_001)  # no sign flip reaches it: the smallest p there is
    reverse = paired_difference(b, a)
    assert reverse.delta == pytest.approx(-0.10) and reverse.high < 0


def test_identical_predictions_differ_by_nothing():
    scores = np.random.default_rng(2).random(600)
    diff = paired_difference(scores, scores)
    assert (diff.delta, diff.low, diff.high, diff.p_value) == (0.0, 0.0, 0.0, 1.0) and not diff.significant


def test_without_a_true_difference_about_five_percent_are_significant():
    """200 comparisons of two configurations that are the same model in disguise: per question, A and B are
    right with the same (question-dependent) probability. At the 0.05 level about 5% must come out
    significant -- neither many more (false discoveries) nor none (a test that can never say yes)."""
    rng = np.random.default_rng(3)
    hits = 0
    for trial in range(200):
        difficulty = rng.beta(2, 1.2, size=600)
        a = (rng.random(600) < difficulty).astype(float)
        b = (rng.random(600) < difficulty).astype(float)
        hits += paired_difference(a, b, n_resamples=999, seed=trial).p_value < 0.05
    assert 0.02 <= hits / 200 <= 0.08, hits


def test_seeds_average_per_question_before_pairing():
    a = np.mean([[1, 1, 0, 0], [1, 0, 0, 1]], axis=0)  # two seeds of A: 0.5 average per question on 3 of 4
    b = np.array([1.0, 0.0, 0.0, 0.0])
    diff = paired_difference(a, b, n_resamples=2000)
    assert diff.delta == pytest.approx(np.mean(a - b)) and diff.n == 4


def test_flips_and_buckets():
    a, b = [1.0, 1.0, 0.0, 0.0, 0.5], [1.0, 0.0, 1.0, 0.0, 0.0]  # the last: right with one of two seeds only
    assert flips(a, b) == ([1], [2])
    questions = ("為什麼天是藍的？", "他是誰？", "哪一年成立？", "有幾個人？", "他叫什麼名字？", "請說明")
    expected = ["為什麼/为什么", "誰/谁", "何時/何时", "幾/几", "什麼/什么", "other"]
    assert [question_word(q) for q in questions] == expected
    assert [answer_length_bucket(r) for r in ("台北", "1 9 4 9", "中華民國政府", "x" * 20)] == \
        ["1-2 chars", "3-4 chars", "5-8 chars", "17+ chars"]
    assert [position_bucket(s, 90) for s in (0, 30, 89, None)] == \
        ["first third", "middle third", "last third", "unknown"]
    rows = em_by_bucket({"question word": ["誰", "哪", "誰"]}, {"A": [1, 0, 0], "B": [1, 1, 1]})
    assert rows == [{"bucketing": "question word", "bucket": "誰", "n": 2, "A": 0.5, "B": 1.0},
                    {"bucketing": "question word", "bucket": "哪", "n": 1, "A": 0.0, "B": 1.0}]


def test_the_verdict_weighs_questions_and_seeds():
    from extractive_qa.core.significance import Difference, verdict

    significant, not_significant = Difference(0.05, 0.02, 0.08, 0.001, 600), Difference(0.01, -0.01, 0.03, 0.3, 600)
    assert verdict(not_significant, 2, 3).startswith("no evidence")
    assert verdict(significant, 2, 3).startswith("real:")
    assert verdict(significant, 36, 2).startswith("not established") and "36 seeds" in verdict(significant, 36, 2)
    assert "unmeasured" in verdict(significant, None, 1)


def test_how_many_seeds_a_difference_needs():
    # seed std 0.01 and a 0.006 difference: 2 * (1.96 + 0.84)^2 * 1e-4 / 3.6e-5 = 43.6 -> 44 seeds
    assert seeds_needed(0.006, 0.01) == 44
    assert seeds_needed(0.05, 0.01) == 2  # well beyond the spread: two are enough
    assert seeds_needed(0.01, float("nan")) is None and seeds_needed(0.0, 0.01) is None
