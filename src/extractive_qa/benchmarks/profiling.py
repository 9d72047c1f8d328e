"""Where the time goes: one steady-state training step (the recipe's own, after two warm-up steps) and one
evaluation batch of the default windows (after a warm-up batch), under ``torch.profiler``, as shares of wall
time: GEMMs, attention, element-wise and normalisation ops, dropout's random numbers, casts and copies, the
optimizer, and what no torch op accounts for."""

from __future__ import annotations

import time

from .common import data_slice, sync
from .training import recipe_trainer

# Where a profiled op's time goes (by its name; ops under the optimizer's step count as optimizer).
_SHARES = {
    "gemm": ("aten::mm", "aten::addmm", "aten::_addmm_activation", "aten::mkldnn_linear", "aten::linear",
             "aten::matmul", "aten::_mkldnn_matmul"),
    # bmm / baddbmm only appear in attention's two T x T products here
    "attention": ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention",
                  "aten::_cudnn_attention", "aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_safe_softmax",
                  "aten::_softmax_backward_data", "aten::isneginf", "aten::masked_fill"),
    "dropout_random_numbers": ("aten::bernoulli", "aten::uniform_", "aten::rand", "aten::native_dropout"),
    "casts_and_copies": ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous"),
}


def _category(name: str, in_optimizer: bool) -> str:
    if in_optimizer:
        return "optimizer"
    for category, prefixes in _SHARES.items():
        if name.startswith(prefixes):
            return category
    return "elementwise_and_norm"


def time_shares(prof, wall_s: float, on_cuda: bool) -> dict:
    """Shares of ``wall_s`` by :data:`_SHARES` category from a ``torch.profiler`` run: each op's self time (its
    own, not its children's; on CUDA, its kernels' time), and what no op accounts for as ``outside_torch``
    (Python, the data loader, waiting)."""
    totals: dict[str, float] = {}
    for event in prof.events():
        parent, in_optimizer = event, False
        while parent is not None and not in_optimizer:
            in_optimizer = parent.name.startswith("Optimizer.step")
            parent = parent.cpu_parent
        us = event.self_device_time_total if on_cuda else event.self_cpu_time_total
        if us > 0 and (event.name.startswith("aten::") or in_optimizer):
            category = _category(event.name, in_optimizer)
            totals[category] = totals.get(category, 0.0) + us / 1e6
    accounted = sum(totals.values())
    shares = {k: round(v / wall_s, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    shares["outside_torch"] = round(max(0.0, 1 - accounted / wall_s), 4)
    return shares


def profile_bench(cfg: dict) -> list[dict]:
    """Where the time goes: one steady-state training step (the recipe's own, after two warm-up steps) and one
    evaluation batch of the default windows (after a warm-up batch), under ``torch.profiler``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ..engine.attention import attention_kernel, use_attention
    from ..engine.batching import PadCollator, WindowDataset, token_budget_batches, window_lengths
    from ..engine.evaluation import _forward
    from ..engine.hardware import eval_batch_tokens

    c, tokenizer, window, enc, _ = data_slice(cfg, "seed", "train", int(cfg["bench"]["train_questions"]))
    recipe, step = recipe_trainer(c, enc, window, tokenizer)
    device = recipe.accelerator.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    batches = iter(recipe.loader)
    for _ in range(2):
        step(next(batches))
    batch = next(batches)
    sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step(batch)
        sync(device)
        wall = time.perf_counter() - start
    base = recipe.accelerator.unwrap_model(recipe.model)
    rows = [{"bench": "profile", "phase": "train_step", "precision": c.precision.mixed_precision,
             "attention": base.config._attn_implementation, "windows": int(batch["input_ids"].shape[0]),
             "tokens": int(batch["attention_mask"].sum()), "ms": round(wall * 1000, 1),
             "shares": time_shares(prof, wall, device.type == "cuda")}]

    _, _, _, dev, dev_windows = data_slice(cfg, "default", "dev", int(cfg["bench"]["eval_questions"]))
    lengths = window_lengths(dev, dev_windows)
    budget = eval_batch_tokens(c.eval_batch_tokens, mixed_precision=c.precision.mixed_precision)
    first = token_budget_batches(lengths, budget)[0]
    data = WindowDataset(dev, dev_windows, with_labels=False)
    eval_batch = PadCollator(dev.pad_id)([data[w] for w in first])
    model = recipe.model.eval()
    use_attention(base, attention_kernel(recipe.attention, device.type, training=False))

    def forward() -> None:
        with torch.inference_mode(), recipe.accelerator.autocast():
            _forward(model, eval_batch, device)
        sync(device)

    forward()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        forward()
        wall = time.perf_counter() - start
    rows.append({"bench": "profile", "phase": "eval_batch", "precision": c.precision.mixed_precision,
                 "attention": base.config._attn_implementation, "windows": len(first),
                 "tokens": int(eval_batch["attention_mask"].sum()), "ms": round(wall * 1000, 1),
                 "shares": time_shares(prof, wall, device.type == "cuda")})
    return rows
