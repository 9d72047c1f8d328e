"""Cutting tokenized (question, context) pairs into model-sized windows.

Every window is laid out as ``[CLS] question [SEP] context[s : s + n] [SEP]``: questions and contexts
are tokenized separately (``add_special_tokens=False``) with the fast tokenizer's offset mapping, so
windows are plain slices of the context's tokens. That is what lets the ``seed_notebook`` preset
reproduce the seed notebook's windows exactly and lets any tokenizer map predicted tokens back to
characters of the original context.

Window size and spacing (see :class:`WindowConfig`):

* ``max_paragraph_len`` context tokens per window, or -- when ``max_seq_len`` is set -- as many as
  fit: ``max_seq_len - 3 - question tokens`` (HuggingFace's convention).
* ``doc_stride`` is the **step** between the starts of consecutive windows (seed notebook and Google
  BERT). ``doc_overlap`` is the **overlap** between consecutive windows (what HuggingFace's tokenizer
  calls ``stride``). Set exactly one; ``step = paragraph_len - overlap``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .data import Example

log = logging.getLogger(__name__)

TRAIN_STRATEGIES = ("random_offset", "all_windows")


@dataclass(frozen=True)
class WindowConfig:
    max_question_len: int = 64
    max_seq_len: int | None = 384
    max_paragraph_len: int | None = None
    doc_stride: int | None = None
    doc_overlap: int | None = 128
    # The seed notebook keeps stepping until the start passes the paragraph's end, so about a third
    # of its windows lie wholly inside the previous one; ``True`` stops once a window reaches the end.
    stop_at_paragraph_end: bool = True
    train_strategy: str = "all_windows"
    # random_offset: the answer's centre is shifted by an offset drawn from [-range, range); ``None``
    # means half the paragraph length (the seed's choice). The window is then moved just enough to
    # hold the whole answer, so no label is ever clamped to [CLS] or padding.
    train_offset_range: int | None = None

    def __post_init__(self) -> None:
        if (self.max_seq_len is None) == (self.max_paragraph_len is None):
            raise ValueError("window: set exactly one of max_seq_len and max_paragraph_len (the other null)")
        if (self.doc_stride is None) == (self.doc_overlap is None):
            raise ValueError("window: set exactly one of doc_stride (step between windows) and doc_overlap")
        if self.max_seq_len is not None and self.max_seq_len - 3 - self.max_question_len < 8:
            raise ValueError(f"window: max_seq_len={self.max_seq_len} leaves under 8 context tokens after a "
                             f"{self.max_question_len}-token question; raise max_seq_len or lower max_question_len")
        if self.train_strategy not in TRAIN_STRATEGIES:
            raise ValueError(f"window.train_strategy must be one of {TRAIN_STRATEGIES}, got {self.train_strategy!r}")

    def paragraph_len(self, question_len: int) -> int:
        """Context tokens per window for a question of ``question_len`` tokens."""
        if self.max_paragraph_len is not None:
            return self.max_paragraph_len
        return self.max_seq_len - 3 - question_len

    def step(self, paragraph_len: int) -> int:
        """Distance in tokens between the starts of consecutive windows."""
        step = self.doc_stride if self.doc_stride is not None else paragraph_len - self.doc_overlap
        if step <= 0:
            raise ValueError(f"window: doc_overlap={self.doc_overlap} must be smaller than the {paragraph_len}"
                             " context tokens per window")
        return step

    def max_total_len(self) -> int:
        return self.max_seq_len or (self.max_question_len + self.max_paragraph_len + 3)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EncodedExamples:
    """Token ids of every question and every distinct context, with character offsets for contexts.

    ``question_ids[i]`` is already cut to ``max_question_len``; ``context_offsets[k]`` is an ``(n, 2)``
    int array of ``[start, end)`` character offsets of each token of context ``k`` in ``context_ids``.
    """

    examples: list[Example]
    question_ids: list[list[int]]
    context_index: list[int]
    context_ids: list[list[int]]
    context_offsets: list[np.ndarray]
    cls_id: int
    sep_id: int
    pad_id: int
    stats: Counter = field(default_factory=Counter)

    def offsets_of(self, example_index: int) -> np.ndarray:
        return self.context_offsets[self.context_index[example_index]]

    def answer_token_span(self, example_index: int) -> tuple[int, int] | None:
        """Inclusive context-token span covering the training label, or ``None`` if there is none.

        Works for any tokenizer: the span is every token overlapping the answer's characters, so an
        answer starting or ending inside a token (a digit of "214") gets that whole token.
        """
        ex = self.examples[example_index]
        if not ex.has_label:
            return None
        return char_span_to_tokens(self.offsets_of(example_index), ex.answer_start, ex.answer_end)


def char_span_to_tokens(offsets: np.ndarray, char_start: int, char_end: int) -> tuple[int, int] | None:
    """Inclusive token span of the tokens overlapping characters ``[char_start, char_end)``."""
    if len(offsets) == 0:
        return None
    first = int(np.searchsorted(offsets[:, 1], char_start, side="right"))
    last = int(np.searchsorted(offsets[:, 0], char_end, side="left")) - 1
    if first >= len(offsets) or last < first:
        return None
    return first, last


def encode_examples(examples: Sequence[Example], tokenizer, window: WindowConfig) -> EncodedExamples:
    """Tokenize questions and (each distinct) context once, keeping character offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("a fast tokenizer is required (offset mapping); load it with AutoTokenizer")
    keys: dict[str, int] = {}
    contexts: list[str] = []
    context_index = []
    for ex in examples:
        if ex.context_key not in keys:
            keys[ex.context_key] = len(contexts)
            contexts.append(ex.context)
        context_index.append(keys[ex.context_key])
    stats: Counter = Counter()
    q_enc = tokenizer([ex.question for ex in examples], add_special_tokens=False, verbose=False)["input_ids"] if examples else []
    question_ids = []
    for ids in q_enc:
        if len(ids) > window.max_question_len:
            stats["questions_truncated"] += 1
        question_ids.append(ids[: window.max_question_len])
    c_enc = tokenizer(contexts, add_special_tokens=False, return_offsets_mapping=True, verbose=False) if contexts else {
        "input_ids": [], "offset_mapping": []}
    context_offsets = [np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in c_enc["offset_mapping"]]
    return EncodedExamples(
        examples=list(examples),
        question_ids=question_ids,
        context_index=context_index,
        context_ids=list(c_enc["input_ids"]),
        context_offsets=context_offsets,
        cls_id=tokenizer.cls_token_id,
        sep_id=tokenizer.sep_token_id,
        pad_id=tokenizer.pad_token_id or 0,
        stats=stats,
    )


@dataclass
class Windows:
    """Windows as parallel arrays (cheap to cache and to index).

    Window ``w`` holds context tokens ``[context_start[w], context_start[w] + context_len[w])`` of
    example ``example_index[w]``; its labels are sequence positions (``0`` = [CLS] = no answer here).
    """

    example_index: np.ndarray
    context_start: np.ndarray
    context_len: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray

    def __len__(self) -> int:
        return len(self.example_index)

    @classmethod
    def from_rows(cls, rows: list[tuple[int, int, int, int, int]]) -> Windows:
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
        return cls(*(arr[:, i].copy() for i in range(5)))


def window_starts(n_tokens: int, paragraph_len: int, step: int, stop_at_end: bool) -> list[int]:
    """Start token of every window over a context of ``n_tokens`` tokens (always at least one)."""
    if not stop_at_end:
        return list(range(0, n_tokens, step)) or [0]
    starts = [0]
    while starts[-1] + paragraph_len < n_tokens:
        starts.append(starts[-1] + step)
    return starts


def build_input_ids(enc: EncodedExamples, example_index: int, context_start: int, context_len: int) -> list[int]:
    """``[CLS] question [SEP] context slice [SEP]`` for one window."""
    ctx = enc.context_ids[enc.context_index[example_index]]
    return [enc.cls_id, *enc.question_ids[example_index], enc.sep_id,
            *ctx[context_start : context_start + context_len], enc.sep_id]


def context_offset_in_sequence(enc: EncodedExamples, example_index: int) -> int:
    """Sequence position of the first context token: after [CLS], the question and [SEP]."""
    return len(enc.question_ids[example_index]) + 2


def _label(enc: EncodedExamples, i: int, span: tuple[int, int] | None, start: int, length: int) -> tuple[int, int]:
    """Sequence positions of the answer if the window holds all of it, else ``(0, 0)`` ([CLS])."""
    if span is None or span[0] < start or span[1] >= start + length:
        return 0, 0
    offset = context_offset_in_sequence(enc, i) - start
    return span[0] + offset, span[1] + offset


def eval_windows(enc: EncodedExamples, window: WindowConfig) -> Windows:
    """Every window of every example, labelled where the window holds the whole answer."""
    rows = []
    for i in range(len(enc.examples)):
        n = len(enc.context_ids[enc.context_index[i]])
        plen = window.paragraph_len(len(enc.question_ids[i]))
        span = enc.answer_token_span(i)
        for s in window_starts(n, plen, window.step(plen), window.stop_at_paragraph_end):
            length = min(plen, n - s) if n else 0
            rows.append((i, s, length, *_label(enc, i, span, s, length)))
    return Windows.from_rows(rows)


def random_offset_start(span: tuple[int, int], n_tokens: int, paragraph_len: int, offset: int) -> int:
    """Start of the training window for an answer ``span`` and a drawn ``offset``.

    First the seed notebook's placement -- centre the window on the answer's middle shifted by
    ``offset`` and keep it inside the paragraph -- then the smallest move that makes the window hold
    the whole answer (the seed lets the answer fall outside, which mislabels about 1 window in 3 when
    the offset range is as large as the window).
    """
    mid = (span[0] + span[1]) // 2
    start = max(0, min(mid + offset - paragraph_len // 2, n_tokens - paragraph_len))
    lowest = max(0, span[1] - paragraph_len + 1)
    return min(max(start, lowest), span[0])


def train_windows(enc: EncodedExamples, window: WindowConfig, rng: np.random.Generator | None = None) -> Windows:
    """Training windows: ``all_windows`` (every window, labelled or [CLS]) or ``random_offset``.

    ``random_offset`` draws one window per labelled question from ``rng``; call it again with a new
    generator each epoch for fresh offsets. Questions without a located label are left out of
    training (they stay in dev scoring); questions whose answer is longer than a window too.
    """
    rows = []
    skipped: Counter = Counter()
    rng = rng if rng is not None else np.random.default_rng(0)
    for i in range(len(enc.examples)):
        span = enc.answer_token_span(i)
        if span is None:
            skipped["no_label" if not enc.examples[i].has_label else "answer_unreachable"] += 1
            continue
        n = len(enc.context_ids[enc.context_index[i]])
        plen = window.paragraph_len(len(enc.question_ids[i]))
        if span[1] - span[0] + 1 > plen:
            skipped["answer_longer_than_window"] += 1
            continue
        if window.train_strategy == "all_windows":
            for s in window_starts(n, plen, window.step(plen), window.stop_at_paragraph_end):
                length = min(plen, n - s)
                rows.append((i, s, length, *_label(enc, i, span, s, length)))
        else:
            r = window.train_offset_range if window.train_offset_range is not None else plen // 2
            offset = int(rng.integers(-r, r)) if r > 0 else 0
            s = random_offset_start(span, n, plen, offset)
            length = min(plen, n - s)
            rows.append((i, s, length, *_label(enc, i, span, s, length)))
    if skipped:
        log.info("training windows: left out %s", dict(skipped))
    for k, v in skipped.items():
        enc.stats[f"train_skipped_{k}"] = v
    return Windows.from_rows(rows)
