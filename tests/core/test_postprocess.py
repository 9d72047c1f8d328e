import math

import numpy as np
import pytest

from extractive_qa.core.data import Example
from extractive_qa.core.postprocess import oracle_logits, postprocess_predictions
from extractive_qa.core.windowing import WindowConfig, Windows, encode_examples, eval_windows


def _one(context, answer, question="問題"):
    start = context.index(answer) if answer else None
    return Example(id="q", question=question, context=context, context_key="c", answers=[answer] if answer else [],
                   answer_start=start, answer_text=answer)


def _window_logits(windows, enc, fill=0.0):
    out_s, out_e = [], []
    for w in range(len(windows)):
        n = len(enc.question_ids[int(windows.example_index[w])]) + 2 + int(windows.context_len[w]) + 1
        out_s.append(np.full(n, fill))
        out_e.append(np.full(n, fill))
    return out_s, out_e


@pytest.mark.parametrize("answer", ["Hello World 2019", "𠮷野", "ＴＯＫＹＯ 東京", "BERT", "龘"])
def test_oracle_returns_exact_text_with_spaces_unk_and_numbers(char_tokenizer, answer):
    context = f"他說：{answer}，是在台北。"
    ex = _one(context, answer)
    window = WindowConfig(max_seq_len=64, max_question_len=8, doc_overlap=8)
    enc = encode_examples([ex], char_tokenizer, window)
    windows = eval_windows(enc, window)
    s, e = oracle_logits(enc, windows)
    (pred,) = postprocess_predictions(enc, windows, s, e, max_answer_len=30)
    assert pred.text == answer and (pred.start, pred.end) == (ex.answer_start, ex.answer_end)


def test_constraints_question_tokens_order_and_length(char_tokenizer):
    ex = _one("張三住在台北市中心的大樓裡面。", "台北")
    window = WindowConfig(max_seq_len=64, max_question_len=8, doc_overlap=8)
    enc = encode_examples([ex], char_tokenizer, window)
    windows = eval_windows(enc, window)
    s, e = _window_logits(windows, enc, fill=-100.0)
    first = len(enc.question_ids[0]) + 2
    s[0][0] = e[0][0] = 100.0       # [CLS]
    s[0][1] = e[0][1] = 90.0        # a question token
    s[0][-1] = e[0][-1] = 80.0      # the final [SEP]
    s[0][first + 14] = 50.0         # start after the best ends: invalid pairs
    e[0][first + 2] = 50.0
    s[0][first + 4], e[0][first + 5] = 10.0, 10.0  # "台北"
    e[0][first + 13] = 12.0         # valid order but too long for max_answer_len=5 from first+4
    (pred,) = postprocess_predictions(enc, windows, s, e, max_answer_len=5)
    assert pred.text == "台北"
    (longer,) = postprocess_predictions(enc, windows, s, e, max_answer_len=20)
    assert longer.text == ex.context[4:14] and longer.score == pytest.approx(22.0)
    assert pred.score == pytest.approx(20.0)


def test_best_window_wins_and_nbest(char_tokenizer):
    context = "甲" * 30 + "台北" + "乙" * 30 + "上海" + "丙" * 30
    ex = _one(context, "上海")
    window = WindowConfig(max_seq_len=40, max_question_len=4, doc_overlap=10)
    enc = encode_examples([ex], char_tokenizer, window)
    windows = eval_windows(enc, window)
    assert len(windows) > 3
    s, e = _window_logits(windows, enc)
    first = len(enc.question_ids[0]) + 2
    for w in range(len(windows)):
        cs = int(windows.context_start[w])
        for target, score in ((30, 3.0), (62, 4.0)):
            if cs <= target and target + 1 < cs + int(windows.context_len[w]):
                s[w][first + target - cs] = score
                e[w][first + target + 1 - cs] = score
    (pred,) = postprocess_predictions(enc, windows, s, e, n_best=5)
    assert pred.text == "上海" and pred.score == pytest.approx(8.0)
    assert [c["text"] for c in pred.nbest[:2]] == ["上海", "台北"]
    assert math.isclose(sum(c["probability"] for c in pred.nbest), 1.0)
    assert len({(c["start"], c["end"]) for c in pred.nbest}) == len(pred.nbest)
    (norm,) = postprocess_predictions(enc, windows, s, e, span_score="log_softmax")
    assert norm.text == "上海"


def test_every_example_gets_one_prediction_even_with_an_empty_context(char_tokenizer):
    examples = [_one("台北是城市。", "台北"), Example(id="empty", question="問？", context="", context_key="e")]
    window = WindowConfig(max_seq_len=32, max_question_len=4, doc_overlap=4)
    enc = encode_examples(examples, char_tokenizer, window)
    windows = eval_windows(enc, window)
    s, e = oracle_logits(enc, windows)
    preds = postprocess_predictions(enc, windows, s, e)
    assert [p.id for p in preds] == ["q", "empty"]
    assert preds[0].text == "台北" and preds[1].text == "" and preds[1].score == float("-inf")


def test_logit_count_mismatch_is_an_error(char_tokenizer):
    enc = encode_examples([_one("台北", "台北")], char_tokenizer, WindowConfig())
    windows = Windows.from_rows([(0, 0, 2, 0, 0)])
    with pytest.raises(ValueError, match="logits for 0 windows"):
        postprocess_predictions(enc, windows, [], [])
