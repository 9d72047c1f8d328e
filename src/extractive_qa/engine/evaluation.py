"""Running a model over windows and scoring its answers: shared by training-time evaluation and the predictor."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..core.metrics import score_answers
from ..core.postprocess import PostprocessSettings, Prediction
from ..core.windowing import EncodedExamples, Windows
from .batching import PadCollator, WindowDataset, token_budget_batches, window_lengths
from .hardware import eval_batch_tokens

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")  # token_type_ids only where the template has them


def model_inputs(batch: dict) -> dict:
    """The model's inputs of a collated batch (no ``token_type_ids`` for models that take none)."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


class EvaluationStopped(Exception):
    """A stop was requested (SIGINT / SIGTERM) between two evaluation batches."""


def window_logits(model, enc: EncodedExamples, windows: Windows, batch_tokens: int | str, accelerator=None,
                  desc: str = "eval", stop=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits of every window (each cut to its own length), in window order.

    Batches hold up to ``batch_tokens`` padded tokens (``"auto"``: the device's default, see
    :func:`~extractive_qa.engine.hardware.eval_batch_tokens`) of windows sorted by length
    (:func:`~extractive_qa.engine.batching.token_budget_batches`). With several processes each rank
    runs every N-th batch and the ranks exchange their logits, so every window is computed once and
    every rank gets them all (no padded duplicates to drop). ``stop`` (a
    :class:`~extractive_qa.engine.checkpointing.StopRequest`) ends a single-process evaluation between
    batches with :class:`EvaluationStopped`; several processes finish it (they must agree on when to stop).
    """
    lengths = window_lengths(enc, windows)
    batches = token_budget_batches(lengths, eval_batch_tokens(batch_tokens))
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    loader = DataLoader(WindowDataset(enc, windows, with_labels=False), batch_sampler=batches[rank::world],
                        collate_fn=PadCollator(enc.pad_id))
    device = next(model.parameters()).device
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    mine: list[tuple[int, np.ndarray, np.ndarray]] = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        show = accelerator is None or accelerator.is_local_main_process
        for batch in tqdm(loader, desc=desc, disable=not show, leave=False, mininterval=2):
            if stop is not None and world == 1 and stop.requested:
                raise EvaluationStopped
            with autocast():
                out = model(**{k: v.to(device) for k, v in model_inputs(batch).items()})
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            mine.extend((int(w), s[r, : lengths[w]], e[r, : lengths[w]]) for r, w in enumerate(batch["index"].tolist()))
    model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        mine = gather_object(mine)
    starts: list[np.ndarray | None] = [None] * len(windows)
    ends: list[np.ndarray | None] = [None] * len(windows)
    for w, s, e in mine:
        starts[w], ends[w] = s, e
    missing = [w for w, v in enumerate(starts) if v is None]
    if missing:
        raise RuntimeError(f"no logits came back for {len(missing)} windows (first: {missing[:5]})")
    return starts, ends  # type: ignore[return-value]


def predict(model, enc: EncodedExamples, windows: Windows, settings: PostprocessSettings, batch_tokens: int | str,
            accelerator=None, desc: str = "eval", stop=None) -> list[Prediction]:
    starts, ends = window_logits(model, enc, windows, batch_tokens, accelerator, desc, stop)
    return settings.apply(enc, windows, starts, ends)


def score(predictions: Sequence[Prediction], enc: EncodedExamples) -> tuple[dict[str, float], list[dict]]:
    """Aggregate scores over questions with references, and one row per question (with the span's score);
    :func:`~extractive_qa.core.metrics.score_answers` does the scoring, for ``evaluate`` too."""
    aggregate, rows = score_answers({p.id: p.text for p in predictions}, enc.examples)
    for row, p in zip(rows, predictions, strict=True):
        row["score"] = p.score
    return aggregate, rows
