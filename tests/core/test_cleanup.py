"""Opt-in answer clean-up: each rule on a context where it applies, and where it must not."""

import pytest

from extractive_qa.core.cleanup import clean_span


@pytest.mark.parametrize(("context", "span", "expected", "why"), [
    ("書名是《哈利波特》。", (3, 8), "《哈利波特》", "an opened 《 takes its 》 that follows right after"),
    ("書名是《哈利波特》。", (4, 9), "《哈利波特》", "a lone 》 takes its 《 right before"),
    ("他說「好」了", (2, 4), "「好」", "「 balanced by the 」 next to the span"),
    ("住在台北，很好", (2, 5), "台北", "a trailing comma no reference ends with is trimmed"),
    ("台北「市", (0, 3), "台北", "a dangling 「 with no partner next to it is dropped"),
    ("說完了。", (0, 4), "說完了。", "。 ends 828 references: it stays"),
    ("（註）", (0, 3), "（註）", "a balanced pair is left alone"),
])
def test_answer_cleanup_rules(context, span, expected, why):
    start, end = clean_span(context, *span)
    assert context[start:end] == expected, why
