"""CUDA-only paths (marker ``gpu``; skipped without a GPU): ``make gpu-check`` runs them on a GPU machine.

Precision ``auto`` and each precision for one training step (fp16 with the gradient scaler), a resume across
precisions refused, TF32 and pinned, non-blocking batches on. The same paths on a CPU are tested elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers import read_metrics, run_module, run_with_faults

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check runs these)")]


def _tiny(synthetic, tmp: Path) -> list[str]:
    return [f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache", "model=tiny",
            f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}", "data.limit_train=64",
            "data.limit_dev=16", "data.limit_test=16", "epochs=1", "batch_size=8", "logging_steps=1",
            "tracking=none"]


def test_auto_precision_is_bf16_from_ampere_on_else_fp16():
    from extractive_qa.engine.hardware import choose_precision, detect_hardware

    hw = detect_hardware()
    expected = "bf16" if torch.cuda.get_device_capability(0) >= (8, 0) else "fp16"
    assert choose_precision("auto", hw).mixed_precision == expected


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16", "fp32"])
def test_one_training_step_in_each_precision(synthetic, tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    run_dir = tmp_path / "run"
    res = run_module("extractive_qa.train", *_tiny(synthetic, tmp_path), f"precision={precision}", "max_steps=2",
                     f"hydra.run.dir={run_dir}", check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "FINISHED"
    losses = [m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert losses and all(loss == loss and abs(loss) < 1e4 for loss in losses)
    resolved = OmegaConf.load(run_dir / "config_resolved.yaml")
    assert resolved.precision.mixed_precision in ("bf16", "fp16", "no")


def test_fp16_trains_with_the_gradient_scaler(synthetic):
    """fp16 through the Accelerator the recipe makes: a step whose gradients overflow is skipped (weights kept,
    the scale halved), and then the tiny model fits one batch (its loss falls by half): the scaler is there and
    is used, not only constructed."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    from extractive_qa.engine.setup import make_accelerator

    accelerator = make_accelerator(OmegaConf.create({"precision": {"mixed_precision": "fp16"}}))
    assert accelerator.mixed_precision == "fp16" and accelerator.scaler is not None
    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_config(AutoConfig.from_pretrained(synthetic["model"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    ids = torch.randint(5, 100, (8, 48), device=accelerator.device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "start_positions": torch.full((8,), 10, device=accelerator.device),
             "end_positions": torch.full((8,), 12, device=accelerator.device)}

    def step() -> float:
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        return float(loss)

    step()  # a first step makes the scaler's state
    accelerator.scaler.update(2.0**60)  # then a scale that overflows fp16 gradients
    before = [p.detach().clone() for p in model.parameters()]
    step()
    assert accelerator.scaler.get_scale() < 2.0**60  # the overflow was seen and the scale backed off
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # that step was skipped
    accelerator.scaler.update(2.0**10)
    losses = [step() for _ in range(30)]
    assert all(loss == loss for loss in losses) and losses[-1] < 0.5 * losses[0], losses


def test_a_resume_in_another_precision_is_refused(synthetic, tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    run_dir = tmp_path / "run"
    args = [*_tiny(synthetic, tmp_path), "checkpoint_steps=2", "max_steps=6"]
    killed = run_with_faults(["after:_save:2=SIGKILL"], *args, "precision=bf16", f"hydra.run.dir={run_dir}")
    assert killed.returncode != 0
    res = run_module("extractive_qa.train", *args, "precision=fp16", f"resume={run_dir}",
                     f"hydra.run.dir={tmp_path}/ignored", check=False)
    assert res.returncode == 2 and "precision" in res.stderr and "Traceback" not in res.stderr


def test_tf32_and_pinned_non_blocking_batches_on_a_gpu(synthetic):
    from extractive_qa.engine.batching import PadCollator
    from extractive_qa.engine.setup import make_accelerator

    accelerator = make_accelerator(OmegaConf.create({"precision": {"mixed_precision": "auto"}}))
    ampere = torch.cuda.get_device_capability(0) >= (8, 0)
    assert (torch.backends.cuda.matmul.fp32_precision == "tf32") == ampere
    assert accelerator.dataloader_config.non_blocking
    loader = torch.utils.data.DataLoader([{"input_ids": [1, 2, 3], "index": 0}] * 4, batch_size=2, pin_memory=True,
                                         collate_fn=PadCollator(0))
    assert next(iter(loader))["input_ids"].is_pinned()
    make_accelerator(OmegaConf.create({"precision": {"mixed_precision": "auto"}, "tf32": False}))
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
