"""Evaluation speed, like for like: the seed notebook's dev loop and ours on **the same questions and the same
(seed) windows**, so the ratio of real tokens per second is the speed-up of the code alone; then ours on the
same questions at the default windows, reported apart, as what those windows save (tokens per question).

The naive loop is the seed as it runs on each device: one question per batch, every window padded to the full
length, start and end picked independently, text decoded from ids -- in fp32 on a CPU, and under fp16
autocast on a CUDA GPU (the notebook's ``Accelerator(mixed_precision="fp16")`` autocasts its dev loop).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from .common import build_model, data_slice, forward_flops, peak_rss_mb, sync


def naive_precision(device_type: str) -> str:
    """What the seed notebook runs in on this device: fp16 on CUDA, fp32 elsewhere."""
    return "fp16" if device_type == "cuda" else "no"


def eval_ours(cfg: dict, window_name: str, budgets: list | None = None,
              questions: int | None = None) -> dict | list[dict]:
    """Our evaluation of the first ``bench.eval_questions`` dev questions (``questions``, when given) at a window
    preset: the median of ``bench.repeats`` timed passes after an untimed one. With ``budgets``: the default windows of
    ``bench.budget_questions`` questions at each ``eval_batch_tokens`` budget."""
    from ..core.postprocess import PostprocessSettings, oracle_logits, postprocess_predictions
    from ..engine.batching import window_lengths
    from ..engine.evaluation import predict, score
    from ..engine.hardware import eval_batch_tokens
    from ..engine.setup import make_accelerator

    limit = questions or int(cfg["bench"]["budget_questions" if budgets else "eval_questions"])
    c, _, _, enc, windows = data_slice(cfg, window_name, "dev", limit)
    accelerator = make_accelerator(c)
    model = accelerator.prepare(build_model(c))
    post = PostprocessSettings.from_cfg(c)
    lengths = window_lengths(enc, windows)
    flops = forward_flops(accelerator.unwrap_model(model), lengths)
    n = len(enc.examples)
    precision = c.precision.mixed_precision
    predict(model, enc, windows, post, c.eval_batch_tokens, accelerator, "warm-up")
    rows = []
    for budget in budgets or [c.eval_batch_tokens]:
        times = []
        for _ in range(1 if budgets else int(c.bench.repeats)):
            sync(accelerator.device)
            start = time.perf_counter()
            preds = predict(model, enc, windows, post, budget, accelerator, "bench")
            sync(accelerator.device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append({"bench": "eval_budget" if budgets else "eval", "windows_preset": window_name,
                     "precision": precision, "eval_batch_tokens": eval_batch_tokens(budget, mixed_precision=precision),
                     "questions": n, "windows": len(windows), "real_tokens": int(lengths.sum()),
                     "real_tokens_per_question": float(lengths.sum()) / n, "seconds": seconds,
                     "questions_per_s": n / seconds, "windows_per_s": len(windows) / seconds,
                     "tokens_per_s": float(lengths.sum()) / seconds, "model_gflops_per_s": flops / seconds / 1e9,
                     "predictions": len(preds), "peak_rss_mb": peak_rss_mb()})
    if budgets:
        return rows
    s, e = oracle_logits(enc, windows)
    rows[0]["oracle_em"] = score(postprocess_predictions(enc, windows, s, e, max_answer_len=post.max_answer_len),
                                 enc)[0]["em"]
    return rows[0]


def _naive_question(model, tokenizer, enc, windows, i: int, mine: np.ndarray, max_len: int, device) -> str:
    """The seed's evaluation of one question: its windows padded to ``max_len``, one forward pass, the best
    window's independent argmax start and end, the answer decoded from ids."""
    import torch

    from ..core.windowing import build_input_ids

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
    return answer.replace(" ", "")  # the seed's last step


def eval_naive(cfg: dict) -> dict:
    """The seed notebook's dev loop over the same questions and seed windows as ``eval_ours(cfg, "seed")`` (see
    the module docstring); one untimed question first, as ours gets an untimed pass."""
    import contextlib

    import torch

    from ..engine.batching import window_lengths
    from ..engine.setup import make_accelerator

    c, tokenizer, window, enc, windows = data_slice(cfg, "seed", "dev", int(cfg["bench"]["eval_questions"]))
    device = make_accelerator(c).device
    precision = naive_precision(device.type)
    model = build_model(c).to(device)
    max_len = window.max_total_len(enc.template.num_special)
    per_question = [np.flatnonzero(windows.example_index == i) for i in range(len(enc.examples))]
    autocast = (torch.autocast("cuda", dtype=torch.float16) if precision == "fp16" else contextlib.nullcontext())
    with torch.no_grad(), autocast:
        _naive_question(model, tokenizer, enc, windows, 0, per_question[0], max_len, device)
        sync(device)
        start = time.perf_counter()
        for i, mine in enumerate(per_question):
            _naive_question(model, tokenizer, enc, windows, i, mine, max_len, device)
        sync(device)
    seconds = time.perf_counter() - start
    n = len(enc.examples)
    lengths = window_lengths(enc, windows)
    return {"bench": "eval_naive", "windows_preset": "seed", "precision": precision, "questions": n,
            "windows": len(windows), "real_tokens": int(lengths.sum()),
            "real_tokens_per_question": float(lengths.sum()) / n, "seconds": seconds, "questions_per_s": n / seconds,
            "windows_per_s": len(windows) / seconds, "tokens_per_s": float(lengths.sum()) / seconds,
            "padded_tokens_per_s": len(windows) * max_len / seconds, "peak_rss_mb": peak_rss_mb()}
