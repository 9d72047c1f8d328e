"""The GEMM peak that model FLOPs utilisation (MFU) is measured against, in the same run: BERT-shaped matrices
((tokens x d) @ (d x 4d)), best of 5 timed trials of at least 0.3 s after a warm-up (a short, cold
measurement undersells the peak). Which peak an MFU uses is named with it: on a CUDA GPU with TF32 on (the
recipe's default, ``tf32=true``) an "fp32" run's matmuls are TF32, and its MFU is against the TF32 peak."""

from __future__ import annotations

import time

from omegaconf import OmegaConf

from .common import set_threads, sync


def _best_gflops(x, y, device, trials: int = 5, seconds: float = 0.3) -> float:
    rows, d, cols = x.shape[0], x.shape[1], y.shape[1]
    best = 0.0
    for trial in range(trials + 1):  # trial 0 warms up (thread pool, caches, clocks) and is not counted
        sync(device)
        start, repeats = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            x @ y
            repeats += 1
            if device.type == "cuda" and repeats % 50 == 0:
                sync(device)
        sync(device)
        if trial:
            best = max(best, 2 * rows * d * cols * repeats / (time.perf_counter() - start) / 1e9)
    return best


def gemm_peak(cfg: dict) -> dict:
    """``gflops_fp32`` (on CUDA: IEEE fp32, TF32 off), ``gflops_tf32`` (CUDA with ``tf32`` on) and
    ``gflops_<precision>`` for the chosen mixed precision."""
    import torch

    from ..engine.hardware import allow_tf32
    from ..engine.setup import make_accelerator

    set_threads(cfg)
    c = OmegaConf.create(cfg)
    accelerator = make_accelerator(c)
    device = accelerator.device
    rows, d = (16384, 1024) if device.type == "cuda" else (2048, 768)
    a = torch.randn(rows, d, device=device)
    b = torch.randn(d, 4 * d, device=device)
    result = {"bench": "gemm_peak", "device": device.type, "shape": [rows, d, 4 * d]}
    # `make gpu-check --quick` (the script tried on any machine) times one short trial: its numbers mean nothing.
    bench = c.get("bench") or {}
    timing = {"trials": int(bench.get("gemm_trials", 5)), "seconds": float(bench.get("gemm_trial_s", 0.3))}
    if device.type == "cuda":
        allow_tf32(False)
        result["gflops_fp32"] = _best_gflops(a, b, device, **timing)
        if allow_tf32(bool(c.get("tf32", True))):
            result["gflops_tf32"] = _best_gflops(a, b, device, **timing)
    else:
        result["gflops_fp32"] = _best_gflops(a, b, device, **timing)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)
    if dtype is not None:
        result[f"gflops_{accelerator.mixed_precision}"] = _best_gflops(a.to(dtype), b.to(dtype), device, **timing)
    return result


def peak_name(peaks: dict, precision: str) -> str:
    """Which peak a run in ``precision`` ("no", "bf16", "fp16") is measured against: its own, and for fp32 the
    TF32 peak when this run measured one (TF32 on: that is what its matmuls ran in)."""
    if precision != "no":
        return precision
    return "tf32" if "gflops_tf32" in peaks else "fp32"


def peak_for(peaks: dict, precision: str) -> float | None:
    return peaks.get(f"gflops_{peak_name(peaks, precision)}")
