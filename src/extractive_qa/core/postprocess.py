"""Turning start/end logits of windows into one answer per question.

This is the one post-processing function used by dev evaluation during training, by the predictor
and by the data report's oracle check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .cleanup import clean_span
from .windowing import EncodedExamples, Windows

SPAN_SCORES = ("logit_sum", "log_softmax")


@dataclass
class Prediction:
    """The answer for one question: text sliced from the context, its character span and score."""

    id: str
    text: str
    score: float
    start: int | None = None
    end: int | None = None
    nbest: list[dict] = field(default_factory=list)


def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    return m + float(np.log(np.sum(np.exp(x - m))))


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values (unordered), without sorting the whole array."""
    if k >= len(values):
        return np.arange(len(values))
    return np.argpartition(values, -k)[-k:]


def postprocess_predictions(
    enc: EncodedExamples,
    windows: Windows,
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    *,
    max_answer_len: int = 30,
    top_k: int = 20,
    n_best: int = 0,
    span_score: str = "logit_sum",
    cleanup: bool = False,
) -> list[Prediction]:
    """Best answer span per question over all of its windows.

    Contract:

    * ``windows`` are the windows of ``enc`` (from :func:`~extractive_qa.core.windowing.eval_windows`);
      ``start_logits[w]`` / ``end_logits[w]`` hold window ``w``'s logits for its sequence positions
      (at least up to its final [SEP]; anything beyond is ignored).
    * Candidates: the ``top_k`` start and ``top_k`` end positions among the window's **context**
      tokens, paired with ``start <= end`` and at most ``max_answer_len`` tokens.
    * Score of a span: ``span_score="logit_sum"`` -- start logit + end logit (HuggingFace, and the
      seed's rule) -- compares raw evidence across windows; ``"log_softmax"`` first normalises each
      window's logits over its whole sequence, so a window whose mass sits on [CLS] (all_windows
      training teaches this for windows without the answer) ranks its spans low. The best-scoring span
      across windows wins.
    * The answer text is ``context[char_start:char_end]`` from the tokenizer's offsets: never decoded
      from ids, so spaces, upper case and ``[UNK]`` characters come back exactly.
    * Every example gets exactly one :class:`Prediction`, in ``enc.examples`` order; an example with
      no candidate (empty context) gets ``text=""`` and ``score=-inf``.
    * ``n_best > 0`` also fills ``Prediction.nbest`` with up to ``n_best`` distinct spans, each with
      its softmax probability over that list.
    * ``cleanup=True`` mends each candidate span with :func:`~extractive_qa.core.cleanup.clean_span`
      (balanced quotes/brackets, no trailing comma) before spans are compared.
    """
    if span_score not in SPAN_SCORES:
        raise ValueError(f"span_score must be one of {SPAN_SCORES}, got {span_score!r}")
    if len(start_logits) != len(windows) or len(end_logits) != len(windows):
        raise ValueError(f"got logits for {len(start_logits)} windows, expected {len(windows)}")
    keep = max(n_best, 1)
    candidates: list[dict[tuple[int, int], float]] = [{} for _ in enc.examples]
    for w in range(len(windows)):
        i, c_start, c_len = int(windows.example_index[w]), int(windows.context_start[w]), int(windows.context_len[w])
        if c_len == 0:
            continue
        first = enc.context_offset(i)
        seq_len = enc.sequence_length(i, c_len)
        sl = np.asarray(start_logits[w][:seq_len], dtype=np.float64)
        el = np.asarray(end_logits[w][:seq_len], dtype=np.float64)
        if span_score == "log_softmax":
            sl, el = sl - _logsumexp(sl), el - _logsumexp(el)
        ctx_s, ctx_e = sl[first : first + c_len], el[first : first + c_len]
        starts, ends = _top(ctx_s, top_k), _top(ctx_e, top_k)
        scores = ctx_s[starts][:, None] + ctx_e[ends][None, :]
        length = ends[None, :] - starts[:, None]
        scores = np.where((length >= 0) & (length < max_answer_len), scores, -np.inf)
        flat = np.argsort(scores, axis=None)[::-1][:keep]
        offsets = enc.offsets_of(i)
        best = candidates[i]
        for f in flat:
            score = float(scores.flat[f])
            if score == -np.inf:
                break
            s_tok = c_start + int(starts[f // len(ends)])
            e_tok = c_start + int(ends[f % len(ends)])
            span = (int(offsets[s_tok, 0]), int(offsets[e_tok, 1]))
            if cleanup:
                span = clean_span(enc.examples[i].context, *span)
            if score > best.get(span, -np.inf):
                best[span] = score
    predictions = []
    for ex, found in zip(enc.examples, candidates, strict=True):
        if not found:
            predictions.append(Prediction(id=ex.id, text="", score=float("-inf")))
            continue
        ranked = sorted(found.items(), key=lambda kv: -kv[1])[:keep]
        (start, end), score = ranked[0]
        pred = Prediction(id=ex.id, text=ex.context[start:end], score=score, start=start, end=end)
        if n_best > 0:
            s = np.array([sc for _, sc in ranked])
            probs = np.exp(s - s.max())
            probs /= probs.sum()
            pred.nbest = [
                {"text": ex.context[a:b], "start": a, "end": b, "score": sc, "probability": float(p)}
                for ((a, b), sc), p in zip(ranked, probs, strict=True)
            ]
        predictions.append(pred)
    return predictions


@dataclass
class PostprocessSettings:
    """The post-processing a run uses (its config's ``max_answer_len``, ``top_k``, ``n_best``,
    ``span_score``, ``answer_cleanup``): training-time evaluation, the predictor, ensembles and the data
    report all apply it through :meth:`apply`."""

    max_answer_len: int = 30
    top_k: int = 20
    n_best: int = 20
    span_score: str = "logit_sum"
    answer_cleanup: bool = False

    @classmethod
    def from_cfg(cls, cfg) -> PostprocessSettings:
        return cls(max_answer_len=int(cfg.max_answer_len), top_k=int(cfg.top_k), n_best=int(cfg.n_best),
                   span_score=str(cfg.span_score), answer_cleanup=bool(cfg.get("answer_cleanup", False)))

    def apply(self, enc: EncodedExamples, windows: Windows, starts, ends) -> list[Prediction]:
        """:func:`postprocess_predictions` with these settings."""
        return postprocess_predictions(enc, windows, starts, ends, max_answer_len=self.max_answer_len, top_k=self.top_k,
                                       n_best=self.n_best, span_score=self.span_score, cleanup=self.answer_cleanup)


def oracle_logits(enc: EncodedExamples, windows: Windows, high: float = 10.0) -> tuple[list[np.ndarray],
                                                                                       list[np.ndarray]]:
    """Perfect logits: ``high`` at each window's gold start/end, 0 elsewhere (and at [CLS]-labelled windows).

    Pushed through :func:`postprocess_predictions`, they measure what the windowing, post-processing
    and text extraction lose before any model error (the data report's ``oracle_em``).
    """
    starts, ends = [], []
    for w in range(len(windows)):
        n = enc.sequence_length(int(windows.example_index[w]), int(windows.context_len[w]))
        s, e = np.zeros(n), np.zeros(n)
        if windows.start_positions[w] > 0:
            s[windows.start_positions[w]] = high
            e[windows.end_positions[w]] = high
        starts.append(s)
        ends.append(e)
    return starts, ends
