"""Every config group option and preset composes (Hydra compose API) and builds its components."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from extractive_qa.core.config import CONF_DIR
from extractive_qa.core.features import window_config
from extractive_qa.engine.setup import parameter_groups

GROUPS = ["model", "data", "window", "optimizer", "scheduler", "precision", "debug"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def _compose(overrides: list[str], name: str = "train"):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option):
    cfg = _compose([f"{group}={option}"])
    OmegaConf.resolve(cfg)
    window_config(cfg.window)
    assert Path(cfg.paths.output_dir).is_absolute() and Path(cfg.data.dev_file).is_absolute()


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_preset_composes(experiment):
    cfg = _compose([f"experiment={experiment}"])
    OmegaConf.resolve(cfg)
    assert cfg.experiment_name == experiment
    window_config(cfg.window)


def test_seed_notebook_preset_is_the_seed():
    cfg = _compose(["experiment=seed_notebook"])
    assert cfg.model.name_or_path == "bert-base-chinese" and cfg.model.init == "pretrained"
    assert (cfg.window.max_question_len, cfg.window.max_paragraph_len, cfg.window.doc_stride) == (60, 150, 15)
    assert cfg.window.train_strategy == "random_offset" and not cfg.window.stop_at_paragraph_end
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.warmup_ratio) == (1, 8, 1e-5, 0.2)
    assert cfg.precision.mixed_precision == "fp16" and cfg.scheduler.name == "linear"


def test_random_init_presets_take_the_offline_dir_from_config_or_env(monkeypatch, tmp_path):
    cfg = _compose(["model=tiny"])
    assert cfg.model.init == "random" and cfg.model.name_or_path == cfg.paths.offline_model_dir
    monkeypatch.setenv("EXTRACTIVE_QA_OFFLINE_MODEL", str(tmp_path))
    assert _compose(["model=bert-base-random"]).model.name_or_path == str(tmp_path)
    assert _compose(["model=tiny", f"model.name_or_path={tmp_path}/m"]).model.name_or_path == f"{tmp_path}/m"
    assert all(_compose([f"model={m}"]).model.trust_remote_code is False for m in _options("model"))


def test_data_paths_follow_data_dir_or_explicit_files(tmp_path):
    cfg = _compose([f"data.dir={tmp_path}"])
    assert cfg.data.train_file == f"{tmp_path}/hw7_train.json"
    cfg = _compose([f"data.dev_file={tmp_path}/x.json"])
    assert cfg.data.dev_file == f"{tmp_path}/x.json"


def test_optimizer_and_scheduler_from_config():
    cfg = _compose(["lr=1e-3", "scheduler=cosine"])
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = parameter_groups(model, 0.01)
    assert [len(g["params"]) for g in groups] == [1, 3]  # only the Linear weight decays
    opt = instantiate(cfg.optimizer)(groups)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 1e-3
    sched = instantiate(cfg.scheduler)(optimizer=opt, num_warmup_steps=10, num_training_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 10
    assert lrs[-1] < 1e-4
