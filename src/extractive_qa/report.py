"""The data report: what the windowing does to a data split, and what the pipeline loses.

``python -m extractive_qa.report [overrides]`` prints one JSON object for ``split`` (default dev):
sizes, windows and tokens per question, how many answers some window holds whole, the repairs made
while reading, ``[UNK]`` rates, and ``oracle_em`` / ``oracle_f1`` -- gold spans pushed through the real
windowing, post-processing and text extraction, i.e. the ceiling of any model under these settings.
"""

from __future__ import annotations

import json
import logging
import sys

import hydra
import numpy as np
from omegaconf import DictConfig

from .config import CONF_DIR
from .data import ExampleSet
from .metrics import aggregate, score_prediction
from .postprocess import oracle_logits, postprocess_predictions
from .windowing import EncodedExamples, WindowConfig, Windows, context_offset_in_sequence

log = logging.getLogger(__name__)


def data_report(
    examples: ExampleSet,
    enc: EncodedExamples,
    windows: Windows,
    window: WindowConfig,
    unk_id: int | None,
    max_answer_len: int = 30,
    span_score: str = "logit_sum",
) -> dict:
    """Statistics of one split under one window setting (see the module docstring)."""
    n = len(enc.examples)
    per_q_windows = np.bincount(windows.example_index, minlength=n) if n else np.zeros(0)
    seq_tokens = np.array([context_offset_in_sequence(enc, int(i)) + int(c) + 1
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
        unks = sum(t == unk_id for t in ids)
        answer_tokens += len(ids)
        answer_unks += unks
        answers_with_unk += unks > 0
    ctx_tokens = sum(len(c) for c in enc.context_ids)
    ctx_unks = sum(sum(t == unk_id for t in c) for c in enc.context_ids)
    starts, ends = oracle_logits(enc, windows)
    preds = postprocess_predictions(enc, windows, starts, ends, max_answer_len=max_answer_len, span_score=span_score)
    scored = [score_prediction(p.text, ex.answers) for p, ex in zip(preds, enc.examples, strict=True) if ex.answers]
    oracle = aggregate(scored)
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
        "paragraphs_with_unk": sum(any(t == unk_id for t in c) for c in enc.context_ids) / max(len(enc.context_ids), 1),
        "unk_rate_answer_tokens": answer_unks / answer_tokens if answer_tokens else 0.0,
        "answers_with_unk": answers_with_unk / len(labelled) if labelled else 0.0,
        "oracle_em": oracle["em"],
        "oracle_f1": oracle["f1"],
        "oracle_em_cmrc": oracle["em_cmrc"],
        "window": window.to_dict(),
        "max_answer_len": max_answer_len,
    }


@hydra.main(config_path=CONF_DIR, config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from .features import window_config
    from .modeling import SetupError
    from .train import load_data_and_tokenizer
    from .windowing import encode_examples, eval_windows

    try:
        splits, tokenizer = load_data_and_tokenizer(cfg, (cfg.split,))
    except SetupError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    examples = splits[cfg.split]
    window = window_config(cfg.window)
    enc = encode_examples(examples.examples, tokenizer, window)
    windows = eval_windows(enc, window)
    report = data_report(examples, enc, windows, window, tokenizer.unk_token_id, cfg.max_answer_len, cfg.span_score)
    print(json.dumps(report, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
