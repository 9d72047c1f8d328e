"""precision=auto decides from the hardware: every branch, with the hardware mocked."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from extractive_qa.core.errors import SetupError
from extractive_qa.engine import hardware
from extractive_qa.engine.hardware import Hardware, choose_precision, cpu_has_native_bf16, eval_batch_tokens
from extractive_qa.engine.setup import resolve_run_precision


def cpu(native_bf16: bool, capability: str = "AVX512") -> Hardware:
    flags = ("avx2", "avx512f", "avx512_bf16") if native_bf16 else ("avx2", "fma")
    return Hardware(device="cpu", name="EPYC", cpu_model="EPYC", cpu_flags=flags, cpu_native_bf16=native_bf16,
                    torch_cpu_capability=capability)


def gpu(major: int, minor: int) -> Hardware:
    return Hardware(device="cuda", name=f"GPU sm{major}{minor}", cpu_model="x", cuda_capability=(major, minor))


MPS = Hardware(device="mps", name="Apple MPS", cpu_model="Apple M2")


@pytest.mark.parametrize(("hw", "expected"), [
    (gpu(8, 0), "bf16"),   # A100: Ampere has bf16 tensor cores
    (gpu(9, 0), "bf16"),   # H100
    (gpu(7, 5), "fp16"),   # T4: no bf16, fp16 with a grad scaler
    (gpu(6, 0), "fp16"),   # P100
    (cpu(True), "bf16"),   # Zen 4 / Sapphire Rapids: AVX512_BF16 or AMX
    (cpu(False, "AVX2"), "no"),  # Zen 3: bf16 would be emulated, ~6x slower
    (MPS, "no"),           # Apple: fp32 until measured otherwise
])
def test_auto_picks_from_the_hardware(hw, expected):
    choice = choose_precision("auto", hw)
    assert choice.mixed_precision == expected and choice.requested == "auto" and choice.reason and not choice.warning


def test_explicit_choices_are_kept_and_slow_ones_warn():
    assert choose_precision("fp32", cpu(False)).mixed_precision == "no"
    slow = choose_precision("bf16", cpu(False, "AVX2"))
    assert slow.mixed_precision == "bf16" and "SLOWER than fp32" in slow.warning
    assert choose_precision("bf16", cpu(True)).warning is None
    assert "emulated" in choose_precision("bf16", gpu(7, 5)).warning
    assert choose_precision("fp16", gpu(7, 5)).mixed_precision == "fp16"
    assert choose_precision("bf16", MPS).mixed_precision == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        choose_precision("fp16", cpu(True))
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("int8", cpu(True))


def test_native_bf16_detection_honours_kernel_caps(monkeypatch):
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(hardware.torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(hardware.torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert cpu_has_native_bf16({"avx512_bf16"}, "AVX512")
    assert not cpu_has_native_bf16({"avx512_bf16"}, "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cpu_has_native_bf16({"avx512_bf16"}, "AVX512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert cpu_has_native_bf16({"avx512_bf16"}, "AVX512")
    monkeypatch.setattr(hardware.torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert not cpu_has_native_bf16(set(), "AVX512")  # Zen 3 / Skylake: AVX-512 without BF16
    monkeypatch.setattr(hardware.platform, "machine", lambda: "aarch64")
    assert cpu_has_native_bf16({"asimd", "bf16"}, "DEFAULT") and not cpu_has_native_bf16({"asimd"}, "DEFAULT")


def test_the_run_records_the_choice_and_a_slow_choice_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(hardware, "detect_hardware", lambda: cpu(False, "AVX2"))
    hardware._warned.clear()
    cfg = OmegaConf.create({"precision": {"mixed_precision": "auto"}})
    OmegaConf.set_struct(cfg, True)
    assert resolve_run_precision(cfg) == "no"
    assert cfg.precision.requested == "auto" and "no native bf16" in cfg.precision.reason
    with caplog.at_level(logging.WARNING, logger="extractive_qa.engine.hardware"):
        for _ in range(3):
            resolve_run_precision(OmegaConf.create({"precision": {"mixed_precision": "bf16"}}))
    assert sum("SLOWER than fp32" in r.message for r in caplog.records) == 1
    with pytest.raises(SetupError, match="fp16 needs a CUDA GPU"):
        resolve_run_precision(OmegaConf.create({"precision": {"mixed_precision": "fp16"}}))


def test_eval_batch_budget_by_device():
    assert eval_batch_tokens(4096, cpu(False)) == 4096
    assert eval_batch_tokens("auto", cpu(False)) == 2048 and eval_batch_tokens(None, gpu(8, 0)) == 32768
    # a CPU in fp32 runs fastest at 1024, with bf16 matrix units at 2048 (make bench, README)
    assert eval_batch_tokens("auto", cpu(False), "no") == 1024 and eval_batch_tokens("auto", cpu(True), "bf16") == 2048
    assert eval_batch_tokens("auto", gpu(8, 0), "no") == 32768 and eval_batch_tokens(512, cpu(False), "no") == 512


def test_detect_hardware_here_agrees_with_the_machine():
    """What detect_hardware says about this machine, against what the machine says itself (/proc/cpuinfo,
    torch): a wrong flag, device or precision fails here, not only an exception."""
    import os
    from pathlib import Path

    import torch

    hw = hardware.detect_hardware()
    assert hw.device == ("cuda" if torch.cuda.is_available() else hw.device) and hw.threads == torch.get_num_threads()
    if Path("/proc/cpuinfo").is_file():
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags |= set(line.split(":", 1)[1].split())
        assert set(hw.cpu_flags) <= flags and set(hw.cpu_flags) == {f for f in hardware.CPU_FLAGS_OF_INTEREST
                                                                     if f in flags}
        capped = any(os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"))
        if not capped and hw.torch_cpu_capability.startswith("AVX512"):
            assert hw.cpu_native_bf16 == bool({"avx512_bf16", "amx_bf16"} & flags)
    choice = choose_precision("auto", hw).mixed_precision
    if hw.device == "cpu":
        assert choice == ("bf16" if hw.cpu_native_bf16 else "no")
