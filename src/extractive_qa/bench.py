"""``python -m extractive_qa.bench`` (``make bench``): evaluation and training speed against the seed's
strategy, like for like, on this hardware, in the precision ``precision=auto`` picks for it.

Prints one JSON object per line (the measurements are :mod:`extractive_qa.benchmarks`, one module each):

* ``hardware`` -- CPU model and the flags that decide matmul speed, torch's CPU capability, threads,
  GPU name and memory, the precision chosen and why.
* ``gemm_peak`` -- BERT-shaped GEMMs in fp32 (on CUDA also TF32) and in the chosen precision: the peak
  against which model FLOPs utilisation (MFU) is computed in this same run; the summary names which.
* ``eval_naive`` and ``eval`` at the seed's windows -- the seed notebook's dev loop (fp32 on a CPU, fp16
  autocast on CUDA, as the notebook runs) and ours, **on the same questions and windows**: the like-for-like
  speed-up is their ratio of real tokens per second. ``eval`` at the default windows -- the same questions
  again: the tokens per question the default windows save, reported apart. ``eval_budget`` -- the default
  windows at several ``eval_batch_tokens`` budgets, to pick one for a machine.
* ``train_naive`` / ``train`` -- optimizer steps at the seed's settings: the seed's step (every window padded
  to the full length, a plain AdamW, fp16 with the gradient scaler on CUDA, fp32 on a CPU) and the recipe's
  own; real tokens per second.
* ``peer_train`` / ``peer_eval`` -- HF transformers' ``Trainer`` set up as its ``run_qa.py`` example sets it up
  (windows padded to full length, its default collator, SDPA), against ours on the same windows, precision and batch:
  training real tokens/s and evaluation questions/s (benchmarks/peer.py).
* ``loop`` -- ``make train``'s whole loop (tracking on, logging, bar, run record, checks, loader; evaluation apart)
  against a bare loop of forward, backward and optimizer steps over the same batches, with a tiny model whose step
  takes milliseconds, as bert-base's does on a GPU; where the loop's time went; distinct padded shapes per epoch
  (benchmarks/loop.py).
* ``optimizer_step`` -- one AdamW step over the model, fused against not; ``padding`` -- the share of padding
  in training batches at the default windows, grouped by length or not.
* ``profile``, ``bf16_agreement``, ``prediction_memory``, ``comparison`` -- where the time goes, bf16 against
  fp32 answers, prediction memory, the report's statistics on 100,000 questions.
* ``server`` (asked for: ``bench.parts=[server]``) -- MLflow's server with its GenAI job runner on and off, and
  its basic-auth app with its credential cache off and on (benchmarks/server.py).
* ``exit`` (asked for: ``bench.parts=[exit]``) -- seconds from a process's last line to its end with a training
  run's libraries loaded: CPython's shutdown against the entry points' ``collect_then_freeze``
  (benchmarks/shutdown.py).
* ``summary`` -- the like-for-like ratios first, then the rest.

Model FLOPs (the MFU numerator) count real, non-padding tokens: a window of T tokens costs
T * (2N + 4*L*d*T) in the forward pass (N = non-embedding parameters, L layers, width d: the matmuls
plus attention's two T x T products); a training step 3x that (forward + backward). Each measurement
runs in a fresh process, so its peak RSS is its own. Speed targets live here, never in timed tests.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .benchmarks.common import emit, in_fresh_process, set_threads
from .benchmarks.comparison import comparison_speed
from .benchmarks.evaluation import eval_naive, eval_ours
from .benchmarks.gemm import gemm_peak
from .benchmarks.loop import loop_bench
from .benchmarks.memory import large_train_file, prediction_memory, train_file_memory
from .benchmarks.peer import ours_train, trainer_eval, trainer_train
from .benchmarks.profiling import profile_bench
from .benchmarks.quality import bf16_agreement
from .benchmarks.search import pruning_savings
from .benchmarks.server import server_costs
from .benchmarks.shutdown import shutdown_costs
from .benchmarks.summary import summarize
from .benchmarks.training import optimizer_step_time, padding_share, train_bench
from .core.config import CONF_DIR, to_plain
from .core.errors import run_cli


def hardware_line(cfg: DictConfig) -> dict:
    """This machine and the precision chosen for it (recorded into ``cfg`` for every measurement)."""
    import torch

    from .engine.hardware import detect_hardware
    from .engine.setup import resolve_run_precision

    set_threads(cfg)
    resolve_run_precision(cfg)
    return {"bench": "hardware", **detect_hardware().to_dict(), "torch": torch.__version__,
            "precision": cfg.precision.mixed_precision, "precision_reason": cfg.precision.reason}


@hydra.main(config_path=CONF_DIR, config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    parts = set(cfg.bench.parts)
    out: dict = {"hardware": emit(hardware_line(cfg))}
    plain = to_plain(cfg)
    out["gemm"] = emit(in_fresh_process(gemm_peak, plain))
    if "eval" in parts:  # like for like (same questions, same windows) first, then the default windows
        out["naive"] = emit(in_fresh_process(eval_naive, plain))
        out["seed"] = emit(in_fresh_process(eval_ours, plain, "seed"))
        out["default"] = emit(in_fresh_process(eval_ours, plain, "default"))
    if "budgets" in parts:
        out["budgets"] = emit(in_fresh_process(eval_ours, plain, "default", list(cfg.bench.eval_budgets)))
    if "train" in parts:
        out["train_naive"] = emit(in_fresh_process(train_bench, plain, True))
        out["train"] = emit(in_fresh_process(train_bench, plain, False))
    if "peer" in parts:  # HF's Trainer as its run_qa.py example runs it, on the same windows (benchmarks/peer.py)
        out["peer_train_trainer"] = emit(in_fresh_process(trainer_train, plain))
        out["peer_train_ours"] = emit(in_fresh_process(ours_train, plain))
        out["peer_eval_trainer"] = emit(in_fresh_process(trainer_eval, plain))
        ours = in_fresh_process(eval_ours, plain, "default", None, int(cfg.bench.peer_eval_questions))
        out["peer_eval_ours"] = emit({**ours, "bench": "peer_eval", "side": "ours"} if "error" not in ours else ours)
    if "loop" in parts:  # make train's loop against a bare one, same batches (tiny model: the per-step overhead)
        out["loop"] = emit(in_fresh_process(loop_bench, plain))
    if "optimizer" in parts:
        out["optimizer"] = emit(in_fresh_process(optimizer_step_time, plain))
    if "padding" in parts:
        out["padding"] = emit(in_fresh_process(padding_share, plain))
    if "bf16" in parts:
        out["bf16"] = emit(in_fresh_process(bf16_agreement, plain))
    if "profile" in parts:
        out["profile"] = emit(in_fresh_process(profile_bench, plain))
    if "memory" in parts:
        out["memory"] = emit(in_fresh_process(prediction_memory, plain))
        with tempfile.TemporaryDirectory() as tmp:  # one file, one cache: the first run builds it, a later one maps it
            path = str(large_train_file(Path(tmp), plain))
            out["train_memory"] = emit(in_fresh_process(train_file_memory, plain, path, None, f"{tmp}/cache", "first"))
            out["train_memory_later"] = emit(in_fresh_process(train_file_memory, plain, path, None, f"{tmp}/cache",
                                                              "later"))
            out["train_memory_limited"] = emit(in_fresh_process(train_file_memory, plain, path, 40))
    if "pruning" in parts:  # not in the default parts: a few minutes of searching
        out["pruning"] = emit(in_fresh_process(pruning_savings, plain))
    if "server" in parts:  # not in the default parts: MLflow's server as `make server` starts it and as MLflow does
        out["server"] = emit(in_fresh_process(server_costs, plain))
    if "exit" in parts:  # not in the default parts: what a process's end costs with and without core/shutdown.py
        out["exit"] = emit(in_fresh_process(shutdown_costs, plain))
    if "compare" in parts:
        out["compare"] = emit(in_fresh_process(comparison_speed, plain))
    emit(summarize(cfg, out))
    if any("error" in r for r in out.values() if isinstance(r, dict)):
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)  # one-line errors, secrets kept out, a prompt end (core/errors.py)
