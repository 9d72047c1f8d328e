"""``python -m extractive_qa.report [overrides]``: the data report of one split (default dev) as JSON.

Composed from the training config (same data / model / window groups and experiment presets), so it
shows exactly what a training run with those overrides would see; see :mod:`extractive_qa.core.analysis`.
"""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig

from .core.analysis import data_report
from .core.config import CONF_DIR
from .core.errors import SetupError, run_cli
from .core.features import window_config
from .core.postprocess import PostprocessSettings
from .core.windowing import encode_examples, eval_windows
from .engine.setup import load_data_and_tokenizer


@hydra.main(config_path=CONF_DIR, config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        splits, tokenizer, _ = load_data_and_tokenizer(cfg, (cfg.split,))
    except SetupError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    examples = splits[cfg.split]
    window = window_config(cfg.window)
    enc = encode_examples(examples.examples, tokenizer, window)
    windows = eval_windows(enc, window)
    report = data_report(examples, enc, windows, window, tokenizer.unk_token_id, PostprocessSettings.from_cfg(cfg))
    print(json.dumps(report, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    run_cli(main)  # one-line errors, secrets kept out, a prompt end (core/errors.py)
