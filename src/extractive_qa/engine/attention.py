"""Which attention kernel a model runs, by device and phase (``attention: auto``), chosen from measurements.

transformers picks PyTorch's ``scaled_dot_product_attention`` (SDPA) wherever it can. On a CPU that is the
right kernel for evaluation and the wrong one for training:

* evaluation (no dropout): SDPA runs a fused flash-attention kernel. bert-base, a batch of 5 x 384 tokens,
  2 cores: 387 ms with SDPA vs 907 ms eager in bf16 (AMX Xeon), 1225 vs 1651 ms in fp32 (AVX-512, bf16
  capped off);
* training (attention dropout): the fused CPU kernel has no dropout, so SDPA falls back to its reference
  path, whose "safe softmax" scans every T x T score matrix for fully masked rows (``isneginf``, ``all``,
  ``where``: ~70 ms per step). Eager attention does not: one bert-base step of 8 x 213 tokens takes 1696 ms
  eager vs 1996 ms SDPA in bf16, 3703 vs 3859 ms in fp32.

On CUDA, SDPA's fused kernels (flash / memory-efficient) handle dropout and win in both phases. Measured by
``make bench`` (``bench.parts=[profile]`` shows the attention share); ``attention: sdpa`` or ``eager`` fixes
one kernel everywhere.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

KERNELS = ("auto", "sdpa", "eager")


def attention_kernel(setting: str, device_type: str, training: bool) -> str:
    """The kernel for ``setting`` (``auto`` | ``sdpa`` | ``eager``) on ``device_type`` in this phase."""
    if setting not in KERNELS:
        raise ValueError(f"attention must be one of {', '.join(KERNELS)}, got {setting!r}")
    if setting != "auto":
        return setting
    return "eager" if device_type == "cpu" and training else "sdpa"


def use_attention(model, kernel: str) -> None:
    """Switch ``model`` (unwrapped) to ``kernel`` when it runs another one. Models whose code has no SDPA path keep
    theirs (said once): the kernel is a speed choice, never a reason to stop."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", kernel) == kernel:
        return
    try:
        model.set_attn_implementation(kernel)
    except (ValueError, ImportError, AttributeError) as err:
        if not getattr(model, "_attention_warned", False):
            log.warning("attention: keeping %s (%s cannot run %s: %s)", config._attn_implementation,
                        type(model).__name__, kernel, err)
            model._attention_warned = True
