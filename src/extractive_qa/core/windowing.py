"""Cutting tokenized (question, context) pairs into model-sized windows.

Every window is the tokenizer's own pair template around a question and a slice of its context:
``[CLS] question [SEP] context[s : s + n] [SEP]`` with token types 0/1 for BERT and ELECTRA,
``<s> question </s></s> context[s : s + n] </s>`` without token types for (XLM-)RoBERTa -- read from
the tokenizer once (:class:`PairTemplate`), so a new model family needs no code. Questions and
contexts are tokenized separately (``add_special_tokens=False``) with the fast tokenizer's offset
mapping, so windows are plain slices of the context's tokens. That is what lets the
``seed_notebook`` preset reproduce the seed notebook's windows exactly and lets any tokenizer map
predicted tokens back to characters of the original context.

Window size and spacing (see :class:`WindowConfig`):

* ``max_paragraph_len`` context tokens per window, or -- when ``max_seq_len`` is set -- as many as
  fit: ``max_seq_len - special tokens - question tokens`` (HuggingFace's convention; BERT's template
  has 3 special tokens, RoBERTa's 4).
* ``doc_stride`` is the **step** between the starts of consecutive windows (seed notebook and Google
  BERT). ``doc_overlap`` is the **overlap** between consecutive windows (what HuggingFace's tokenizer
  calls ``stride``). Set exactly one; ``step = paragraph_len - overlap``.
"""

from __future__ import annotations

import logging
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .data import Example

log = logging.getLogger(__name__)

TRAIN_STRATEGIES = ("random_offset", "all_windows")
BERT_SPECIAL_TOKENS = 3  # [CLS] q [SEP] c [SEP]: what max_seq_len is checked against before a tokenizer is known


def _ints(ids: Sequence[int]) -> list[int]:
    """Token ids as Python ints (the encoded ids are int32 arrays)."""
    return ids.tolist() if isinstance(ids, np.ndarray) else list(ids)


@dataclass(frozen=True)
class PairTemplate:
    """How a tokenizer lays out a (question, context) pair: the special tokens before the question
    (``prefix``), between the two (``middle``) and after the context (``suffix``), and the token type
    of each of the five parts -- ``None`` when the model takes no token types (RoBERTa, XLM-R)."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    pad_id: int
    # token type of (prefix, question, middle, context, suffix); None: no token_type_ids input
    type_ids: tuple[int, int, int, int, int] | None = None

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def context_offset(self, question_len: int) -> int:
        """Sequence position of the first context token."""
        return len(self.prefix) + question_len + len(self.middle)

    def sequence_length(self, question_len: int, context_len: int) -> int:
        return self.context_offset(question_len) + context_len + len(self.suffix)

    def build(self, question: Sequence[int], context: Sequence[int]) -> list[int]:
        return [*self.prefix, *_ints(question), *self.middle, *_ints(context), *self.suffix]

    def token_types(self, question_len: int, context_len: int) -> list[int] | None:
        if self.type_ids is None:
            return None
        parts = (len(self.prefix), question_len, len(self.middle), context_len, len(self.suffix))
        return [t for t, n in zip(self.type_ids, parts, strict=True) for _ in range(n)]

    @classmethod
    def bert(cls, cls_id: int = 101, sep_id: int = 102, pad_id: int = 0) -> PairTemplate:
        """``[CLS] q [SEP] c [SEP]`` with token types 0/1 (BERT, ELECTRA)."""
        return cls((cls_id,), (sep_id,), (sep_id,), pad_id, (0, 0, 0, 1, 1))

    @classmethod
    def of(cls, tokenizer) -> PairTemplate:
        """The pair template of ``tokenizer``, read from what it does to a two-token pair (its
        ``sequence_ids`` tell the question's and the context's tokens from the special ones), and
        whether the model takes token types (the tokenizer's ``model_input_names``)."""
        enc = tokenizer("a", "b")
        ids, seq = list(enc["input_ids"]), enc.sequence_ids()
        q = [k for k, s in enumerate(seq) if s == 0]
        c = [k for k, s in enumerate(seq) if s == 1]
        if not q or not c or q[-1] >= c[0]:
            raise ValueError(f"cannot read a question/context pair template from {type(tokenizer).__name__}")
        types = None
        if "token_type_ids" in getattr(tokenizer, "model_input_names", ()) and "token_type_ids" in enc:
            t = list(enc["token_type_ids"])

            def first(positions: range, default: int) -> int:  # an empty part takes its neighbour's type
                return t[positions[0]] if len(positions) else default

            types = (first(range(q[0]), t[q[0]]), t[q[0]], first(range(q[-1] + 1, c[0]), t[c[0]]), t[c[0]],
                     first(range(c[-1] + 1, len(ids)), t[c[-1]]))
        return cls(prefix=tuple(ids[: q[0]]), middle=tuple(ids[q[-1] + 1 : c[0]]), suffix=tuple(ids[c[-1] + 1 :]),
                   pad_id=tokenizer.pad_token_id or 0, type_ids=types)


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
        if self.max_seq_len is not None and self.max_seq_len - BERT_SPECIAL_TOKENS - self.max_question_len < 8:
            raise ValueError(f"window: max_seq_len={self.max_seq_len} leaves under 8 context tokens after a "
                             f"{self.max_question_len}-token question; raise max_seq_len or lower max_question_len")
        if self.train_strategy not in TRAIN_STRATEGIES:
            raise ValueError(f"window.train_strategy must be one of {TRAIN_STRATEGIES}, got {self.train_strategy!r}")
        # Checked here, for the longest question (the fewest context tokens), not first when a question meets it.
        shortest = self.paragraph_len(self.max_question_len)
        self.step(shortest)
        if self.doc_stride is not None and self.doc_stride > shortest:
            raise ValueError(f"window: doc_stride={self.doc_stride} is longer than the {shortest} context tokens of a "
                             f"window after a {self.max_question_len}-token question: the tokens between two windows "
                             "would be in none; lower window.doc_stride")

    def paragraph_len(self, question_len: int, num_special: int = BERT_SPECIAL_TOKENS) -> int:
        """Context tokens per window for a question of ``question_len`` tokens (and a template with
        ``num_special`` special tokens)."""
        if self.max_paragraph_len is not None:
            return self.max_paragraph_len
        return self.max_seq_len - num_special - question_len

    def step(self, paragraph_len: int) -> int:
        """Distance in tokens between the starts of consecutive windows."""
        step = self.doc_stride if self.doc_stride is not None else paragraph_len - self.doc_overlap
        if step <= 0:
            raise ValueError(f"window: doc_overlap={self.doc_overlap} must be smaller than the {paragraph_len}"
                             " context tokens per window (after the longest question); lower window.doc_overlap")
        return step

    def max_total_len(self, num_special: int = BERT_SPECIAL_TOKENS) -> int:
        return self.max_seq_len or (self.max_question_len + self.max_paragraph_len + num_special)

    def to_dict(self) -> dict:
        return asdict(self)


class Ragged(Sequence):
    """Rows of one flat array: row ``i`` is ``values[starts[i]:starts[i + 1]]``, a view made when it is asked for --
    no copy and no Python object per row held (a 203 MB training file has ~110,000 paragraphs and ~380,000
    questions). ``values`` may be a memory-mapped array (the feature cache)."""

    __slots__ = ("starts", "values")

    def __init__(self, values: np.ndarray, starts: np.ndarray):
        self.values, self.starts = values, starts

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self.values[self.starts[i] : self.starts[i + 1]]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @classmethod
    def of(cls, rows: Sequence, dtype=np.int32) -> Ragged:
        """Rows given as sequences (tests, small inputs), in one flat array."""
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        shape = (int(starts[-1]), *np.asarray(rows[0]).shape[1:]) if len(rows) else (0,)
        values = np.empty(shape, dtype=dtype)
        for row, (a, b) in zip(rows, zip(starts[:-1], starts[1:], strict=True), strict=True):
            values[a:b] = row
        return cls(values, starts)


@dataclass
class EncodedExamples:
    """Token ids of every question and every distinct context, each question's answer as a token span, and -- where
    answers are read back as text (dev, test) -- the contexts' character offsets.

    ``question_ids[i]`` is already cut to ``max_question_len``; ``answer_spans[i]`` is the inclusive context-token
    span of the training label, ``(-1, -1)`` for none; ``context_offsets[k]`` is an ``(n, 2)`` array of ``[start,
    end)`` character offsets of each token of context ``k`` in ``context_ids``, or ``None`` when the split was
    encoded for training only (its spans are all training needs: 4 bytes a context token less).
    """

    examples: list[Example]
    question_ids: Ragged  # token ids (the smallest unsigned type the vocabulary fits)
    context_index: np.ndarray  # int32: the context of each question
    context_ids: Ragged  # token ids
    answer_spans: np.ndarray  # (n, 2) int32: inclusive context-token span of each training label; -1 for none
    context_offsets: Ragged | None  # (n, 2) [start, end) character offsets (the smallest type the longest context fits)
    template: PairTemplate
    stats: Counter = field(default_factory=Counter)

    @property
    def pad_id(self) -> int:
        return self.template.pad_id

    def context_offset(self, example_index: int) -> int:
        """Sequence position of the first context token of ``example_index``'s windows."""
        return self.template.context_offset(len(self.question_ids[example_index]))

    def sequence_length(self, example_index: int, context_len: int) -> int:
        """Tokens in a window of ``example_index`` that holds ``context_len`` context tokens."""
        return self.template.sequence_length(len(self.question_ids[example_index]), context_len)

    def paragraph_len(self, example_index: int, window: WindowConfig) -> int:
        """Context tokens per window of ``example_index`` under ``window``."""
        return window.paragraph_len(len(self.question_ids[example_index]), self.template.num_special)

    def offsets_of(self, example_index: int) -> np.ndarray:
        if self.context_offsets is None:
            raise ValueError("these examples were encoded without character offsets (offsets=False: training "
                             "only); encode them with offsets=True to read answers back as text")
        return self.context_offsets[self.context_index[example_index]]

    def answer_token_span(self, example_index: int) -> tuple[int, int] | None:
        """Inclusive context-token span covering the training label, or ``None`` if there is none.

        Works for any tokenizer: the span is every token overlapping the answer's characters, so an
        answer starting or ending inside a token (a digit of "214") gets that whole token.
        """
        first, last = self.answer_spans[example_index]
        return None if first < 0 else (int(first), int(last))


def char_span_to_tokens(offsets: np.ndarray, char_start: int, char_end: int) -> tuple[int, int] | None:
    """Inclusive token span of the tokens overlapping characters ``[char_start, char_end)``."""
    if len(offsets) == 0:
        return None
    first = int(np.searchsorted(offsets[:, 1], char_start, side="right"))
    last = int(np.searchsorted(offsets[:, 0], char_end, side="left")) - 1
    if first >= len(offsets) or last < first:
        return None
    return first, last


# Texts per tokenizer call. Small on purpose: a call's Python lists of ids and offset tuples (~150 bytes a token)
# are freed after each chunk, but the heap they took stays with the process. Measured on the bench's 200 MB
# training file (make bench ARGS="bench.parts=[memory]"): 2,000 texts a call peaked at 1,678 MB, 64 at 1,571 MB
# (on a 50 MB file: +489 MB after encoding against +294 MB), at the same speed on 2 cores.
TOKENIZE_CHUNK = 64


def id_dtype(tokenizer) -> np.dtype:
    """The smallest unsigned integer type every token id of ``tokenizer`` fits (uint16 for BERT's 21,128)."""
    return np.dtype(np.uint16 if len(tokenizer) <= 2**16 else np.uint32)


def _offset_dtype(longest: int) -> np.dtype:
    return np.dtype(np.uint16 if longest < 2**16 else np.uint32)


def _tokenize_into(texts: Sequence[str], tokenizer, ids_dtype, offsets_dtype, capacity: int, cut: int | None = None,
                   with_offsets: bool = True, keep_offsets: bool = True, on_row=None):
    """``texts`` tokenized in chunks straight into flat arrays (no per-row arrays, no final concatenation): the ids,
    their ``(n, 2)`` character offsets (``keep_offsets``), the rows' starts. ``capacity`` bounds the tokens (a token
    covers at least one character): the arrays are made that large, uninitialised -- pages never written are never
    resident -- and the rows' views cover what was written. ``cut``: keep each text's first ``cut`` tokens (and count
    the cut ones). ``on_row(k, offsets)`` sees each row's offsets (a list of pairs) while they are at hand."""
    keep_offsets = with_offsets and keep_offsets
    ids = np.empty(capacity, dtype=ids_dtype)
    offsets = np.empty((capacity, 2), dtype=offsets_dtype) if keep_offsets else None
    starts = np.zeros(len(texts) + 1, dtype=np.int64)
    at, truncated = 0, 0
    for chunk in range(0, len(texts), TOKENIZE_CHUNK):
        # Copies, not the examples' own strings: handing a non-ASCII str to the Rust tokenizer makes CPython cache
        # its UTF-8 bytes inside the str for as long as it lives -- 154 MB kept for a 203 MB training file.
        batch = tokenizer([t.encode().decode() for t in texts[chunk : chunk + TOKENIZE_CHUNK]],
                          add_special_tokens=False, return_offsets_mapping=with_offsets, verbose=False)
        for k, row in enumerate(batch["input_ids"]):
            if cut is not None and len(row) > cut:
                truncated += 1
                row = row[:cut]
            n = len(row)
            if at + n > len(ids):  # a token shorter than a character (never seen): grow once, keep going
                ids = np.resize(ids, max(2 * len(ids), at + n))
                offsets = np.resize(offsets, (len(ids), 2)) if keep_offsets else None
            if n:  # (an empty text has no tokens: nothing to copy, and its offsets list has no columns)
                ids[at : at + n] = row
                if keep_offsets:
                    offsets[at : at + n] = batch["offset_mapping"][k][:n]
            if on_row is not None:
                on_row(chunk + k, batch["offset_mapping"][k][:n])
            at += n
            starts[chunk + k + 1] = at
        del batch
    return ids[:at], (offsets[:at] if keep_offsets else None), starts, truncated


def encode_examples(examples: Sequence[Example], tokenizer, window: WindowConfig,
                    offsets: bool = True) -> EncodedExamples:
    """Tokenize questions and (each distinct) context once -- into flat arrays of the smallest types they fit (BERT's
    ids in 2 bytes) -- and locate each training label as a token span. ``offsets``: keep the contexts' character
    offsets too (2 + 2 bytes a token), which reading answers back as text needs (dev, test); training needs only the
    spans: a 203 MB training file's ~47 million context tokens then take 2 bytes each, not 6. A tokenizer's batch
    output for 100,000 paragraphs at once (Python lists of ints and offset tuples) took 12.7 GB for a 190 MB
    training file."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("a fast tokenizer is required (offset mapping); load it with AutoTokenizer")
    keys: dict[str, int] = {}
    contexts: list[str] = []
    context_index = np.empty(len(examples), dtype=np.int32)
    for i, ex in enumerate(examples):
        if ex.context_key not in keys:
            keys[ex.context_key] = len(contexts)
            contexts.append(ex.context)
        context_index[i] = keys[ex.context_key]
    del keys
    stats: Counter = Counter()
    dtype = id_dtype(tokenizer)
    q_ids, _, q_starts, truncated = _tokenize_into(
        [ex.question for ex in examples], tokenizer, dtype, None,
        min(sum(len(ex.question) for ex in examples), len(examples) * window.max_question_len) + 1,
        cut=window.max_question_len, with_offsets=False)
    if truncated:
        stats["questions_truncated"] += truncated
    # The questions of each context, to locate their labels while the context's offsets are at hand.
    by_context = np.argsort(context_index, kind="stable")
    group = np.searchsorted(context_index[by_context], np.arange(len(contexts) + 1))
    answer_spans = np.full((len(examples), 2), -1, dtype=np.int32)

    def locate(k: int, row_offsets) -> None:
        located = None
        for i in by_context[group[k] : group[k + 1]].tolist():
            ex = examples[i]
            if not ex.has_label:
                continue
            if located is None:
                located = np.asarray(row_offsets, dtype=np.int64).reshape(-1, 2)
            span = char_span_to_tokens(located, ex.answer_start, ex.answer_end)
            if span is not None:
                answer_spans[i] = span

    longest = max((len(c) for c in contexts), default=0)
    c_ids, c_offsets, c_starts, _ = _tokenize_into(contexts, tokenizer, dtype, _offset_dtype(longest),
                                                   sum(len(c) for c in contexts) + 1, keep_offsets=offsets,
                                                   on_row=locate)
    return EncodedExamples(
        examples=list(examples),
        question_ids=Ragged(q_ids, q_starts),
        context_index=context_index,
        context_ids=Ragged(c_ids, c_starts),
        answer_spans=answer_spans,
        context_offsets=Ragged(c_offsets, c_starts) if offsets else None,
        template=PairTemplate.of(tokenizer),
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
    def from_rows(cls, rows: array | list[tuple[int, int, int, int, int]]) -> Windows:
        """Windows from (example, start, length, start label, end label) rows: tuples, or one flat ``array("q")`` --
        40 bytes a window while they are made (a list of tuples took ~150: 100 MB for a 203 MB training file)."""
        arr = (np.frombuffer(rows, dtype=np.int64) if isinstance(rows, array)
               else np.asarray(rows, dtype=np.int64)).reshape(-1, 5)
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
    """The tokenizer's pair template around the question and a context slice (``[CLS] question [SEP]
    context slice [SEP]`` for BERT) for one window."""
    ctx = enc.context_ids[enc.context_index[example_index]]
    return enc.template.build(enc.question_ids[example_index], ctx[context_start : context_start + context_len])


def _label(enc: EncodedExamples, i: int, span: tuple[int, int] | None, start: int, length: int) -> tuple[int, int]:
    """Sequence positions of the answer if the window holds all of it, else ``(0, 0)`` (the first
    token: [CLS] / <s>, where a window without the answer points)."""
    if span is None or span[0] < start or span[1] >= start + length:
        return 0, 0
    offset = enc.context_offset(i) - start
    return span[0] + offset, span[1] + offset


def eval_windows(enc: EncodedExamples, window: WindowConfig) -> Windows:
    """Every window of every example, labelled where the window holds the whole answer."""
    rows = array("q")
    for i in range(len(enc.examples)):
        n = len(enc.context_ids[enc.context_index[i]])
        plen = enc.paragraph_len(i, window)
        span = enc.answer_token_span(i)
        for s in window_starts(n, plen, window.step(plen), window.stop_at_paragraph_end):
            length = min(plen, n - s) if n else 0
            rows.extend((i, s, length, *_label(enc, i, span, s, length)))
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
    rows = array("q")
    skipped: Counter = Counter()
    rng = rng if rng is not None else np.random.default_rng(0)
    for i in range(len(enc.examples)):
        span = enc.answer_token_span(i)
        if span is None:
            skipped["no_label" if not enc.examples[i].has_label else "answer_unreachable"] += 1
            continue
        n = len(enc.context_ids[enc.context_index[i]])
        plen = enc.paragraph_len(i, window)
        if span[1] - span[0] + 1 > plen:
            skipped["answer_longer_than_window"] += 1
            continue
        if window.train_strategy == "all_windows":
            for s in window_starts(n, plen, window.step(plen), window.stop_at_paragraph_end):
                length = min(plen, n - s)
                rows.extend((i, s, length, *_label(enc, i, span, s, length)))
        else:
            r = window.train_offset_range if window.train_offset_range is not None else plen // 2
            offset = int(rng.integers(-r, r)) if r > 0 else 0
            s = random_offset_start(span, n, plen, offset)
            length = min(plen, n - s)
            rows.extend((i, s, length, *_label(enc, i, span, s, length)))
    if skipped:
        log.info("training windows: left out %s", dict(skipped))
    for k, v in skipped.items():
        enc.stats[f"train_skipped_{k}"] = v
    return Windows.from_rows(rows)
