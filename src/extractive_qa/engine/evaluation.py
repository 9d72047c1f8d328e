"""Running a model over windows and scoring its answers: shared by training-time evaluation and the predictor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..core.metrics import aggregate, score_prediction
from ..core.postprocess import Prediction, postprocess_predictions
from ..core.windowing import EncodedExamples, Windows
from .batching import PadCollator, WindowDataset, window_lengths

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


@dataclass
class PostprocessSettings:
    max_answer_len: int = 30
    top_k: int = 20
    n_best: int = 20
    span_score: str = "logit_sum"

    @classmethod
    def from_cfg(cls, cfg) -> PostprocessSettings:
        return cls(max_answer_len=int(cfg.max_answer_len), top_k=int(cfg.top_k), n_best=int(cfg.n_best),
                   span_score=str(cfg.span_score))


def window_logits(model, enc: EncodedExamples, windows: Windows, batch_size: int, accelerator=None,
                  desc: str = "eval") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits of every window (each cut to its own length), in window order.

    Windows are sorted by length so each batch pads little; with several processes each rank runs a
    shard and ``gather_for_metrics`` drops the duplicates that an uneven last batch adds.
    """
    lengths = window_lengths(enc, windows)
    order = np.argsort(-lengths, kind="stable")
    dataset = torch.utils.data.Subset(WindowDataset(enc, windows, with_labels=False), order.tolist())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=PadCollator(enc.pad_id))
    main = True
    if accelerator is not None:
        loader = accelerator.prepare(loader)
        main = accelerator.is_local_main_process
    device = next(model.parameters()).device
    starts: list[np.ndarray | None] = [None] * len(windows)
    ends: list[np.ndarray | None] = [None] * len(windows)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, disable=not main, leave=False, mininterval=2):
            inputs = {k: batch[k].to(device) for k in MODEL_INPUTS}
            if accelerator is not None:
                with accelerator.autocast():
                    out = model(**inputs)
            else:
                out = model(**inputs)
            s, e, idx = out.start_logits.float(), out.end_logits.float(), batch["index"].to(device)
            if accelerator is not None and accelerator.num_processes > 1:
                s = accelerator.pad_across_processes(s, dim=1, pad_index=-1e4)
                e = accelerator.pad_across_processes(e, dim=1, pad_index=-1e4)
                idx, s, e = accelerator.gather_for_metrics((idx, s, e))
            s, e, idx = s.cpu().numpy(), e.cpu().numpy(), idx.cpu().numpy()
            for r, w in enumerate(idx):
                starts[w] = s[r, : lengths[w]]
                ends[w] = e[r, : lengths[w]]
    model.train(was_training)
    missing = [w for w, v in enumerate(starts) if v is None]
    if missing:
        raise RuntimeError(f"no logits came back for {len(missing)} windows (first: {missing[:5]})")
    return starts, ends  # type: ignore[return-value]


def predict(model, enc: EncodedExamples, windows: Windows, settings: PostprocessSettings, batch_size: int,
            accelerator=None, desc: str = "eval") -> list[Prediction]:
    starts, ends = window_logits(model, enc, windows, batch_size, accelerator, desc)
    return postprocess_predictions(enc, windows, starts, ends, max_answer_len=settings.max_answer_len,
                                   top_k=settings.top_k, n_best=settings.n_best, span_score=settings.span_score)


def score(predictions: Sequence[Prediction], enc: EncodedExamples) -> tuple[dict[str, float], list[dict]]:
    """Aggregate scores over questions with references, and one row per question."""
    rows, scored = [], []
    for p, ex in zip(predictions, enc.examples, strict=True):
        s = score_prediction(p.text, ex.answers)
        if ex.answers:
            scored.append(s)
        rows.append({"id": ex.id, "question": ex.question, "prediction": p.text, "references": ex.answers,
                     "em": s["em"], "f1": s["f1"], "score": p.score})
    return aggregate(scored), rows
