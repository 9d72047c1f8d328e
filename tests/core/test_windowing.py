import sys

import numpy as np
import pytest

from extractive_qa.core.data import Example, read_examples
from extractive_qa.core.windowing import (
    WindowConfig,
    build_input_ids,
    char_span_to_tokens,
    encode_examples,
    eval_windows,
    random_offset_start,
    train_windows,
    window_starts,
)

from helpers import HW7_DIR, needs_shared

SEED_WINDOW = WindowConfig(max_question_len=60, max_seq_len=None, max_paragraph_len=150, doc_stride=15,
                           doc_overlap=None, stop_at_paragraph_end=False, train_strategy="random_offset")


class SeedQADataset:
    """The seed notebook's QA_Dataset windowing, re-implemented line for line (ids, no padding)."""

    def __init__(self, tokenized_questions, tokenized_paragraphs, questions):
        self.tq, self.tp, self.questions = tokenized_questions, tokenized_paragraphs, questions
        self.max_question_len, self.max_paragraph_len = 60, 150
        self.doc_stride = int(self.max_paragraph_len * 0.1)

    def eval_windows(self, idx):
        q, tp = self.tq[idx], self.tp[self.questions[idx]["paragraph_id"]]
        out = []
        for i in range(0, len(tp), self.doc_stride):
            out.append([101] + q[: self.max_question_len] + [102] + tp[i : i + self.max_paragraph_len] + [102])
        return out

    def train_start(self, idx, char_to_token, random_offset):
        tp = self.tp[self.questions[idx]["paragraph_id"]]
        s = char_to_token(self.questions[idx]["answer_start"])
        e = char_to_token(self.questions[idx]["answer_end"])
        mid = (s + e) // 2
        start = max(0, min(mid + random_offset - self.max_paragraph_len // 2, len(tp) - self.max_paragraph_len))
        return start, s, e


@needs_shared
def test_seed_settings_reproduce_the_seed_windows_exactly(bert_tokenizer):
    import json

    raw = json.loads((HW7_DIR / "hw7_dev.json").read_text(encoding="utf-8"))
    questions, paragraphs = raw["questions"][:300], raw["paragraphs"]
    tq = bert_tokenizer([q["question_text"] for q in questions], add_special_tokens=False)["input_ids"]
    tp_enc = bert_tokenizer(paragraphs, add_special_tokens=False)
    seed = SeedQADataset(tq, tp_enc["input_ids"], questions)

    examples = read_examples(HW7_DIR / "hw7_dev.json").examples[:300]
    enc = encode_examples(examples, bert_tokenizer, SEED_WINDOW)
    windows = eval_windows(enc, SEED_WINDOW)
    ours: dict[int, list[list[int]]] = {}
    for w in range(len(windows)):
        i = int(windows.example_index[w])
        ours.setdefault(i, []).append(build_input_ids(enc, i, int(windows.context_start[w]),
                                                      int(windows.context_len[w])))
    for i in range(len(questions)):
        assert ours[i] == seed.eval_windows(i), f"question {i}"

    # Training windows: the same placement as the seed for the same offset whenever the seed's
    # window holds the whole answer; otherwise ours still holds it.
    rng = np.random.default_rng(0)
    agree = moved = 0
    for i, q in enumerate(questions):
        pid = q["paragraph_id"]
        offset = int(rng.integers(-75, 75))
        seed_start, s, e = seed.train_start(i, lambda c, pid=pid: tp_enc.char_to_token(pid, c), offset)
        span = enc.answer_token_span(i)
        assert span == (s, e)
        start = random_offset_start(span, len(tp_enc["input_ids"][pid]), 150, offset)
        assert start <= s and e < start + 150
        if seed_start <= s and e < seed_start + 150:
            assert start == seed_start
            agree += 1
        else:
            moved += 1
    assert agree > 200 and moved > 0


def _synthetic_examples(n: int = 40, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    chars = list("的是在了和有人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下")
    out = []
    for k in range(n):
        body = "".join(rng.choice(chars, size=int(rng.integers(5, 900))))
        answer = "Hello World 2019"
        pos = int(rng.integers(0, len(body)))
        context = body[:pos] + answer + body[pos:]
        out.append(Example(id=str(k), question="".join(rng.choice(chars, size=int(rng.integers(1, 90)))),
                           context=context, context_key=f"c{k}", answers=[answer], answer_start=pos,
                           answer_text=answer))
    return out


@pytest.mark.parametrize("window", [
    WindowConfig(),
    WindowConfig(max_seq_len=64, doc_overlap=16, max_question_len=20),
    WindowConfig(max_question_len=60, max_seq_len=None, max_paragraph_len=50, doc_stride=15, doc_overlap=None),
    SEED_WINDOW,
])
def test_windowing_invariants(char_tokenizer, window):
    examples = _synthetic_examples()
    enc = encode_examples(examples, char_tokenizer, window)
    windows = eval_windows(enc, window)
    for i in range(len(examples)):
        n = len(enc.context_ids[enc.context_index[i]])
        mine = np.flatnonzero(windows.example_index == i)
        covered = np.zeros(n, bool)
        for w in mine:
            covered[windows.context_start[w] : windows.context_start[w] + windows.context_len[w]] = True
            ids = build_input_ids(enc, i, int(windows.context_start[w]), int(windows.context_len[w]))
            assert len(ids) <= window.max_total_len()
        assert covered.all(), "every paragraph token lies in some window"
        assert any(windows.start_positions[w] > 0 for w in mine), "some window holds the answer"
    for wins in (windows, train_windows(enc, window, np.random.default_rng(1))):
        for w in np.flatnonzero(wins.start_positions > 0):
            i = int(wins.example_index[w])
            ids = build_input_ids(enc, i, int(wins.context_start[w]), int(wins.context_len[w]))
            first = len(enc.question_ids[i]) + 2
            s = wins.start_positions[w] - first + wins.context_start[w]
            e = wins.end_positions[w] - first + wins.context_start[w]
            offsets = enc.offsets_of(i)
            assert examples[i].context[offsets[s, 0] : offsets[e, 1]] == examples[i].answer_text
            assert first <= wins.start_positions[w] <= wins.end_positions[w] < len(ids) - 1


def test_a_split_encoded_for_training_keeps_spans_not_offsets(char_tokenizer):
    """Training's encoding (offsets=False, 2 bytes a context token instead of 6) locates the same answer spans and
    cuts the same windows as the full one; asking it for offsets names the fix. Two questions share a context and one
    has no label, as in a real file."""
    window = WindowConfig(max_question_len=20, max_seq_len=None, max_paragraph_len=40, doc_stride=10, doc_overlap=None,
                          train_strategy="all_windows")
    examples = _synthetic_examples(30, seed=4)
    examples.append(Example(id="shared", question="哪", context=examples[0].context, context_key="c0",
                            answers=["Hello"], answer_start=examples[0].answer_start, answer_text="Hello"))
    examples.append(Example(id="unlabelled", question="的", context=examples[1].context, context_key="c1"))
    full = encode_examples(examples, char_tokenizer, window)
    lean = encode_examples(examples, char_tokenizer, window, offsets=False)
    assert lean.context_offsets is None and full.context_offsets is not None
    for i, ex in enumerate(examples):
        expected = (char_span_to_tokens(full.offsets_of(i), ex.answer_start, ex.answer_end) if ex.has_label
                    else None)
        assert lean.answer_token_span(i) == full.answer_token_span(i) == expected, ex.id
    assert lean.answer_token_span(len(examples) - 1) is None and lean.answer_token_span(len(examples) - 2) is not None
    a, b = train_windows(full, window), train_windows(lean, window)
    for name in ("example_index", "context_start", "context_len", "start_positions", "end_positions"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    with pytest.raises(ValueError, match="offsets=True"):
        lean.offsets_of(0)


def test_encoding_leaves_the_examples_strings_as_they_were(char_tokenizer):
    """Handing a non-ASCII str to the Rust tokenizer makes CPython keep its UTF-8 bytes inside the str (sys.getsizeof
    counts them): 154 MB for as long as the examples live, on a 203 MB training file. The examples' strings must come
    out of encoding the size they went in."""
    examples = _synthetic_examples(10, seed=6)
    before = [(sys.getsizeof(ex.question), sys.getsizeof(ex.context)) for ex in examples]
    encode_examples(examples, char_tokenizer, WindowConfig())
    assert [(sys.getsizeof(ex.question), sys.getsizeof(ex.context)) for ex in examples] == before


def test_random_offset_training_window_always_holds_the_answer(char_tokenizer):
    window = WindowConfig(max_question_len=20, max_seq_len=None, max_paragraph_len=40, doc_stride=10, doc_overlap=None,
                          train_strategy="random_offset", train_offset_range=40)
    examples = _synthetic_examples(60, seed=3)
    enc = encode_examples(examples, char_tokenizer, window)
    for epoch in range(3):
        wins = train_windows(enc, window, np.random.default_rng(epoch))
        assert len(wins) == len(examples)
        assert (wins.start_positions > 0).all()


def test_all_windows_labels_cls_where_the_answer_is_not_whole(char_tokenizer):
    window = WindowConfig(max_question_len=20, max_seq_len=None, max_paragraph_len=30, doc_stride=10, doc_overlap=None)
    examples = _synthetic_examples(10, seed=5)
    enc = encode_examples(examples, char_tokenizer, window)
    wins = train_windows(enc, window)
    for w in range(len(wins)):
        span = enc.answer_token_span(int(wins.example_index[w]))
        holds = wins.context_start[w] <= span[0] and span[1] < wins.context_start[w] + wins.context_len[w]
        assert (wins.start_positions[w] > 0) == holds
        if not holds:
            assert wins.start_positions[w] == wins.end_positions[w] == 0


def test_char_span_inside_a_token():
    offsets = np.array([[0, 1], [1, 4], [5, 6]])  # e.g. "有", "214" (one wordpiece), " ", "人"
    assert char_span_to_tokens(offsets, 2, 3) == (1, 1)  # "1" inside "214" -> the whole token
    assert char_span_to_tokens(offsets, 4, 5) is None  # only the space: no token
    assert char_span_to_tokens(offsets, 0, 6) == (0, 2)


def test_window_starts_step_and_stop():
    assert window_starts(100, 40, 30, stop_at_end=True) == [0, 30, 60]
    assert window_starts(100, 40, 30, stop_at_end=False) == [0, 30, 60, 90]
    assert window_starts(0, 40, 30, stop_at_end=False) == [0]


def test_config_validation():
    with pytest.raises(ValueError, match="exactly one of doc_stride"):
        WindowConfig(doc_stride=10, doc_overlap=10)
    with pytest.raises(ValueError, match="must be smaller"):
        WindowConfig(max_seq_len=64, max_question_len=20, doc_overlap=60).step(41)
    with pytest.raises(ValueError, match="train_strategy"):
        WindowConfig(train_strategy="middle")
