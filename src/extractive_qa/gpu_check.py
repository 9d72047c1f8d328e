"""``make gpu-check``: what this project needs to know about a CUDA GPU, in one call of at most 8 minutes.

1. ``tests`` -- the tests marked ``gpu`` (``pytest -m gpu``): precision ``auto``, bf16, and fp16 with the
   gradient scaler, one training step each; a resume across precisions refused; TF32 and pinned memory on.
2. ``bench`` -- ``make bench`` on the GPU in bf16 and in fp16, each line as the bench prints it: evaluation; training
   at the seed's settings against the seed's own loop; HF's ``Trainer`` as its ``run_qa.py`` runs it against ours
   (``peer``); ``make train``'s whole loop against a bare one (``loop``); the profile of a step. On a GPU every
   training side is timed over 200 steps after a warm-up of 20 (6 steps were warm-up, not steady state).
3. ``compile`` -- the recipe's step with and without ``torch.compile``: the compile time and the steady step, and
   what that makes of an hw7 epoch (3,000 steps of 16 windows): whether compiling pays for itself.
4. ``throughput`` -- bert-base trained for 300 optimizer steps on 384-token windows with the recipe's own
   optimizer step: tokens/s, sequences/s, model FLOPs utilisation against the GPU's dense bf16 peak (the
   datasheet's, and the GEMM peak measured in the same call) and peak memory. Published references for
   bert-base at 384 tokens: ~443 seq/s fp16 on an A100, ~850 on an H100 (lambdal deeplearning-benchmark).

Everything is written as one JSON file (``outputs/gpu_check/<time>.json``, its path printed last). Without
../shared the data are the synthetic hw7 set and the model a bert-base-shaped one with the synthetic
vocabulary: the speed of the encoder is the same. ``--quick`` shrinks every part so the script itself can be
tested on a CPU (``tests/test_bench.py``); its numbers then mean nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from .core.config import CONF_DIR, to_plain
from .core.errors import run_cli

ROOT = Path(__file__).resolve().parents[2]

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets, matched against
# torch.cuda.get_device_name() in this order (the first match wins). fp16 where the GPU has no bf16.
DENSE_PEAK_TFLOPS = (
    ("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0),
    ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 3090", 35.6), ("V100", 125.0), ("T4", 65.0),
)


def dense_peak_tflops(device_name: str) -> float | None:
    """The datasheet's dense bf16 (fp16 before Ampere) peak of the GPU named ``device_name``, if known."""
    return next((peak for key, peak in DENSE_PEAK_TFLOPS if key in device_name), None)


def run_gpu_tests(quick: bool) -> dict:
    """``pytest -m gpu`` over ``tests/test_gpu.py``: counts from its JUnit report, and whether they say the GPU
    works (``ok``): every test passed, and on a CUDA machine at least one ran -- all skipped on a GPU, or none
    collected (pytest's exit 5), is a failure, never a pass."""
    import torch

    report = Path(f"/tmp/gpu_check_{time.time_ns()}.xml")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                          f"--junitxml={report}", "tests/test_gpu.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120 if quick else 240)
    result = {"returncode": out.returncode, "seconds": round(time.perf_counter() - start, 1),
              "tail": out.stdout[-1500:]}
    if report.is_file():
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        result.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        report.unlink()
    result.update(tests_verdict(out.returncode, result, torch.cuda.is_available(), quick))
    return result


def tests_verdict(returncode: int, counts: dict, cuda: bool, quick: bool) -> dict:
    """``{"ran", "verdict", "ok"}`` of a ``pytest -m gpu`` run: pytest's exit 5 (no tests collected) and a GPU
    machine where every GPU test skipped are failures; on a machine without CUDA the tests did not run, which
    only ``--quick`` (the script tried on a CPU) accepts."""
    ran = counts.get("tests", 0) - counts.get("skipped", 0)
    if returncode != 0 or not counts.get("tests"):
        verdict = f"failed (pytest exit {returncode}{': no tests collected' if returncode == 5 else ''})"
    elif cuda and ran == 0:
        verdict = "failed: every GPU test skipped on a CUDA machine"
    elif not cuda:
        verdict = f"not run: no CUDA GPU ({counts.get('skipped', 0)} skipped)"
    else:
        verdict = f"passed: {ran} GPU tests"
    return {"ran": ran, "verdict": verdict, "ok": verdict.startswith("passed") or (verdict.startswith("not run")
                                                                                    and quick)}


# On a GPU a step takes milliseconds: every training side is timed long enough to be past warm-up.
GPU_STEPS = ["bench.train_steps=200", "bench.train_questions=1500", "bench.peer_steps=200", "bench.peer_warmup=20",
             "bench.loop_questions=3000", "bench.loop_rounds=2", "bench.peer_eval_questions=1000"]
QUICK_STEPS = ["bench.peer_steps=1", "bench.peer_warmup=1", "bench.loop_questions=40", "bench.loop_rounds=1",
               "bench.peer_eval_questions=8"]


def run_bench(precision: str, overrides: list[str], quick: bool) -> list[dict]:
    """``make bench`` in ``precision`` on this machine's device: the JSON lines it prints."""
    parts = "[eval,train,peer,loop,profile]" if quick else "[eval,budgets,train,peer,loop,profile]"
    out = subprocess.run([sys.executable, "-m", "extractive_qa.bench", f"precision={precision}",
                          f"bench.parts={parts}", *(QUICK_STEPS if quick else GPU_STEPS), *overrides], cwd=ROOT,
                         capture_output=True, text=True, timeout=420)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"')]
    if out.returncode != 0:
        rows.append({"bench": "error", "returncode": out.returncode, "stderr": out.stderr[-2000:]})
    return rows


def throughput(overrides: list[str], steps: int, batch_size: int, seq_len: int, warmup: int | None = None,
               with_peak: bool = True) -> dict:
    """The recipe's optimizer step on full ``seq_len``-token batches of random ids (no padding), in bf16."""
    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir

    from .benchmarks.common import data_slice, forward_flops, sync
    from .benchmarks.gemm import gemm_peak
    from .benchmarks.training import recipe_trainer
    from .engine.setup import resolve_run_precision

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("bench", overrides=[*overrides, "precision=bf16", f"bench.train_batch_size={batch_size}"])
    resolve_run_precision(cfg)
    plain = to_plain(cfg)
    c, tokenizer, window, enc, _ = data_slice(plain, "default", "train", 64)
    recipe, step = recipe_trainer(c, enc, window, tokenizer)
    device = recipe.accelerator.device
    model = recipe.accelerator.unwrap_model(recipe.model)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)

    def batch() -> dict:
        # Ordinary tokens (a vocabulary's first ids are special), a question of ~1/6 of the window, then the
        # paragraph holding the answer.
        ids = torch.randint(min(1000, vocab // 2), vocab, (batch_size, seq_len), generator=generator)
        answer = torch.randint(seq_len // 5, seq_len - 8, (batch_size,), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "token_type_ids": (torch.arange(seq_len) >= seq_len // 6).long().expand(batch_size, -1).contiguous(),
                "start_positions": answer, "end_positions": answer + 3}

    full = {"full_rows": np.ones(batch_size, dtype=bool)}  # full 384-token windows: no mask (engine: model_inputs)
    batches = [{**{k: v.to(device, non_blocking=True) for k, v in batch().items()}, **full} for _ in range(8)]
    warmup = min(20, max(1, steps // 10)) if warmup is None else warmup
    first = time.perf_counter()
    for n in range(warmup):
        step(batches[n % len(batches)])
    sync(device)
    first_steps_s = time.perf_counter() - first
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for n in range(steps):
        step(batches[n % len(batches)])
    sync(device)
    seconds = time.perf_counter() - start
    lengths = np.full(steps * batch_size, seq_len)
    flops = 3 * forward_flops(model, lengths)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    datasheet = dense_peak_tflops(name) if device.type == "cuda" else None
    measured = gemm_peak(plain).get("gflops_bf16") if with_peak else None
    achieved = flops / seconds / 1e12
    return {"device": name, "precision": recipe.accelerator.mixed_precision, "steps": steps,
            "batch_size": batch_size, "seq_len": seq_len, "attention": model.config._attn_implementation,
            "seconds": round(seconds, 4), "first_steps_s": round(first_steps_s, 3),
            "tokens_per_s": round(steps * batch_size * seq_len / seconds),
            "sequences_per_s": round(steps * batch_size / seconds, 1), "model_tflops_per_s": round(achieved, 2),
            "dense_bf16_peak_tflops": datasheet, "mfu_vs_datasheet": round(achieved / datasheet, 4) if datasheet
            else None, "measured_gemm_peak_tflops": round(measured / 1e3, 2) if measured else None,
            "mfu_vs_measured_gemm": round(achieved * 1e3 / measured, 4) if measured else None,
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2) if device.type == "cuda" else None}


def compile_probe(overrides: list[str], steps: int, batch_size: int = 16, seq_len: int = 384,
                  epoch_steps: int = 3000, quick: bool = False) -> dict:
    """The recipe's step on full batches with and without ``torch.compile``: seconds to the end of the first step
    (compiling included) and per step after, and an hw7 epoch (``epoch_steps`` steps) estimated from both. ``quick``
    (a CPU rehearsal) leaves compiling out: inductor's C++ build alone takes minutes there."""
    result: dict = {"epoch_steps": epoch_steps}
    if quick:
        run = throughput(overrides, steps, batch_size, seq_len, warmup=1, with_peak=False)
        return {**result, "eager": {"first_step_s": run["first_steps_s"], "step_ms": 1000 * run["seconds"] / steps},
                "compiled": "not measured (--quick)"}
    for compiled in (False, True):
        run = throughput([*overrides, f"compile={str(compiled).lower()}"], steps, batch_size, seq_len, warmup=1,
                         with_peak=False)
        per_step = run["seconds"] / steps
        result["compiled" if compiled else "eager"] = {
            "first_step_s": run["first_steps_s"], "step_ms": round(1000 * per_step, 2),
            "epoch_estimate_s": round(run["first_steps_s"] + (epoch_steps - 1) * per_step, 1)}
    eager, compiled = result["eager"]["epoch_estimate_s"], result["compiled"]["epoch_estimate_s"]
    result["compile_pays_off_over_an_epoch"] = compiled < eager
    return result


def inputs(workdir: Path, quick: bool) -> list[str]:
    """Config overrides for the model and the data: ../shared's when present, else synthetic ones."""
    shared = ROOT.parent / "shared"
    if (shared / "models" / "bert-base-chinese-offline" / "config.json").is_file() and not quick:
        return []  # the bench's defaults: bert-base-chinese's architecture, the hw7-drcd data
    from transformers import BertConfig

    from .core.synthetic import write_synthetic_hw7, write_tiny_model_dir

    data = write_synthetic_hw7(workdir / "data", n_train=400, n_dev=60)
    model = write_tiny_model_dir(workdir / "model")
    if not quick:  # bert-base's shape over the synthetic vocabulary
        vocab = BertConfig.from_pretrained(model).vocab_size
        BertConfig(vocab_size=vocab, max_position_embeddings=512).save_pretrained(model)
    args = [f"model.name_or_path={model}", f"data.dir={data}", "model.init=random"]
    if quick:
        # One process for every measurement: its peak memory means nothing here anyway.
        args += ["bench.isolate=false", "bench.eval_questions=2", "bench.repeats=1", "bench.train_questions=40",
                 "bench.train_steps=1", "bench.budget_questions=4", "eval_batch_tokens=512", "bench.gemm_trials=1",
                 "bench.gemm_trial_s=0.02"]
    return args


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m extractive_qa.gpu_check`` (also read by the docs' test of every command)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="timed optimizer steps of the throughput run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=384)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "gpu_check")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, on any device: tests the script itself")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.quick:
        print("gpu-check: no CUDA GPU here (torch.cuda.is_available() is False). Run it on the GPU machine; "
              "`--quick` tries the script on this one.", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as workdir:
        return _check(args, inputs(Path(workdir), args.quick))


def _check(args: argparse.Namespace, overrides: list[str]) -> int:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    result: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__, "device": device,
                    "quick": args.quick}
    begin = time.perf_counter()
    result["tests"] = run_gpu_tests(args.quick)
    print(f"gpu-check: tests {result['tests']}", file=sys.stderr, flush=True)
    for precision in ("bf16", "fp16") if torch.cuda.is_available() else ("auto",):
        result[f"bench_{precision}"] = run_bench(precision, overrides, args.quick)
        print(f"gpu-check: bench {precision} done ({time.perf_counter() - begin:.0f} s)", file=sys.stderr, flush=True)
    # The throughput sets its own batch: of the bench's settings only the GEMM peak's timing goes with it (--quick's
    # one short trial: the full 2 x 6 x 0.3 s measurement cost 3.9 s of a 16 s quick check on a CPU).
    model_overrides = [o for o in overrides if not o.startswith("bench.") or o.startswith("bench.gemm_")]
    result["compile"] = compile_probe(model_overrides, 2 if args.quick else 100, 2 if args.quick else 16,
                                      64 if args.quick else args.seq_len, quick=args.quick)
    print(f"gpu-check: compile {result['compile']}", file=sys.stderr, flush=True)
    result["throughput"] = throughput(model_overrides, args.steps, args.batch_size, args.seq_len)
    result["seconds"] = round(time.perf_counter() - begin, 1)
    path = args.out / f"gpu_check_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(json.dumps(result["throughput"]))
    print(path)
    failed_rows = [r for k, v in result.items() if k.startswith("bench_") for r in v
                   if r.get("bench") == "error" or "error" in r]
    return 0 if result["tests"]["ok"] and not failed_rows else 1


if __name__ == "__main__":
    run_cli(main)  # one-line errors, secrets kept out, a prompt end (core/errors.py)
