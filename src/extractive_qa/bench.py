"""``python -m extractive_qa.bench`` (``make bench``): evaluation and training speed against the seed's strategy.

Prints one JSON object per line:

* ``eval`` -- this project's evaluation (windows of many questions per batch, sorted by length,
  padded per batch to a multiple of 8, autocast per ``precision``, vectorised post-processing) at the
  default windows and at the seed's windows, and ``eval_naive`` -- the seed notebook's loop
  re-implemented: one question per batch, every window padded to the full length, fp32, start and end
  picked independently, text decoded from ids. Each reports questions/s, windows/s, tokens/s (real,
  non-padding tokens), peak RSS; ours also the oracle EM of the same slice.
* ``train`` / ``train_naive`` -- optimizer steps at the seed's settings: ours with dynamic padding and
  ``precision``; the naive loop padded to the full length in fp32.
* ``bf16_agreement`` -- a tiny model trained on the synthetic set: share of dev questions whose bf16
  prediction equals the fp32 one.
* ``summary`` -- the ratios against the naive baseline measured in this same run.

Each measurement runs in a fresh process so its peak RSS is its own. Speed targets live here, never
in timed tests.
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


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(cfg: dict, window_name: str, split: str, limit: int):
    """Tokenizer, encoded slice and windows for a window preset (``default`` or ``seed``)."""
    import torch

    from .core.datafiles import load_split
    from .core.features import window_config
    from .core.windowing import encode_examples, eval_windows
    from .engine.modeling import load_tokenizer

    torch.set_num_threads(int(cfg["bench"]["threads"]) or torch.get_num_threads())
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


def eval_ours(cfg: dict, window_name: str) -> dict:
    from .core.postprocess import oracle_logits, postprocess_predictions
    from .engine.batching import window_lengths
    from .engine.evaluation import PostprocessSettings, predict, score
    from .engine.setup import make_accelerator

    c, _, _, enc, windows = _setup(cfg, window_name, "dev", int(cfg["bench"]["eval_questions"]))
    model = _model(c)
    accelerator = make_accelerator(c)
    model = accelerator.prepare(model)
    post = PostprocessSettings.from_cfg(c)
    start = time.perf_counter()
    preds = predict(model, enc, windows, post, int(c.eval_batch_size), accelerator, "bench")
    seconds = time.perf_counter() - start
    s, e = oracle_logits(enc, windows)
    oracle, _ = score(postprocess_predictions(enc, windows, s, e, max_answer_len=post.max_answer_len), enc)
    n = len(enc.examples)
    return {"bench": "eval", "windows_preset": window_name, "precision": c.precision.mixed_precision,
            "questions": n, "windows": len(windows), "seconds": seconds, "questions_per_s": n / seconds,
            "windows_per_s": len(windows) / seconds, "tokens_per_s": float(window_lengths(enc, windows).sum()) / seconds,
            "oracle_em": oracle["em"], "predictions": len(preds), "peak_rss_mb": _peak_rss_mb()}


def eval_naive(cfg: dict) -> dict:
    """The seed notebook's dev loop (see the module docstring)."""
    import torch

    from .core.windowing import build_input_ids
    from .engine.batching import window_lengths

    c, tokenizer, window, enc, windows = _setup(cfg, "seed", "dev", int(cfg["bench"]["naive_questions"]))
    model = _model(c)
    max_len = window.max_total_len()
    per_question = [np.flatnonzero(windows.example_index == i) for i in range(len(enc.examples))]
    start = time.perf_counter()
    with torch.no_grad():
        for i, mine in enumerate(per_question):
            ids = torch.zeros((len(mine), max_len), dtype=torch.long)
            types = torch.zeros_like(ids)
            mask = torch.zeros_like(ids)
            for r, w in enumerate(mine):
                seq = build_input_ids(enc, i, int(windows.context_start[w]), int(windows.context_len[w]))
                q = len(enc.question_ids[i]) + 2
                ids[r, : len(seq)] = torch.tensor(seq)
                types[r, q : len(seq)] = 1
                mask[r, : len(seq)] = 1
            out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
            answer, best = "", float("-inf")
            for r in range(len(mine)):
                sp, si = torch.max(out.start_logits[r], dim=0)
                ep, ei = torch.max(out.end_logits[r], dim=0)
                if si <= ei and (sp + ep) > best:
                    best = float(sp + ep)
                    answer = tokenizer.decode(ids[r][si : ei + 1])
            answer.replace(" ", "")  # the seed's last step; the text itself is not scored here
    seconds = time.perf_counter() - start
    n = len(enc.examples)
    return {"bench": "eval_naive", "windows_preset": "seed", "precision": "no", "questions": n, "windows": len(windows),
            "seconds": seconds, "questions_per_s": n / seconds, "windows_per_s": len(windows) / seconds,
            "tokens_per_s": float(window_lengths(enc, windows).sum()) / seconds,
            "padded_tokens_per_s": len(windows) * max_len / seconds, "peak_rss_mb": _peak_rss_mb()}


def _train_steps(c: DictConfig, enc, window, naive: bool) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from .engine.batching import PadCollator, TrainWindowDataset
    from .engine.setup import make_accelerator

    steps, batch_size = int(c.bench.train_steps), int(c.bench.train_batch_size)
    dataset = TrainWindowDataset(enc, window, 0)
    collate = PadCollator(enc.pad_id, fixed_length=window.max_total_len() if naive else None)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0), num_workers=0 if naive else int(c.num_workers))
    model = _model(c).train()
    if c.get("compile") and not naive:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    if not naive:
        accelerator = make_accelerator(c)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    it = iter(loader)
    real = padded = 0
    start = None
    for step in range(steps + 1):  # the first step warms up (allocations, compilation) and is not timed
        if step == 1:
            start = time.perf_counter()
            real = padded = 0
        batch = next(it)
        out = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                    attention_mask=batch["attention_mask"], start_positions=batch["start_positions"],
                    end_positions=batch["end_positions"])
        (accelerator.backward(out.loss) if not naive else out.loss.backward())
        optimizer.step()
        optimizer.zero_grad()
        real += int(batch["attention_mask"].sum())
        padded += batch["input_ids"].numel()
    seconds = time.perf_counter() - start
    return {"steps": steps, "batch_size": batch_size, "seconds": seconds, "windows_per_s": steps * batch_size / seconds,
            "tokens_per_s": real / seconds, "padded_tokens_per_s": padded / seconds}


def train_bench(cfg: dict, naive: bool) -> dict:
    c, _, window, enc, _ = _setup(cfg, "seed", "train", int(cfg["bench"]["train_questions"]))
    if naive:
        c = OmegaConf.merge(c, {"precision": {"mixed_precision": "no"}})
    result = _train_steps(c, enc, window, naive)
    return {"bench": "train_naive" if naive else "train", "windows_preset": "seed",
            "precision": "no" if naive else c.precision.mixed_precision, "compile": bool(c.get("compile")) and not naive,
            **result, "peak_rss_mb": _peak_rss_mb()}


def bf16_agreement(cfg: dict) -> dict:
    """Train a tiny model on the synthetic set (the training CLI, fp32), then compare its fp32 and
    bf16 dev predictions."""
    import subprocess

    import torch
    from transformers import AutoModelForQuestionAnswering

    from .core.datafiles import load_split
    from .core.features import window_config
    from .core.synthetic import write_synthetic_hw7, write_tiny_model_dir
    from .core.windowing import encode_examples, eval_windows
    from .engine.evaluation import PostprocessSettings, predict, score
    from .engine.modeling import keep_head_fp32, load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = write_synthetic_hw7(tmp / "data", n_train=600, n_dev=200)
        subprocess.run([sys.executable, "-m", "extractive_qa.train", "model=tiny",
                        f"model.name_or_path={write_tiny_model_dir(tmp / 'model')}", f"data.dir={data_dir}", "tracking=none",
                        "epochs=4", "lr=1e-3", "batch_size=32", "predict_test=false", "feature_cache=false",
                        f"paths.output_dir={tmp}", f"hydra.run.dir={tmp / 'run'}"],
                       check=True, capture_output=True, text=True)
        c = OmegaConf.create(cfg)
        model = keep_head_fp32(AutoModelForQuestionAnswering.from_pretrained(tmp / "run" / "best_model").eval())
        tokenizer = load_tokenizer(OmegaConf.create({"name_or_path": str(tmp / "run" / "best_model")}))
        window = window_config(c.bench.windows.default)
        enc = encode_examples(load_split(OmegaConf.create({"dev_file": str(data_dir / "hw7_dev.json")}), "dev").examples,
                              tokenizer, window)
        windows = eval_windows(enc, window)
        post = PostprocessSettings.from_cfg(c)
        fp32 = predict(model, enc, windows, post, 64)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = predict(model, enc, windows, post, 64)
        same = sum(a.text == b.text for a, b in zip(fp32, bf16, strict=True)) / len(fp32)
        return {"bench": "bf16_agreement", "questions": len(fp32), "same_prediction": same,
                "dev_em_fp32": score(fp32, enc)[0]["em"], "dev_em_bf16": score(bf16, enc)[0]["em"],
                "peak_rss_mb": _peak_rss_mb()}


def _child(fn, args, queue) -> None:
    try:
        queue.put(fn(*args))
    except BaseException as err:  # noqa: BLE001 - reported to the parent as a JSON line
        queue.put({"error": f"{type(err).__name__}: {err}"})


def in_fresh_process(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _emit(result: dict) -> dict:
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return result


@hydra.main(config_path=CONF_DIR, config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    plain = to_plain(cfg)
    parts = set(cfg.bench.parts)
    out: dict[str, dict] = {}
    if "eval" in parts:
        out["naive"] = _emit(in_fresh_process(eval_naive, plain))
        out["default"] = _emit(in_fresh_process(eval_ours, plain, "default"))
        out["seed"] = _emit(in_fresh_process(eval_ours, plain, "seed"))
    if "train" in parts:
        out["train_naive"] = _emit(in_fresh_process(train_bench, plain, True))
        out["train"] = _emit(in_fresh_process(train_bench, plain, False))
    if "bf16" in parts:
        out["bf16"] = _emit(in_fresh_process(bf16_agreement, plain))
    summary: dict = {"bench": "summary", "model": cfg.model.name_or_path, "init": cfg.model.init,
                     "precision": cfg.precision.mixed_precision}
    if "eval" in parts and "error" not in out["naive"]:
        base = out["naive"]["questions_per_s"]
        summary["eval_speedup_default_windows"] = out["default"].get("questions_per_s", 0) / base
        summary["eval_speedup_seed_windows"] = out["seed"].get("questions_per_s", 0) / base
        summary["oracle_em_default_windows"] = out["default"].get("oracle_em")
    if "train" in parts and "error" not in out["train_naive"]:
        summary["train_tokens_per_s_ratio"] = out["train"].get("tokens_per_s", 0) / out["train_naive"]["tokens_per_s"]
    if "bf16" in parts:
        summary["bf16_same_prediction"] = out["bf16"].get("same_prediction")
    _emit(summary)
    if any("error" in r for r in out.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
