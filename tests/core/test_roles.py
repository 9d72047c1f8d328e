"""The role table: every key of every composed training config has a role, and what is derived from it
(resume identity, params, sweep identity) follows the roles."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from extractive_qa.core.config import CONF_DIR, flatten
from extractive_qa.core.roles import PLUMBING, SETTING, TRAJECTORY, known_role, role_of, role_of_override

GROUPS = ["model", "data", "window", "optimizer", "scheduler", "precision", "debug", "experiment", "tracking",
          "hparams_search", "launcher"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def _keys(*overrides: str) -> set[str]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return set(flatten(OmegaConf.to_container(cfg, resolve=False)))


def unknown_keys(*overrides: str) -> list[str]:
    return sorted(k for k in _keys(*overrides) if known_role(k) is None)


@pytest.mark.parametrize("override", [""] + [f"{g}={o}" for g in GROUPS for o in _options(g)])
def test_every_key_of_every_composed_training_config_has_a_role(override):
    if override.startswith(("hparams_search=", "launcher=")):
        pytest.importorskip("hydra_plugins")
    assert not unknown_keys(*([override] if override else [])), (
        "give these keys a role in src/extractive_qa/core/roles.py (resume identity, param, sweep)")


def test_a_new_key_fails_the_check_and_counts_as_trajectory_meanwhile():
    assert unknown_keys("+new_knob=3") == ["new_knob"]  # the test above would fail, naming it
    assert role_of("new_knob") is TRAJECTORY  # ... and until then resume treats it as deciding the weights
    assert known_role("model.config_overrides.hidden_size") is TRAJECTORY  # a subtree entry covers new leaves


def test_what_is_derived_follows_the_roles(compose_train):
    from extractive_qa.engine.resume import run_identity
    from extractive_qa.tracking.params import safe_params
    from extractive_qa.tracking.sweep import describe_sweep

    def identity(*overrides: str) -> str:
        return run_identity(compose_train(*overrides), {"train": "t", "dev": "d"}, 1, None)["digest"]

    base = identity()
    assert identity("window.doc_overlap=64") != base and identity("seed=7") != base  # trajectory
    assert identity("optimize_metric=f1") == base and identity("logging_steps=7") == base  # free on resume
    assert identity("tracking=none") == base
    params = safe_params(compose_train())
    assert {"lr", "optimize_metric", "logging_steps", "window.doc_overlap"} <= set(params)
    assert not any(role_of(k) is PLUMBING for k in params) and "precision.reason" not in params
    swept = describe_sweep(["lr=1e-3,2e-3", "paths.output_dir=/x", "tracking.uri=y", "launcher=joblib", "resume=auto"])
    assert swept["overrides"] == ["lr=1e-3,2e-3"] and swept["swept_keys"] == ["lr"]
    assert role_of_override("model=tiny") is TRAJECTORY and role_of_override("optimize_metric=f1") is SETTING
    assert not role_of_override("+hydra.job.env_set.X=1").sweep and not role_of_override("tracking=none").sweep
