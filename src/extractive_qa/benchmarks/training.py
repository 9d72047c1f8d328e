"""Training speed at the seed's settings (its windows, batch size 8): the seed notebook's training step and the
recipe's own, on the same device. Real (non-padding) tokens per second is the like-for-like measure: the naive
step pads every window to the full length, ours pads each batch to its longest window.

The naive step is the seed as it runs on each device: a plain AdamW, every window padded to the full length,
through ``Accelerator(mixed_precision=...)`` -- fp16 with the gradient scaler on a CUDA GPU (the notebook's
setting), fp32 on a CPU. Ours is :meth:`~extractive_qa.recipe.TrainingRecipe._optimizer_step`, exactly what
``make train`` runs per step (dynamic padding, length-grouped batches, the configured optimizer and
precision, its device-side loss bookkeeping and non-finite check). Nothing but the steps is inside the timer:
the real-token counts are read after it stops (a ``.cpu()`` per step would be a host sync on a GPU).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .common import build_model, data_slice, forward_flops, peak_rss_mb, sync
from .evaluation import naive_precision


def naive_trainer(c: DictConfig, enc, window):
    """The seed's training step (see the module docstring): ``(model, loader, step, precision)``."""
    import torch

    from ..engine.batching import TrainWindowDataset, train_loader
    from ..engine.evaluation import model_inputs
    from ..engine.setup import make_accelerator

    loader = train_loader(TrainWindowDataset(enc, window, 0), int(c.bench.train_batch_size), enc.pad_id,
                          group_by_length=False, fixed_length=window.max_total_len(enc.template.num_special))
    precision = naive_precision("cuda" if torch.cuda.is_available() else "cpu")
    accelerator = make_accelerator(OmegaConf.merge(c, {"precision": {"mixed_precision": precision,
                                                                     "requested": precision}}))
    device = accelerator.device
    model = build_model(c).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model, optimizer = accelerator.prepare(model, optimizer)  # fp16: autocast forward, scaled backward

    def step(batch: dict) -> None:
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        out = model(**model_inputs(batch), start_positions=batch["start_positions"],
                    end_positions=batch["end_positions"])
        accelerator.backward(out.loss)
        optimizer.step()
        optimizer.zero_grad()

    return accelerator.unwrap_model(model), loader, step, precision


def recipe_trainer(c: DictConfig, enc, window, tokenizer):
    """The training recipe's own loader, model (attention kernel, compile), optimizer and optimizer step at
    ``bench.train_batch_size``: ``(recipe, step)``."""
    import torch

    from ..engine.modeling import resolve_source
    from ..engine.setup import make_accelerator
    from ..recipe import LogWindow, TrainingRecipe

    c = OmegaConf.merge(c, {"batch_size": int(c.bench.train_batch_size), "max_steps": None})
    recipe = TrainingRecipe(c, Path(tempfile.gettempdir()))
    recipe.accelerator = make_accelerator(c)
    recipe._check_every_step = recipe.accelerator.device.type == "cpu"
    recipe.model_source = resolve_source(str(c.model.name_or_path), c.model.get("revision"))
    recipe.encoded, recipe.window, recipe.tokenizer = {"train": enc}, window, tokenizer
    torch.manual_seed(0)
    recipe._setup_training()
    recipe._log_window = LogWindow()
    recipe.model.train()

    def step(batch: dict) -> None:
        recipe._optimizer_step(batch)
        recipe.progress.step += 1
        if recipe._check_every_step:
            recipe._check_finite()

    return recipe, step


def timed_steps(model, loader, step, steps: int) -> dict:
    """``steps`` optimizer steps after one untimed warm-up step (allocations, compilation); the batches' real
    tokens are counted after the timer stops."""
    device = next(model.parameters()).device
    it = iter(loader)
    step(next(it))
    masks, padded = [], 0
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(it)
        step(batch)
        masks.append(batch["attention_mask"])
        padded += batch["input_ids"].numel()
    sync(device)
    seconds = time.perf_counter() - start
    lengths = np.concatenate([m.sum(dim=1).cpu().numpy() for m in masks])
    real = int(lengths.sum())
    flops = 3 * forward_flops(model, lengths)  # forward + backward
    return {"steps": steps, "batch_size": len(masks[0]), "seconds": seconds, "windows_per_s": len(lengths) / seconds,
            "real_tokens": real, "tokens_per_s": real / seconds, "padded_tokens_per_s": padded / seconds,
            "model_gflops_per_s": flops / seconds / 1e9}


def train_bench(cfg: dict, naive: bool) -> dict:
    c, tokenizer, window, enc, _ = data_slice(cfg, "seed", "train", int(cfg["bench"]["train_questions"]))
    steps = int(c.bench.train_steps)
    if naive:
        model, loader, step, precision = naive_trainer(c, enc, window)
        result = timed_steps(model, loader, step, steps)
    else:
        recipe, step = recipe_trainer(c, enc, window, tokenizer)
        base = recipe.accelerator.unwrap_model(recipe.model)
        result = timed_steps(base, recipe.loader, step, steps)
        result["attention"] = base.config._attn_implementation
        precision = c.precision.mixed_precision
    return {"bench": "train_naive" if naive else "train", "windows_preset": "seed", "precision": precision,
            "compile": bool(c.get("compile")) and not naive, **result, "peak_rss_mb": peak_rss_mb()}


def optimizer_step_time(cfg: dict) -> dict:
    """Seconds per AdamW step over the model's parameters (gradients in place, the recipe's parameter
    groups), ``fused=True`` (one kernel, conf/optimizer/adamw.yaml) against ``fused=False``: median of 5 steps
    after 2 untimed ones, each in the same process and parameters."""
    import statistics

    import torch

    from ..engine.setup import parameter_groups
    from .common import set_threads

    set_threads(cfg)
    c = OmegaConf.create(cfg)
    model = build_model(c).train()
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    out = {"bench": "optimizer_step", "parameters": sum(p.numel() for p in model.parameters())}
    for fused in (True, False):
        optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-5, fused=fused)
        times = []
        for n in range(7):
            start = time.perf_counter()
            optimizer.step()
            if n >= 2:
                times.append(time.perf_counter() - start)
        out[f"seconds_{'fused' if fused else 'foreach'}"] = statistics.median(times)
    return out


def padding_share(cfg: dict) -> dict:
    """Share of padding in an epoch of training batches at the default windows on ``bench.padding_questions``
    training questions, with and without ``group_by_length`` (the recipe's loader; no model is run)."""
    from ..core.features import window_config
    from ..engine.batching import TrainWindowDataset, train_loader

    c, _, _, enc, _ = data_slice(cfg, "default", "train", int(cfg["bench"]["padding_questions"]))
    window = window_config(c.bench.windows.default)
    out = {"bench": "padding", "questions": len(enc.examples), "batch_size": int(c.batch_size)}
    for grouped in (False, True):
        real = padded = 0
        for batch in train_loader(TrainWindowDataset(enc, window, 0), int(c.batch_size), enc.pad_id,
                                  group_by_length=grouped):
            real += int(batch["attention_mask"].sum())
            padded += batch["input_ids"].numel()
        out[f"padding_share_{'grouped' if grouped else 'shuffled'}"] = 1 - real / padded
    return out
