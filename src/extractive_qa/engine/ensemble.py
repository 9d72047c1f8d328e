"""Trained models as predictors, alone or together: members loaded from run dirs or MLflow model URIs,
and the two ways to combine them.

* **Logit average** -- when every member tokenizes alike and cuts the same windows (the usual case: a
  seed or learning-rate sweep), the members' start and end logits are averaged window by window and
  post-processed once. This is what the course's best public submissions did.
* **N-best vote** -- otherwise (another tokenizer or other windows, so the windows do not line up):
  each member post-processes on its own; every answer span it lists gets its n-best probability, the
  probabilities are averaged over members (a span a member does not list counts 0), and the span
  with the highest mean wins.

Both end in the same post-processing code as training-time evaluation
(:meth:`~extractive_qa.core.postprocess.PostprocessSettings.apply`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..core.data import Example
from ..core.features import window_config
from ..core.postprocess import PostprocessSettings, Prediction
from ..core.windowing import EncodedExamples, WindowConfig, Windows, encode_examples, eval_windows
from .evaluation import window_logits
from .modeling import load_qa_model

log = logging.getLogger(__name__)

COMBINE = ("auto", "logits", "nbest")


@dataclass
class Member:
    """One trained model with everything needed to predict as its run did."""

    name: str
    model: object
    tokenizer: object
    window: WindowConfig
    post: PostprocessSettings
    run_cfg: DictConfig

    @property
    def lineup(self) -> str:
        """Equal for members whose windows line up: same tokenizer, same window settings."""
        tok = hashlib.sha256(self.tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]
        return json.dumps([tok, self.window.to_dict()], sort_keys=True)


def load_member(name: str, model_dir: Path, run_cfg: DictConfig, accelerator, overrides: dict) -> Member:
    """``model_dir``: a run's ``best_model/`` (weights and tokenizer, as ``save_pretrained`` writes them;
    a logged MLflow model carries the same folder)."""
    from transformers import AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} holds no transformers model (no config.json)")
    model = accelerator.prepare(load_qa_model(model_dir).eval())
    post_cfg = OmegaConf.merge(run_cfg, {k: v for k, v in overrides.items() if v is not None})
    return Member(name=name, model=model, tokenizer=AutoTokenizer.from_pretrained(model_dir),
                  window=window_config(run_cfg.window), post=PostprocessSettings.from_cfg(post_cfg), run_cfg=run_cfg)


def combination(members: Sequence[Member], combine: str) -> str:
    """``logits`` where the members' windows line up (and ``combine`` allows), else ``nbest``."""
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    aligned = len({m.lineup for m in members}) == 1
    if combine == "logits" and not aligned:
        raise ValueError("combine=logits needs members with the same tokenizer and window settings; use combine=nbest")
    return "logits" if aligned and combine != "nbest" else "nbest"


def _features(member: Member, examples: list[Example]) -> tuple[EncodedExamples, Windows]:
    enc = encode_examples(examples, member.tokenizer, member.window)
    return enc, eval_windows(enc, member.window)


def predict_members(members: Sequence[Member], examples: list[Example], combine: str, batch_tokens, accelerator,
                    desc: str = "predict",
                    stop=None) -> tuple[list[list[Prediction]], list[Prediction], EncodedExamples]:
    """Every member's predictions and the combined ones (a single member: its own), in ``examples`` order. ``stop``
    (anything with ``.requested``) ends the work between batches with :class:`EvaluationStopped`."""
    how = combination(members, combine)
    if how == "logits":
        enc, windows = _features(members[0], examples)
        per_member, sums = [], None
        for m in members:
            starts, ends = window_logits(m.model, enc, windows, batch_tokens, accelerator, f"{desc} {m.name}", stop)
            per_member.append(m.post.apply(enc, windows, starts, ends))
            sums = [(s, e) for s, e in zip(starts, ends, strict=True)] if sums is None else \
                [(a + s, b + e) for (a, b), s, e in zip(sums, starts, ends, strict=True)]
        mean_s = [a / len(members) for a, _ in sums]
        mean_e = [b / len(members) for _, b in sums]
        return per_member, members[0].post.apply(enc, windows, mean_s, mean_e), enc
    per_member = []
    for m in members:
        enc, windows = _features(m, examples)
        starts, ends = window_logits(m.model, enc, windows, batch_tokens, accelerator, f"{desc} {m.name}", stop)
        per_member.append(m.post.apply(enc, windows, starts, ends))
    return per_member, vote(per_member, examples), enc


def vote(per_member: Sequence[Sequence[Prediction]], examples: Sequence[Example]) -> list[Prediction]:
    """Per question, the span with the highest n-best probability averaged over members."""
    combined = []
    for q, ex in enumerate(examples):
        mass: dict[tuple[int, int], float] = defaultdict(float)
        for preds in per_member:
            p = preds[q]
            for entry in p.nbest or ([{"start": p.start, "end": p.end,
                                       "probability": 1.0}] if p.start is not None else []):
                mass[(entry["start"], entry["end"])] += entry["probability"] / len(per_member)
        if not mass:
            combined.append(Prediction(id=ex.id, text="", score=float("-inf")))
            continue
        ranked = sorted(mass.items(), key=lambda kv: (-kv[1], kv[0]))
        (start, end), prob = ranked[0]
        combined.append(Prediction(id=ex.id, text=ex.context[start:end], score=float(np.log(prob)), start=start,
                                   end=end,
                                   nbest=[{"text": ex.context[a:b], "start": a, "end": b, "score": float(np.log(v)),
                                           "probability": v} for (a, b), v in ranked[:20]]))
    return combined
