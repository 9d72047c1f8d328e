"""HF transformers' own ``Trainer``, set up as its ``examples/pytorch/question-answering/run_qa.py`` sets it up, against
this project on the same windows, in the same precision, at the same batch size (``bench.parts=[peer]``).

How ``run_qa.py`` runs, and so the peer here: every window padded to the full length (``padding="max_length"``),
``default_data_collator``, batches drawn at random (no length grouping), the model in transformers' default attention
(SDPA), ``Trainer``'s AdamW (``adamw_torch_fused``: the same fused kernel as ours), a linear schedule with warm-up,
gradient clipping at 1.0, ``bf16=True`` / ``fp16=True`` as the precision says. For evaluation, ``Trainer.predict`` over
the windows padded to full length at ``per_device_eval_batch_size`` (8, its default), then the same post-processing as
ours (``utils_qa.py`` of the example is not part of the library) -- so the difference is how the windows go through
the model. Ours is the recipe's optimizer step at the project's defaults (dynamic padding to few lengths, grouped by
length, the attention kernel chosen per device) and ``predict`` with its token budget. The windows are the project's
default windows (384 tokens, 128 of overlap: the example's own defaults).

Training is timed over ``bench.peer_steps`` steps after ``bench.peer_warmup`` untimed ones on each side, counting the
real (non-padding) tokens of the timed batches; evaluation over ``bench.peer_eval_questions`` dev questions (ours: the
median of ``bench.repeats`` passes), after one untimed pass. Not over the 12 questions (18 windows) the naive seed loop
is timed on: a few batches a side, where what a pass costs besides its batches weighs most (1.09x there, 1.11-1.32x
at 40 questions on the Zen 4 of issue 41); a dev set has thousands. Each side runs in a fresh process.
"""

from __future__ import annotations

import tempfile
import time

from .common import build_model, data_slice, peak_rss_mb, sync


class _FullLength:
    """The training windows as ``run_qa.py`` feeds them: one dict of tensors per window, padded to the full length."""

    def __init__(self, dataset, length: int, pad_id: int):
        from ..engine.batching import PadCollator

        self.dataset, self.pad = dataset, PadCollator(pad_id, fixed_length=length)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        row = self.pad([self.dataset[i]])
        return {k: v[0] for k, v in row.items() if k not in ("index", "full_rows")}


def _trainer_args(c, folder: str, steps: int, train: bool):
    import torch
    from transformers import TrainingArguments

    precision = str(c.precision.mixed_precision)
    return TrainingArguments(
        output_dir=folder, per_device_train_batch_size=int(c.bench.train_batch_size), per_device_eval_batch_size=8,
        max_steps=steps if train else -1, learning_rate=float(c.lr), weight_decay=float(c.optimizer.weight_decay),
        warmup_steps=float(c.warmup_ratio), lr_scheduler_type="linear", max_grad_norm=float(c.max_grad_norm or 0),
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not torch.cuda.is_available(),
        optim="adamw_torch_fused", logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[],
        dataloader_num_workers=0, seed=0, disable_tqdm=True, remove_unused_columns=False)


def _quiet(trainer) -> None:
    """No printed metrics (the bench's stdout is JSON lines only); no callback work in the timed steps but ours."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)


def _peer_model(c):
    model = build_model(c)
    model.config._attn_implementation = "sdpa"  # transformers' default for BERT-class models
    return model


def trainer_train(cfg: dict) -> dict:
    """``Trainer.train`` on the default training windows (see the module docstring)."""
    import torch
    from transformers import Trainer, TrainerCallback, default_data_collator

    from ..engine.batching import TrainWindowDataset

    c, _, window, enc, _ = data_slice(cfg, "default", "train", int(cfg["bench"]["train_questions"]))
    warm, steps = int(c.bench.peer_warmup), int(c.bench.peer_steps)
    real: list[int] = []

    def collate(features):
        batch = default_data_collator(features)
        real.append(int(batch["attention_mask"].sum()))  # host-side, before the batch goes anywhere
        return batch

    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warm:
                sync(device)
                marks["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warm + steps:
                sync(device)
                marks["end"] = time.perf_counter()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = _FullLength(TrainWindowDataset(enc, window, 0), window.max_total_len(enc.template.num_special),
                          enc.pad_id)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model=_peer_model(c), args=_trainer_args(c, folder, warm + steps, True),
                          train_dataset=dataset, data_collator=collate, callbacks=[Timer()])
        _quiet(trainer)
        trainer.train()
    seconds = marks["end"] - marks["start"]
    tokens = sum(real[warm : warm + steps])
    return {"bench": "peer_train", "side": "hf_trainer", "precision": str(c.precision.mixed_precision),
            "attention": "sdpa", "padding": "max_length", "steps": steps, "batch_size": int(c.bench.train_batch_size),
            "seconds": seconds, "real_tokens": tokens, "tokens_per_s": tokens / seconds,
            "padded_tokens_per_s": steps * int(c.bench.train_batch_size) * len(dataset[0]["input_ids"]) / seconds,
            "peak_rss_mb": peak_rss_mb()}


def ours_train(cfg: dict) -> dict:
    """The recipe's optimizer step over its own loader at the default windows (see the module docstring)."""
    from .training import recipe_trainer

    c, tokenizer, window, enc, _ = data_slice(cfg, "default", "train", int(cfg["bench"]["train_questions"]))
    warm, steps = int(c.bench.peer_warmup), int(c.bench.peer_steps)
    recipe, step = recipe_trainer(c, enc, window, tokenizer)
    device = recipe.accelerator.device
    it = iter(recipe.loader)
    for _ in range(warm):
        step(next(it))
    masks = []
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(it)
        masks.append(batch["attention_mask"])  # summed after the timer: a read per step would be a host sync
        step(batch)
    sync(device)
    seconds = time.perf_counter() - start
    real = sum(int(m.sum()) for m in masks)
    base = recipe.accelerator.unwrap_model(recipe.model)
    return {"bench": "peer_train", "side": "ours", "precision": str(c.precision.mixed_precision),
            "attention": base.config._attn_implementation, "padding": f"lengths {recipe.padded_lengths}",
            "steps": steps, "batch_size": int(c.bench.train_batch_size), "seconds": seconds, "real_tokens": real,
            "tokens_per_s": real / seconds, "peak_rss_mb": peak_rss_mb()}


def trainer_eval(cfg: dict) -> dict:
    """``Trainer.predict`` over the dev windows padded to full length, then our post-processing (module docstring)."""
    from transformers import Trainer, default_data_collator

    from ..core.postprocess import PostprocessSettings
    from ..engine.batching import WindowDataset, window_lengths

    c, _, window, enc, windows = data_slice(cfg, "default", "dev", int(cfg["bench"]["peer_eval_questions"]))
    length = window.max_total_len(enc.template.num_special)
    data = _FullLength(WindowDataset(enc, windows, with_labels=False), length, enc.pad_id)
    post = PostprocessSettings.from_cfg(c)
    lengths = window_lengths(enc, windows)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model=_peer_model(c), args=_trainer_args(c, folder, 0, False),
                          data_collator=default_data_collator)
        _quiet(trainer)

        def run():
            out = trainer.predict(data)
            starts, ends = out.predictions
            return post.apply(enc, windows, [s[:n] for s, n in zip(starts, lengths, strict=True)],
                              [e[:n] for e, n in zip(ends, lengths, strict=True)])

        run()  # untimed, as ours gets an untimed pass
        start = time.perf_counter()
        predictions = run()
        seconds = time.perf_counter() - start
    n = len(enc.examples)
    return {"bench": "peer_eval", "side": "hf_trainer", "precision": str(c.precision.mixed_precision),
            "questions": n, "predictions": len(predictions), "seconds": seconds, "questions_per_s": n / seconds,
            "tokens_per_s": float(lengths.sum()) / seconds, "peak_rss_mb": peak_rss_mb()}


def peer_summary(out: dict) -> dict:
    """Ours / the Trainer's, in training real tokens/s and evaluation questions/s."""
    result = {}
    if all(k in out and "error" not in out[k] for k in ("peer_train_ours", "peer_train_trainer")):
        result["train_vs_hf_trainer"] = out["peer_train_ours"]["tokens_per_s"] / out["peer_train_trainer"][
            "tokens_per_s"]
    if all(k in out and "error" not in out[k] for k in ("peer_eval_ours", "peer_eval_trainer")):
        result["eval_vs_hf_trainer"] = (out["peer_eval_ours"]["questions_per_s"]
                                        / out["peer_eval_trainer"]["questions_per_s"])
    return result

