"""Running a model over windows and scoring its answers: shared by training-time evaluation and the predictor."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..core.errors import SetupError
from ..core.metrics import score_answers
from ..core.postprocess import PostprocessSettings, Prediction
from ..core.windowing import EncodedExamples, Windows
from .attention import attention_kernel, use_attention
from .batching import PadCollator, WindowDataset, token_budget_batches, window_lengths
from .hardware import eval_batch_tokens

log = logging.getLogger(__name__)
# Out of accelerator memory: torch.OutOfMemoryError (CUDA, and what tests inject on a CPU).
OOM_ERRORS = (torch.OutOfMemoryError,)

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")  # token_type_ids only where the template has them


def model_inputs(batch: dict) -> dict:
    """The model's inputs of a collated batch (no ``token_type_ids`` for models that take none), with the attention
    mask in a form that needs no host read of the device.

    transformers builds its SDPA mask from a 2D one by asking ``padding_mask.all()`` -- a read of a device value, so
    on a GPU every forward waited for the device (found by tests/test_loop.py). The collator knows on the host which
    rows fill their padded length (``full_rows``): a batch without padding gets no mask (what transformers does after
    that read, letting SDPA use its fused kernels), a padded one the additive 4D mask transformers makes for eager
    attention (0 where a token is attended, the dtype's minimum where it is padding), which it takes as it is."""
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids") if k in batch}
    mask = batch.get("attention_mask")
    full = batch.get("full_rows")
    if mask is None or (full is not None and bool(np.all(full))):
        return inputs
    inputs["attention_mask"] = additive_mask(mask)
    return inputs


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """``(batch, 1, 1, length)``: 0 where ``mask`` is 1, float32's minimum where it is 0, on ``mask``'s device."""
    return (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min


class EvaluationStopped(Exception):
    """A stop was requested (SIGINT / SIGTERM) between two evaluation batches."""


class TokenBudget:
    """Padded tokens per evaluation batch (``eval_batch_tokens``; ``auto``: the device's default). Out of
    device memory it halves -- and stays halved for the rest of the run, every later evaluation starting
    there."""

    def __init__(self, value: int | str | None, mixed_precision: str | None = None):
        self.tokens = eval_batch_tokens(value, mixed_precision=mixed_precision)
        self.halvings: list[str] = []  # what was halved and when, for the run's record

    def halve(self, longest_window: int) -> None:
        if self.tokens <= longest_window:
            raise SetupError(f"out of GPU memory evaluating a single window of {longest_window} tokens. Fix: "
                             "shorter windows (window.max_seq_len=256), precision=bf16 or fp16, a smaller model, or a "
                             "larger GPU.")
        old, self.tokens = self.tokens, max(self.tokens // 2, 1)
        self.halvings.append(f"{old} -> {self.tokens}")
        log.warning("out of GPU memory in evaluation: eval_batch_tokens %d -> %d (the same windows, smaller batches)",
                    old, self.tokens)


class BatchQueue:
    """A loader's batch sampler whose batches not yet taken can be cut again (smaller) while it is read:
    the loader asks for one batch at a time (no workers), so a re-cut takes effect from the next batch."""

    def __init__(self, batches: list[list[int]]):
        self.batches = deque(batches)

    def __iter__(self):
        while self.batches:
            yield self.batches.popleft()

    def __len__(self) -> int:
        return len(self.batches)

    def recut(self, batches: list[list[int]], cut) -> None:
        """Replace what is left with ``cut(windows)`` over the windows of ``batches`` (as index lists)."""
        left = np.array([w for b in batches for w in b])
        self.batches = deque([left[b].tolist() for b in cut(left)])


@contextlib.contextmanager
def _evaluating(model, accelerator, kernel: str):
    """``model`` in eval mode with the evaluation's attention ``kernel``; its mode and kernel are put back after,
    however the evaluation ends."""
    base = accelerator.unwrap_model(model) if accelerator is not None else model
    kernel_before = getattr(getattr(base, "config", None), "_attn_implementation", None)
    was_training = model.training
    model.eval()
    use_attention(base, kernel)
    try:
        yield
    finally:
        model.train(was_training)
        if kernel_before is not None:
            use_attention(base, kernel_before)


def _forward(model, batch: dict, device):
    """The model over one evaluation batch (start and end logits)."""
    return model(**{k: v.to(device) for k, v in model_inputs(batch).items()})


def window_logits(model, enc: EncodedExamples, windows: Windows, batch_tokens: int | str | TokenBudget,
                  accelerator=None, desc: str = "eval", stop=None, attention: str = "auto",
                  pad_multiple: int = 8) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits of every window (each cut to its own length), in window order.

    Batches hold up to ``batch_tokens`` padded tokens (``"auto"``: the device's default, see
    :func:`~extractive_qa.engine.hardware.eval_batch_tokens`; a :class:`TokenBudget` keeps what an
    out-of-memory error halved it to) of windows sorted by length
    (:func:`~extractive_qa.engine.batching.token_budget_batches`). Out of device memory, the budget is
    halved and the batches not yet done are cut again. With several processes each rank runs every N-th
    batch and the ranks exchange their logits, so every window is computed once and every rank gets them
    all (no padded duplicates to drop). ``stop`` (a :class:`~extractive_qa.engine.checkpointing.StopRequest`)
    ends a single-process evaluation between batches with :class:`EvaluationStopped`; several processes
    finish it (they must agree on when to stop). ``attention`` (``auto``: the device's evaluation kernel, see
    :mod:`~extractive_qa.engine.attention`) is switched to for the evaluation and back after it. Batches are
    padded to a multiple of ``pad_multiple`` tokens (64 with ``compile``: a few shapes to compile).
    """
    budget = batch_tokens if isinstance(batch_tokens, TokenBudget) else TokenBudget(
        batch_tokens, accelerator.mixed_precision if accelerator is not None else None)
    lengths = window_lengths(enc, windows)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    queue = BatchQueue(token_budget_batches(lengths, budget.tokens)[rank::world])
    # A generator of its own: a loader draws a seed from torch's global one each time it is read, and that draw
    # would shift every later dropout mask -- the training trajectory would depend on the evaluation cadence.
    loader = DataLoader(WindowDataset(enc, windows, with_labels=False), batch_sampler=queue,
                        collate_fn=PadCollator(enc.pad_id, multiple_of=pad_multiple), generator=torch.Generator())
    device = next(model.parameters()).device
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    # Every window's logits go into two flat arrays made once (one large block each), not into views of each
    # batch's output: those views kept every batch's tensor alive, interleaved on the heap with the transient
    # activations, and the allocator could give none of it back -- 78 KB per window in all (4.9 GB for 20,000
    # questions over one long paragraph). Now 2 x 4 bytes per token, and the batches' memory is reused.
    ends_at = np.cumsum(lengths)
    spans = [slice(end - length, end) for end, length in zip(ends_at.tolist(), lengths.tolist(), strict=True)]
    flat_starts, flat_ends = np.empty(int(lengths.sum()), np.float32), np.empty(int(lengths.sum()), np.float32)
    done = np.zeros(len(windows), dtype=bool)
    show = accelerator is None or accelerator.is_local_main_process
    # One autocast around every batch, not one per batch: autocast keeps the low-precision copy of each weight
    # until its outermost context ends, so the weights are cast once per evaluation instead of once per batch.
    with _evaluating(model, accelerator, attention_kernel(attention, device.type, training=False)), \
            torch.inference_mode(), autocast(), tqdm(total=len(windows) // world, desc=desc, disable=not show,
                                                     leave=False, mininterval=2) as bar:
        for batch in loader:
            if stop is not None and world == 1 and stop.requested:
                raise EvaluationStopped
            indices = batch["index"].tolist()
            try:
                out = _forward(model, batch, device)
            except OOM_ERRORS:
                budget.halve(int(lengths[indices].max()))
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                queue.recut([indices, *queue.batches], lambda left: token_budget_batches(lengths[left], budget.tokens))
                continue
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            del out
            for r, w in enumerate(indices):
                flat_starts[spans[w]], flat_ends[spans[w]] = s[r, : lengths[w]], e[r, : lengths[w]]
            done[indices] = True
            bar.update(len(indices))
    if world > 1:  # each rank has filled its windows: gather them (as copies of each window's part)
        from accelerate.utils import gather_object

        parts = [(int(w), flat_starts[spans[w]].copy(), flat_ends[spans[w]].copy()) for w in np.flatnonzero(done)]
        for w, s, e in gather_object(parts):
            flat_starts[spans[w]], flat_ends[spans[w]] = s, e
            done[w] = True
    missing = np.flatnonzero(~done)
    if len(missing):
        raise RuntimeError(f"no logits came back for {len(missing)} windows (first: {missing[:5].tolist()})")
    return [flat_starts[span] for span in spans], [flat_ends[span] for span in spans]


def predict(model, enc: EncodedExamples, windows: Windows, settings: PostprocessSettings,
            batch_tokens: int | str | TokenBudget,
            accelerator=None, desc: str = "eval", stop=None, attention: str = "auto",
            pad_multiple: int = 8) -> list[Prediction]:
    starts, ends = window_logits(model, enc, windows, batch_tokens, accelerator, desc, stop, attention, pad_multiple)
    return settings.apply(enc, windows, starts, ends)


def score(predictions: Sequence[Prediction], enc: EncodedExamples) -> tuple[dict[str, float], list[dict]]:
    """Aggregate scores over questions with references, and one row per question (with the span's score);
    :func:`~extractive_qa.core.metrics.score_answers` does the scoring, for ``evaluate`` too."""
    aggregate, rows = score_answers({p.id: p.text for p in predictions}, enc.examples)
    for row, p, ex in zip(rows, predictions, enc.examples, strict=True):
        row["score"] = p.score
        row["paragraph"] = ex.context_key  # the sampling unit of a comparison's question part (core/significance)
    return aggregate, rows
