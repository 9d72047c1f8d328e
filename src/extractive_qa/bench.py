"""``python -m extractive_qa.bench`` (``make bench``): evaluation and training speed against the seed's
strategy, on this hardware, in the precision ``precision=auto`` picks for it.

Prints one JSON object per line:

* ``hardware`` -- CPU model and the flags that decide matmul speed, torch's CPU capability, threads,
  GPU name and memory, the precision chosen and why.
* ``gemm_peak`` -- a GEMM microbenchmark (BERT-shaped matrices) in fp32 and in the chosen precision:
  the peak against which model FLOPs utilisation (MFU) is computed in this same run.
* ``eval_naive`` -- the seed notebook's dev loop re-implemented: one question per batch, every window
  padded to the full length, fp32, start and end picked independently, text decoded from ids.
* ``eval`` -- this project's evaluation at the default windows and at the seed's windows (windows of
  many questions per batch, batches sized in tokens, sorted by length, padded per batch, autocast,
  vectorised post-processing), with MFU. ``eval_budget`` -- the default windows at several
  ``eval_batch_tokens`` budgets, to pick one for a machine.
* ``train_naive`` / ``train`` -- optimizer steps at the seed's settings: the naive loop padded to the
  full length in fp32 with a plain AdamW; ours as the recipe trains (dynamic padding, batches grouped
  by length, the configured optimizer, the chosen precision), with MFU.
* ``bf16_agreement`` -- a tiny model trained on the synthetic set: share of dev questions whose bf16
  prediction equals the fp32 one.
* ``summary`` -- the ratios against the naive baseline measured in this same run.

Model FLOPs (the MFU numerator) count real, non-padding tokens: a window of T tokens costs
T * (2N + 4*L*d*T) in the forward pass (N = non-embedding parameters, L layers, width d: the matmuls
plus attention's two T x T products); a training step 3x that (forward + backward). Each measurement
runs in a fresh process, so its peak RSS is its own. Speed targets live here, never in timed tests.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from .core.config import CONF_DIR, to_plain


def _set_threads(cfg) -> None:
    """``bench.threads`` torch threads (0: torch's default, all cores)."""
    import torch

    torch.set_num_threads(int(cfg["bench"]["threads"]) or torch.get_num_threads())


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(cfg: dict, window_name: str, split: str, limit: int):
    """Tokenizer, encoded slice and windows for a window preset (``default`` or ``seed``)."""

    from .core.datafiles import load_split
    from .core.features import window_config
    from .core.windowing import encode_examples, eval_windows
    from .engine.modeling import load_tokenizer

    _set_threads(cfg)
    c = OmegaConf.create(cfg)
    examples = load_split(c.data, split)
    examples.examples = examples.examples[:limit]
    tokenizer = load_tokenizer(c.model)
    window = window_config(c.bench.windows[window_name])
    enc = encode_examples(examples.examples, tokenizer, window)
    return c, tokenizer, window, enc, eval_windows(enc, window)


def _model(c: DictConfig):
    import torch

    from .engine.modeling import load_model

    torch.manual_seed(0)
    return load_model(c.model).eval()


def forward_flops(model, lengths: np.ndarray) -> float:
    """Forward FLOPs of windows of ``lengths`` real tokens: sum of T * (2N + 4*L*d*T)."""
    config = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)
    lengths = np.asarray(lengths, dtype=np.float64)
    return float((lengths * (2 * n + 4 * config.num_hidden_layers * config.hidden_size * lengths)).sum())


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_peak(cfg: dict) -> dict:
    """GFLOP/s of BERT-shaped GEMMs ((tokens x d) @ (d x 4d)) in fp32 and in the chosen precision: the best of
    5 trials of at least 0.3 s each, after a warm-up (a short, cold measurement undersells the peak)."""
    import torch

    from .engine.setup import make_accelerator

    _set_threads(cfg)
    accelerator = make_accelerator(OmegaConf.create(cfg))
    device = accelerator.device
    rows, d = (16384, 1024) if device.type == "cuda" else (2048, 768)
    a = torch.randn(rows, d, device=device)
    b = torch.randn(d, 4 * d, device=device)
    result = {"bench": "gemm_peak", "device": device.type, "shape": [rows, d, 4 * d]}
    for precision in dict.fromkeys(["no", accelerator.mixed_precision]):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        x, y = (a.to(dtype), b.to(dtype)) if dtype else (a, b)
        best = 0.0
        for trial in range(6):  # trial 0 warms up (thread pool, caches, clocks) and is not counted
            _sync(device)
            start, repeats = time.perf_counter(), 0
            while time.perf_counter() - start < 0.3:
                x @ y
                repeats += 1
                if device.type == "cuda" and repeats % 50 == 0:
                    _sync(device)
            _sync(device)
            if trial:
                best = max(best, 2 * rows * d * 4 * d * repeats / (time.perf_counter() - start) / 1e9)
        result[f"gflops_{'fp32' if precision == 'no' else precision}"] = best
    return result


def _peak_for(peaks: dict, precision: str) -> float | None:
    return peaks.get(f"gflops_{'fp32' if precision == 'no' else precision}")


def eval_ours(cfg: dict, window_name: str, budgets: list | None = None) -> dict | list[dict]:
    """Our evaluation over the slice; with ``budgets``, once per eval_batch_tokens budget."""
    from .core.postprocess import PostprocessSettings, oracle_logits, postprocess_predictions
    from .engine.batching import window_lengths
    from .engine.evaluation import predict, score
    from .engine.hardware import eval_batch_tokens
    from .engine.setup import make_accelerator

    part = "budget_questions" if budgets else "seed_questions" if window_name == "seed" else "eval_questions"
    limit = int(cfg["bench"][part])
    c, _, _, enc, windows = _setup(cfg, window_name, "dev", limit)
    accelerator = make_accelerator(c)
    model = accelerator.prepare(_model(c))
    post = PostprocessSettings.from_cfg(c)
    lengths = window_lengths(enc, windows)
    flops = forward_flops(accelerator.unwrap_model(model), lengths)
    n = len(enc.examples)
    if budgets:
        predict(model, enc, windows, post, c.eval_batch_tokens, accelerator, "warm-up")
    rows = []
    precision = c.precision.mixed_precision
    for budget in budgets or [c.eval_batch_tokens]:
        _sync(accelerator.device)
        start = time.perf_counter()
        preds = predict(model, enc, windows, post, budget, accelerator, "bench")
        _sync(accelerator.device)
        seconds = time.perf_counter() - start
        rows.append({"bench": "eval_budget" if budgets else "eval", "windows_preset": window_name,
                     "precision": precision, "eval_batch_tokens": eval_batch_tokens(budget, mixed_precision=precision),
                     "questions": n, "windows": len(windows), "seconds": seconds, "questions_per_s": n / seconds,
                     "windows_per_s": len(windows) / seconds, "tokens_per_s": float(lengths.sum()) / seconds,
                     "model_gflops_per_s": flops / seconds / 1e9, "predictions": len(preds),
                     "peak_rss_mb": _peak_rss_mb()})
    if budgets:
        return rows
    s, e = oracle_logits(enc, windows)
    rows[0]["oracle_em"] = score(postprocess_predictions(enc, windows, s, e, max_answer_len=post.max_answer_len),
                                 enc)[0]["em"]
    return rows[0]


def eval_naive(cfg: dict) -> dict:
    """The seed notebook's dev loop (see the module docstring)."""
    import torch

    from .core.windowing import build_input_ids
    from .engine.batching import window_lengths
    from .engine.setup import make_accelerator

    c, tokenizer, window, enc, windows = _setup(cfg, "seed", "dev", int(cfg["bench"]["naive_questions"]))
    device = make_accelerator(c).device  # the same device as ours, in fp32
    model = _model(c).to(device)
    max_len = window.max_total_len(enc.template.num_special)
    per_question = [np.flatnonzero(windows.example_index == i) for i in range(len(enc.examples))]
    start = time.perf_counter()
    with torch.no_grad():
        for i, mine in enumerate(per_question):
            ids = torch.zeros((len(mine), max_len), dtype=torch.long)
            types = torch.zeros_like(ids)
            mask = torch.zeros_like(ids)
            for r, w in enumerate(mine):
                seq = build_input_ids(enc, i, int(windows.context_start[w]), int(windows.context_len[w]))
                ids[r, : len(seq)] = torch.tensor(seq)
                types[r, : len(seq)] = torch.tensor(enc.template.token_types(len(enc.question_ids[i]),
                                                                             int(windows.context_len[w])) or 0)
                mask[r, : len(seq)] = 1
            typed = {"token_type_ids": types.to(device)} if enc.template.type_ids is not None else {}
            ids = ids.to(device)
            out = model(input_ids=ids, attention_mask=mask.to(device), **typed)
            answer, best = "", float("-inf")
            for r in range(len(mine)):
                sp, si = torch.max(out.start_logits[r], dim=0)
                ep, ei = torch.max(out.end_logits[r], dim=0)
                if si <= ei and (sp + ep) > best:
                    best = float(sp + ep)
                    answer = tokenizer.decode(ids[r][si : ei + 1])
            answer.replace(" ", "")  # the seed's last step; the text itself is not scored here
    _sync(device)
    seconds = time.perf_counter() - start
    n = len(enc.examples)
    return {"bench": "eval_naive", "windows_preset": "seed", "precision": "no", "questions": n, "windows": len(windows),
            "seconds": seconds, "questions_per_s": n / seconds, "windows_per_s": len(windows) / seconds,
            "tokens_per_s": float(window_lengths(enc, windows).sum()) / seconds,
            "padded_tokens_per_s": len(windows) * max_len / seconds, "peak_rss_mb": _peak_rss_mb()}


def _naive_trainer(c: DictConfig, enc, window):
    """The seed's training step: every window padded to the full length, fp32, a plain AdamW."""
    import torch

    from .engine.batching import TrainWindowDataset, train_loader
    from .engine.evaluation import model_inputs
    from .engine.setup import make_accelerator

    loader = train_loader(TrainWindowDataset(enc, window, 0), int(c.bench.train_batch_size), enc.pad_id,
                          group_by_length=False, fixed_length=window.max_total_len(enc.template.num_special))
    device = make_accelerator(c).device  # the same device as ours, in fp32
    model = _model(c).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(batch: dict) -> None:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**model_inputs(batch), start_positions=batch["start_positions"],
                    end_positions=batch["end_positions"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return model, loader, step


def recipe_trainer(c: DictConfig, enc, window, tokenizer):
    """The training recipe's own loader, model (attention kernel, compile), optimizer and optimizer step --
    :meth:`~extractive_qa.train.TrainingRecipe._optimizer_step`, exactly what ``make train`` runs per step,
    with its device-side loss bookkeeping and its non-finite check -- at ``bench.train_batch_size``."""
    import torch

    from .engine.modeling import resolve_source
    from .engine.setup import make_accelerator
    from .train import LogWindow, TrainingRecipe

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


def _timed_steps(model, loader, step, steps: int) -> dict:
    """``steps`` optimizer steps after one untimed warm-up step (allocations, compilation)."""
    device = next(model.parameters()).device
    it = iter(loader)
    timed_lengths: list[np.ndarray] = []
    padded = 0
    start = None
    for n in range(steps + 1):
        if n == 1:
            _sync(device)
            start = time.perf_counter()
            timed_lengths, padded = [], 0
        batch = next(it)
        step(batch)
        timed_lengths.append(batch["attention_mask"].sum(dim=1).cpu().numpy())
        padded += batch["input_ids"].numel()
    _sync(device)
    seconds = time.perf_counter() - start
    # Counted after the timer stops: the FLOPs of the timed steps' real tokens, forward + backward.
    lengths = np.concatenate(timed_lengths)
    real = int(lengths.sum())
    flops = 3 * forward_flops(model, lengths)
    batch_size = len(timed_lengths[0])
    return {"steps": steps, "batch_size": batch_size, "seconds": seconds, "windows_per_s": len(lengths) / seconds,
            "tokens_per_s": real / seconds, "padded_tokens_per_s": padded / seconds,
            "model_gflops_per_s": flops / seconds / 1e9}


def train_bench(cfg: dict, naive: bool) -> dict:
    c, tokenizer, window, enc, _ = _setup(cfg, "seed", "train", int(cfg["bench"]["train_questions"]))
    steps = int(c.bench.train_steps)
    if naive:
        c = OmegaConf.merge(c, {"precision": {"mixed_precision": "no", "requested": "no"}})
        result = _timed_steps(*_naive_trainer(c, enc, window), steps)
    else:
        recipe, step = recipe_trainer(c, enc, window, tokenizer)
        base = recipe.accelerator.unwrap_model(recipe.model)
        result = _timed_steps(base, recipe.loader, step, steps)
        result["attention"] = base.config._attn_implementation
    return {"bench": "train_naive" if naive else "train", "windows_preset": "seed",
            "precision": "no" if naive else c.precision.mixed_precision,
            "compile": bool(c.get("compile")) and not naive,
            **result, "peak_rss_mb": _peak_rss_mb()}


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

    from .engine.attention import attention_kernel, use_attention
    from .engine.batching import PadCollator, WindowDataset, token_budget_batches, window_lengths
    from .engine.evaluation import _forward
    from .engine.hardware import eval_batch_tokens

    c, tokenizer, window, enc, _ = _setup(cfg, "seed", "train", int(cfg["bench"]["train_questions"]))
    recipe, step = recipe_trainer(c, enc, window, tokenizer)
    device = recipe.accelerator.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    batches = iter(recipe.loader)
    for _ in range(2):
        step(next(batches))
    batch = next(batches)
    _sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step(batch)
        _sync(device)
        wall = time.perf_counter() - start
    base = recipe.accelerator.unwrap_model(recipe.model)
    rows = [{"bench": "profile", "phase": "train_step", "precision": c.precision.mixed_precision,
             "attention": base.config._attn_implementation, "windows": int(batch["input_ids"].shape[0]),
             "tokens": int(batch["attention_mask"].sum()), "ms": round(wall * 1000, 1),
             "shares": time_shares(prof, wall, device.type == "cuda")}]

    _, _, _, dev, dev_windows = _setup(cfg, "default", "dev", int(cfg["bench"]["eval_questions"]))
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
        _sync(device)

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


def bf16_agreement(cfg: dict) -> dict:
    """Train a tiny model on the synthetic set (the training CLI, fp32), then compare its fp32 and
    bf16 dev predictions."""
    import subprocess

    import torch

    from .core.datafiles import load_split
    from .core.features import window_config
    from .core.postprocess import PostprocessSettings
    from .core.synthetic import write_synthetic_hw7, write_tiny_model_dir
    from .core.windowing import encode_examples, eval_windows
    from .engine.evaluation import predict, score
    from .engine.modeling import load_qa_model, load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = write_synthetic_hw7(tmp / "data", n_train=600, n_dev=200)
        subprocess.run([sys.executable, "-m", "extractive_qa.train", "model=tiny",
                        f"model.name_or_path={write_tiny_model_dir(tmp / 'model')}", f"data.dir={data_dir}",
                        "tracking=none",
                        "epochs=4", "lr=1e-3", "batch_size=32", "predict_test=false", "feature_cache=false",
                        "precision=fp32", f"paths.output_dir={tmp}", f"hydra.run.dir={tmp / 'run'}"],
                       check=True, capture_output=True, text=True)
        c = OmegaConf.create(cfg)
        model = load_qa_model(tmp / "run" / "best_model").eval()
        tokenizer = load_tokenizer(OmegaConf.create({"name_or_path": str(tmp / "run" / "best_model")}))
        window = window_config(c.bench.windows.default)
        enc = encode_examples(load_split(OmegaConf.create({"dev_file": str(data_dir / "hw7_dev.json")}),
                                         "dev").examples,
                              tokenizer, window)
        windows = eval_windows(enc, window)
        post = PostprocessSettings.from_cfg(c)
        fp32 = predict(model, enc, windows, post, "auto")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = predict(model, enc, windows, post, "auto")
        same = sum(a.text == b.text for a, b in zip(fp32, bf16, strict=True)) / len(fp32)
        return {"bench": "bf16_agreement", "questions": len(fp32), "same_prediction": same,
                "dev_em_fp32": score(fp32, enc)[0]["em"], "dev_em_bf16": score(bf16, enc)[0]["em"],
                "peak_rss_mb": _peak_rss_mb()}


def prediction_memory(cfg: dict) -> dict:
    """Peak memory of predicting ``bench.memory_questions`` questions that share one 800-character paragraph
    (3 windows each): logits, post-processing with n-best lists, the submission and the n-best file -- with a
    tiny model, so what is measured is what the prediction path holds per window, not the weights."""
    import random

    from .core.data import read_examples
    from .core.features import window_config
    from .core.outputs import nbest_json, write_json, write_submission
    from .core.postprocess import PostprocessSettings
    from .core.synthetic import _SYNTH_CHARS, write_tiny_model_dir
    from .core.windowing import encode_examples, eval_windows
    from .engine.evaluation import predict
    from .engine.modeling import load_tokenizer

    _set_threads(OmegaConf.create(cfg))
    c = OmegaConf.create(cfg)
    n = int(c.bench.memory_questions)
    rng = random.Random(0)
    letters = _SYNTH_CHARS[:200]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paragraph = "".join(rng.choice(letters) for _ in range(800))
        questions = [{"id": i, "paragraph_id": 0, "question_text": "".join(rng.choice(letters) for _ in range(12)),
                      "answer_text": None, "answer_start": None, "answer_end": None} for i in range(n)]
        (tmp / "test.json").write_text(json.dumps({"paragraphs": [paragraph], "questions": questions},
                                                  ensure_ascii=False), encoding="utf-8")
        model_dir = write_tiny_model_dir(tmp / "model")
        import torch
        from transformers import AutoConfig, AutoModelForQuestionAnswering

        model = AutoModelForQuestionAnswering.from_config(AutoConfig.from_pretrained(model_dir)).eval()
        tokenizer = load_tokenizer(OmegaConf.create({"name_or_path": str(model_dir)}))
        window = window_config(c.bench.windows.default)
        test = read_examples(str(tmp / "test.json"))
        enc = encode_examples(test.examples, tokenizer, window)
        windows = eval_windows(enc, window)
        before = _peak_rss_mb()
        start = time.perf_counter()
        with torch.inference_mode():
            predictions = predict(model, enc, windows, PostprocessSettings.from_cfg(c), "auto")
        write_submission(tmp / "submission.csv", test.examples, predictions)
        write_json(tmp / "test_nbest.json", nbest_json(predictions))
        peak = _peak_rss_mb()
        return {"bench": "prediction_memory", "questions": n, "windows": len(windows),
                "seconds": time.perf_counter() - start, "rss_before_mb": before, "peak_rss_mb": peak,
                "kb_per_window": (peak - before) * 1024 / max(len(windows), 1), "predictions": len(predictions)}


def comparison_speed(cfg: dict) -> dict:
    """Time and peak memory of comparing two configurations of ``bench.compare_seeds`` seeds each over
    ``bench.compare_questions`` questions (the statistics of a report: EM and F1, interval, p-value, power,
    seeds needed); issue 27's target: 100,000 questions in < 5 s and < 300 MB."""
    from .core.significance import Scores, against_best, seeds_needed

    c = OmegaConf.create(cfg)
    n, k = int(c.bench.compare_questions), int(c.bench.compare_seeds)
    rng = np.random.default_rng(0)
    p = rng.beta(0.8, 0.2, n)
    before = _peak_rss_mb()
    start = time.perf_counter()
    for metric in ("em", "f1"):
        draw = (lambda: (rng.random((k, n)) < p).astype(np.float64)) if metric == "em" else (
            lambda: np.clip(p + rng.normal(0, 0.2, (k, n)), 0, 1))
        configs = {"A": Scores(draw()), "B": Scores(draw())}
        diff = against_best(configs, "A")["B"]
        seeds_needed(diff)
        _ = diff.detectable
    return {"bench": "comparison", "questions": n, "seeds": k, "seconds": time.perf_counter() - start,
            "rss_before_mb": before, "peak_rss_mb": _peak_rss_mb()}


def _child(fn, args, queue) -> None:
    try:
        queue.put(fn(*args))
    except BaseException as err:  # noqa: BLE001 - reported to the parent as a JSON line
        queue.put({"error": f"{type(err).__name__}: {err}"})


def in_fresh_process(fn, *args):
    if not args[0]["bench"].get("isolate", True):  # one process for all (tests): faster, peak RSS shared
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - reported as a JSON line, as from a child
            return {"error": f"{type(err).__name__}: {err}"}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _emit(result):
    for row in result if isinstance(result, list) else [result]:
        print(json.dumps(row, ensure_ascii=False), flush=True)
    return result


def hardware_line(cfg: DictConfig) -> dict:
    """This machine and the precision chosen for it (recorded into ``cfg`` for every measurement)."""
    import torch

    from .engine.hardware import detect_hardware
    from .engine.setup import resolve_run_precision

    _set_threads(cfg)
    resolve_run_precision(cfg)
    return {"bench": "hardware", **detect_hardware().to_dict(), "torch": torch.__version__,
            "precision": cfg.precision.mixed_precision, "precision_reason": cfg.precision.reason}


def summarize(cfg: DictConfig, out: dict) -> dict:
    summary: dict = {"bench": "summary", "model": cfg.model.name_or_path, "init": cfg.model.init,
                     "hardware": out["hardware"]["name"], "precision": cfg.precision.mixed_precision}
    peaks = out.get("gemm", {})
    if "naive" in out and "error" not in out["naive"]:
        base = out["naive"]["questions_per_s"]
        summary["eval_speedup_default_windows"] = out["default"].get("questions_per_s", 0) / base
        summary["eval_speedup_seed_windows"] = out["seed"].get("questions_per_s", 0) / base
        summary["oracle_em_default_windows"] = out["default"].get("oracle_em")
    if "train_naive" in out and "error" not in out["train_naive"]:
        summary["train_tokens_per_s_ratio"] = out["train"].get("tokens_per_s", 0) / out["train_naive"]["tokens_per_s"]
    peak = _peak_for(peaks, cfg.precision.mixed_precision)
    for key, name in (("default", "eval_mfu"), ("train", "train_mfu")):
        if peak and key in out and "model_gflops_per_s" in out[key]:
            summary[name] = out[key]["model_gflops_per_s"] / peak
    if "bf16" in out:
        summary["bf16_same_prediction"] = out["bf16"].get("same_prediction")
    if "memory" in out:
        summary["prediction_peak_rss_mb"] = out["memory"].get("peak_rss_mb")
    if "compare" in out:
        summary["comparison_seconds"] = out["compare"].get("seconds")
    return summary


@hydra.main(config_path=CONF_DIR, config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    parts = set(cfg.bench.parts)
    out: dict = {"hardware": _emit(hardware_line(cfg))}
    plain = to_plain(cfg)
    out["gemm"] = _emit(in_fresh_process(gemm_peak, plain))
    if "eval" in parts:
        out["naive"] = _emit(in_fresh_process(eval_naive, plain))
        out["default"] = _emit(in_fresh_process(eval_ours, plain, "default"))
        out["seed"] = _emit(in_fresh_process(eval_ours, plain, "seed"))
    if "budgets" in parts:
        out["budgets"] = _emit(in_fresh_process(eval_ours, plain, "default", list(cfg.bench.eval_budgets)))
    if "train" in parts:
        out["train_naive"] = _emit(in_fresh_process(train_bench, plain, True))
        out["train"] = _emit(in_fresh_process(train_bench, plain, False))
    if "bf16" in parts:
        out["bf16"] = _emit(in_fresh_process(bf16_agreement, plain))
    if "profile" in parts:
        out["profile"] = _emit(in_fresh_process(profile_bench, plain))
    if "memory" in parts:
        out["memory"] = _emit(in_fresh_process(prediction_memory, plain))
    if "compare" in parts:
        out["compare"] = _emit(in_fresh_process(comparison_speed, plain))
    _emit(summarize(cfg, out))
    if any("error" in r for r in out.values() if isinstance(r, dict)):
        sys.exit(1)


if __name__ == "__main__":
    main()
