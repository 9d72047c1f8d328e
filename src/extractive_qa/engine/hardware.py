"""What this machine can do, and the precision that follows from it (``precision=auto``).

The same preset runs on a Zen 4 with AVX-512 BF16 (bf16 autocast ~2x faster than fp32), a Zen 3
with AVX2 only (bf16 autocast emulated, several times SLOWER), an Apple laptop (MPS), an Ampere+ GPU
(bf16) and an older GPU (fp16 with a grad scaler). A preset that names one precision is wrong on
most of them, so ``auto`` decides here, from the hardware, and the run records the choice and why.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import asdict, dataclass, field

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "no")
# /proc/cpuinfo flags that decide CPU matmul speed in each precision (printed by make bench).
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_tile",
                         "bf16", "asimd", "sve")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still allow its native bf16 kernels.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "ALL",
                     "DEFAULT")


@dataclass(frozen=True)
class Hardware:
    """The facts the precision rule and ``make bench`` need."""

    device: str  # "cuda" | "mps" | "cpu"
    name: str  # GPU name, else the CPU model
    cpu_model: str
    cpu_flags: tuple[str, ...] = ()
    cpu_native_bf16: bool = False  # bf16 matmuls in hardware (AVX512_BF16, AMX, Arm BF16), not emulated
    torch_cpu_capability: str = ""
    threads: int = 1
    cuda_capability: tuple[int, int] | None = None
    gpu_memory_gb: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PrecisionChoice:
    mixed_precision: str  # Accelerate's value: "bf16" | "fp16" | "no"
    requested: str
    reason: str
    warning: str | None = None


def _cpuinfo() -> tuple[str, set[str]]:
    """CPU model name and feature flags from /proc/cpuinfo (Linux); the platform's name elsewhere."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and value.strip():
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _onednn_allows_bf16() -> bool:
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).strip().upper()
    return not cap or cap in _ONEDNN_BF16_ISAS


def cpu_has_native_bf16(flags: set[str], torch_capability: str) -> bool:
    """bf16 matrix instructions that PyTorch's CPU kernels actually use here.

    x86: AVX512_BF16 or AMX (torch's cpuinfo agrees with /proc/cpuinfo), unless ``ATEN_CPU_CAPABILITY``
    or ``ONEDNN_MAX_CPU_ISA`` caps the kernels below them. Arm: the BF16 extension (``bf16`` flag).
    """
    if not _onednn_allows_bf16():
        return False
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "bf16" in flags
    if not torch_capability.upper().startswith("AVX512"):
        return False  # ATEN_CPU_CAPABILITY capped below AVX-512 (or an older CPU)
    x86 = getattr(torch, "cpu", None)
    avx512_bf16 = bool(getattr(x86, "_is_avx512_bf16_supported", lambda: "avx512_bf16" in flags)())
    amx = bool(getattr(x86, "_is_amx_tile_supported", lambda: "amx_tile" in flags)())
    return avx512_bf16 or amx


def detect_hardware() -> Hardware:
    model, flags = _cpuinfo()
    capability = torch.backends.cpu.get_cpu_capability()
    common = {"cpu_model": model, "cpu_flags": tuple(f for f in CPU_FLAGS_OF_INTEREST if f in flags),
              "cpu_native_bf16": cpu_has_native_bf16(flags, capability), "torch_cpu_capability": capability,
              "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Hardware(device="cuda", name=props.name, cuda_capability=(props.major, props.minor),
                        gpu_memory_gb=round(props.total_memory / 2**30, 1), **common)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return Hardware(device="mps", name="Apple MPS", **common)
    return Hardware(device="cpu", name=model, **common)


def choose_precision(requested: str, hw: Hardware) -> PrecisionChoice:
    """The Accelerate ``mixed_precision`` for ``requested`` (``auto`` | ``bf16`` | ``fp16`` | ``no``) on ``hw``.

    ``auto``: CUDA -> bf16 on compute capability 8.0+ (Ampere and newer), else fp16 (Accelerate scales
    the gradients); CPU -> bf16 only with native bf16 matrix instructions, else fp32; MPS -> fp32 (its
    autocast has not been measured faster for this model). An explicit choice is kept; one the hardware
    runs slowly gets a warning, one it cannot run at all a :class:`ValueError`.
    """
    requested = "no" if requested in ("fp32", "none") else requested
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (or fp32), got {requested!r}")
    if hw.device == "cuda":
        ampere = hw.cuda_capability is not None and hw.cuda_capability >= (8, 0)
        cc = ".".join(map(str, hw.cuda_capability or ()))
        if requested == "auto":
            return (PrecisionChoice("bf16", requested, f"{hw.name} (compute capability {cc}) computes in bf16")
                    if ampere else PrecisionChoice("fp16", requested,
                                                   f"{hw.name} (compute capability {cc}) has no fast "
                                                   "bf16: fp16 with gradient scaling"))
        warning = None if ampere or requested != "bf16" else (
            f"precision=bf16 on {hw.name} (compute capability {cc} < 8.0) is emulated and slow; "
            "use precision=auto (fp16)")
        return PrecisionChoice(requested, requested, "explicit", warning)
    if requested == "fp16":
        raise ValueError(f"precision=fp16 needs a CUDA GPU (none found; this is {hw.device}); "
                         "use precision=auto, precision=bf16 or precision=fp32")
    if hw.device == "mps":
        return PrecisionChoice("no", requested, "Apple MPS: fp32") if requested == "auto" else \
            PrecisionChoice(requested, requested, "explicit")
    flags = ", ".join(f for f in hw.cpu_flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "bf16")) or "none"
    if requested == "auto":
        if hw.cpu_native_bf16:
            return PrecisionChoice("bf16", requested, f"CPU has native bf16 matrix instructions ({flags})")
        return PrecisionChoice("no", requested, f"CPU has no native bf16 (torch capability {hw.torch_cpu_capability}, "
                                                "no AVX512_BF16/AMX): bf16 would be emulated and slower than fp32")
    warning = None
    if requested == "bf16" and not hw.cpu_native_bf16:
        warning = ("precision=bf16 on a CPU without native bf16 instructions (no AVX512_BF16/AMX) is emulated: "
                   "expect it to run several times SLOWER than fp32. Use precision=auto or precision=fp32.")
    return PrecisionChoice(requested, requested, "explicit", warning)


# Evaluation batch budgets (padded tokens). CPU: measured with make bench on 2 cores (bert-base, 384-token
# windows): in bf16 1024-8192 tokens ran within 3% of each other and 16384 25% slower; in fp32 1024 ran
# fastest and 16384 26% slower (activations fall out of the caches). 2048 is near the best in both.
# GPUs want far larger batches; 32768 is a starting point that make bench can refine per card.
EVAL_BATCH_TOKENS = {"cpu": 2048, "mps": 8192, "cuda": 32768}
# In fp32 a CPU is fastest at 1024 (Zen 4: 1024 best; a Xeon with AVX-512 and AMX capped to fp32 kernels:
# 1024 ran 9% faster than 2048, 3.63 against 3.34 questions/s), while with bf16 matrix units 1024 is 25% slower
# than 2048 (8.7 against 11.4): the budget follows the precision.
CPU_FP32_EVAL_BATCH_TOKENS = 1024


def allow_tf32(enabled: bool) -> bool:
    """fp32 matmuls in TF32 on CUDA GPUs that have it (Ampere, compute capability 8.0, and newer): what stays
    fp32 under bf16/fp16 autocast, and every matmul with ``precision=fp32``, runs on tensor cores with a
    10-bit mantissa -- the trade PyTorch leaves off by default and HF/Lightning recipes turn on. ``tf32=false``
    keeps full fp32. Returns whether TF32 is on."""
    on = enabled and torch.cuda.is_available() and torch.cuda.get_device_capability(0) >= (8, 0)
    torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
    return on


def eval_batch_tokens(value, hw: Hardware | None = None, mixed_precision: str | None = None) -> int:
    """``eval_batch_tokens``: a number as given, ``auto`` (or null) the budget for this device (and, on a CPU,
    for the precision the model runs in: ``no`` is fp32)."""
    if value not in (None, "auto"):
        return int(value)
    device = (hw or detect_hardware()).device
    if device == "cpu" and mixed_precision == "no":
        return CPU_FP32_EVAL_BATCH_TOKENS
    return EVAL_BATCH_TOKENS[device]


_warned: set[str] = set()


def resolve_precision(requested: str, hw: Hardware | None = None) -> PrecisionChoice:
    """:func:`choose_precision` on this machine, logged; each warning is logged once per process."""
    choice = choose_precision(str(requested), hw or detect_hardware())
    label = {"no": "fp32"}.get(choice.mixed_precision, choice.mixed_precision)
    log.info("precision: %s (%s: %s)", label, choice.requested, choice.reason)
    if choice.warning and choice.warning not in _warned:
        _warned.add(choice.warning)
        log.warning(choice.warning)
    return choice
