"""Combining members, in-process: when logits may be averaged, and the n-best vote."""

import pytest

from extractive_qa.core.data import Example
from extractive_qa.core.postprocess import Prediction
from extractive_qa.engine.ensemble import combination, vote


class Lineup:
    def __init__(self, lineup: str):
        self.lineup = lineup


def test_logits_are_averaged_only_where_windows_line_up():
    same, other = [Lineup("a"), Lineup("a")], [Lineup("a"), Lineup("b")]
    assert combination(same, "auto") == "logits" and combination(same, "nbest") == "nbest"
    assert combination(other, "auto") == "nbest"
    with pytest.raises(ValueError, match="combine=logits needs members with the same tokenizer"):
        combination(other, "logits")
    with pytest.raises(ValueError, match="combine must be one of"):
        combination(same, "median")


def test_the_vote_takes_the_span_with_the_highest_mean_probability():
    ex = Example(id="q", question="?", context="台北和上海", context_key="c")

    def pred(*spans):
        return [Prediction(id="q", text="", score=0.0, start=spans[0][0], end=spans[0][1],
                           nbest=[{"start": a, "end": b, "probability": p} for a, b, p in spans])]

    # member 1 prefers 台北 (0.6), member 2 prefers 上海 (0.5) but still gives 台北 0.45: mean 0.525 vs 0.35
    (won,) = vote([pred((0, 2, 0.6), (3, 5, 0.2)), pred((3, 5, 0.5), (0, 2, 0.45))], [ex])
    assert won.text == "台北" and won.nbest[0]["probability"] == pytest.approx(0.525)
    (empty,) = vote([[Prediction(id="q", text="", score=float("-inf"))]], [ex])
    assert empty.text == "" and empty.score == float("-inf")
