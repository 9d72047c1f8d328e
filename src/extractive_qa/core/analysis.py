"""What the windowing does to a data split, and what the pipeline loses before any model error.

:func:`data_report` gives sizes, windows and tokens per question, how many answers some window holds
whole, the repairs made while reading, ``[UNK]`` rates, and ``oracle_em`` / ``oracle_f1`` -- gold spans
pushed through the real windowing, post-processing and text extraction, i.e. the ceiling of any model
under these settings. Training logs it with every run; ``python -m extractive_qa.report`` prints it.
"""

from __future__ import annotations

import numpy as np

from .data import ExampleSet
from .metrics import METRICS, score_answers
from .postprocess import PostprocessSettings, oracle_logits
from .windowing import EncodedExamples, WindowConfig, Windows


def data_report(
    examples: ExampleSet,
    enc: EncodedExamples,
    windows: Windows,
    window: WindowConfig,
    unk_id: int | None,
    post: PostprocessSettings | None = None,
) -> dict:
    """Statistics of one split under one window setting and post-processing (see the module docstring)."""
    post = post or PostprocessSettings()
    n = len(enc.examples)
    per_q_windows = np.bincount(windows.example_index, minlength=n) if n else np.zeros(0)
    seq_tokens = np.array([enc.sequence_length(int(i), int(c))
                           for i, c in zip(windows.example_index, windows.context_len, strict=True)])
    per_q_tokens = np.bincount(windows.example_index, weights=seq_tokens, minlength=n) if n else np.zeros(0)
    labelled = [i for i, ex in enumerate(enc.examples) if ex.has_label]
    held = set(windows.example_index[windows.start_positions > 0].tolist())
    inside_token = 0
    answer_tokens = answer_unks = answers_with_unk = 0
    for i in labelled:
        span = enc.answer_token_span(i)
        if span is None:
            continue
        ex, offsets = enc.examples[i], enc.offsets_of(i)
        if ex.context[offsets[span[0], 0] : offsets[span[1], 1]] != ex.answer_text:
            inside_token += 1  # the answer starts or ends inside a token: no span can reproduce it
        ids = enc.context_ids[enc.context_index[i]][span[0] : span[1] + 1]
        unks = int(np.count_nonzero(ids == unk_id))
        answer_tokens += len(ids)
        answer_unks += unks
        answers_with_unk += unks > 0
    ctx_tokens = len(enc.context_ids.values)
    ctx_unks = int(np.count_nonzero(enc.context_ids.values == unk_id))
    starts, ends = oracle_logits(enc, windows)
    preds = PostprocessSettings(max_answer_len=post.max_answer_len, span_score=post.span_score, n_best=0,
                                answer_cleanup=post.answer_cleanup).apply(enc, windows, starts, ends)
    oracle, _ = score_answers({p.id: p.text for p in preds}, enc.examples)
    return {
        "file": examples.path,
        "format": examples.format,
        "digest": examples.digest,
        "questions": n,
        "paragraphs": len(enc.context_ids),
        "questions_with_references": sum(bool(ex.answers) for ex in enc.examples),
        "questions_with_training_label": len(labelled),
        "windows": len(windows),
        "windows_per_question": {"mean": float(per_q_windows.mean()) if n else 0.0,
                                 "max": int(per_q_windows.max()) if n else 0},
        "tokens_per_question": {"mean": float(per_q_tokens.mean()) if n else 0.0,
                                "max": int(per_q_tokens.max()) if n else 0},
        "questions_truncated": int(enc.stats.get("questions_truncated", 0)),
        "answers_reachable": len(held) / len(labelled) if labelled else None,
        "answers_inside_a_token": inside_token,
        "repairs": dict(examples.repairs),
        "unk_rate_context_tokens": ctx_unks / ctx_tokens if ctx_tokens else 0.0,
        "paragraphs_with_unk": _rows_holding(enc.context_ids, unk_id) / max(len(enc.context_ids), 1),
        "unk_rate_answer_tokens": answer_unks / answer_tokens if answer_tokens else 0.0,
        "answers_with_unk": answers_with_unk / len(labelled) if labelled else 0.0,
        **{f"oracle_{m}": oracle[m] for m in METRICS},
        "window": window.to_dict(),
        "max_answer_len": post.max_answer_len,
        "answer_cleanup": post.answer_cleanup,
    }


def _rows_holding(rows, token: int) -> int:
    """How many rows of a ragged array hold ``token`` at least once (counted on the flat array)."""
    hits = np.flatnonzero(rows.values == token)
    return len(np.unique(np.searchsorted(rows.starts, hits, side="right"))) if len(hits) else 0
