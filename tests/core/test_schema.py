"""The config schema (core/schema.py) against the configs themselves: every preset passes, every key the
groups define is typed, and the enums mirror the code that reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from extractive_qa.core.config import CONF_DIR, flatten
from extractive_qa.core.schema import (
    ATTENTION_KERNELS,
    MIXED_PRECISIONS,
    ConfigError,
    PredictConfig,
    TrainConfig,
    check_predict_config,
    check_train_config,
)

CONF = Path(CONF_DIR)
TYPED_GROUPS = ("model", "data", "window", "optimizer", "scheduler", "precision")


def _presets() -> list[str]:
    overrides = [f"experiment={p.stem}" for p in sorted((CONF / "experiment").glob("*.yaml"))]
    for group in ("model", "data", "window", "scheduler", "precision", "debug"):
        overrides += [f"{group}={p.stem}" for p in sorted((CONF / group).glob("*.yaml"))]
    return overrides


def _compose(*overrides: str, name: str = "train") -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose(name, overrides=list(overrides)), resolve=True)


@pytest.mark.parametrize("override", _presets())
def test_every_preset_passes_the_schema(override):
    check_train_config(_compose(override))


def test_the_predict_defaults_pass_the_schema():
    check_predict_config(_compose(name="predict"))


def _typed(schema, path: list[str]) -> bool:
    model = schema
    for part in path:
        fields = getattr(model, "model_fields", {})
        field = next((f for n, f in fields.items() if part in (n, f.alias)), None)
        if field is None:
            return False
        model = next((a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                      if isinstance(a, type) and hasattr(a, "model_fields")), None)
        if model is None:
            return True  # a leaf (or a free dict such as model.config_overrides)
    return True


def test_every_key_of_the_training_config_has_a_type():
    cfg = _compose("experiment=hw7_strong")
    untyped = [key for key in flatten(cfg) if key.split(".")[0] not in ("paths", "tracking")
               and not _typed(TrainConfig, key.split("."))]
    assert untyped == [], f"keys without a type and range in core/schema.py: {untyped}"


def test_every_key_of_the_predict_config_has_a_type():
    cfg = _compose(name="predict")
    untyped = [key for key in flatten(cfg) if key.split(".")[0] not in ("paths", "tracking")
               and not _typed(PredictConfig, key.split("."))]
    assert untyped == []


def test_the_enums_mirror_the_code_that_reads_them():
    from extractive_qa.engine.attention import KERNELS
    from extractive_qa.engine.hardware import PRECISIONS

    assert ATTENTION_KERNELS == KERNELS
    assert set(PRECISIONS) <= set(MIXED_PRECISIONS)


def test_several_bad_keys_are_one_line_each_and_a_union_says_its_fix():
    cfg = _compose("epochs=0", "eval_batch_tokens=0", "optimizer.betas=[0.9,1.5]", "max_steps=null")
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    assert str(err.value).splitlines() == [
        "error: epochs=0: input should be greater than or equal to 1. Fix: epochs=2 (passes over the training "
        "data, at least 1)",
        "error: eval_batch_tokens=0: input should be greater than or equal to 1. Fix: eval_batch_tokens=auto (or "
        "padded tokens per evaluation batch, e.g. 8192)",
        "error: optimizer.betas[1]=1.5: input should be less than 1. Fix: optimizer.betas=[0.9,0.999] (each 0 or "
        "more, below 1)"]


def test_warmup_ratio_zero_is_a_setting_and_one_is_refused():
    check_train_config(_compose("warmup_ratio=0"))
    with pytest.raises(ConfigError, match=r"warmup_ratio=1: input should be less than 1"):
        check_train_config(_compose("warmup_ratio=1"))


@pytest.mark.parametrize("override", ["lr=inf", "lr=nan", "warmup_ratio=nan", "max_grad_norm=inf",
                                      "optimizer.weight_decay=inf", "optimizer.betas=[0.9,inf]",
                                      "data.archive_limits.max_ratio=inf"])
def test_a_number_that_is_not_finite_is_refused_before_anything_runs(override):
    """lr=inf passed the check and died at step 2 (issue 29): non-finite numbers are refused by name."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=r"input should be a finite number") as err:
        check_train_config(_compose(override if "archive" not in override else f"+{override}"))
    assert f"error: {key}" in str(err.value)  # the key is named, with the fix
