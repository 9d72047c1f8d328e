"""``python -m extractive_qa.predict`` (``make predict``): predict a test file with a trained run.

Uses the run's own window and post-processing settings (from its ``config_resolved.yaml``) and the
same :func:`~extractive_qa.engine.evaluation.predict` code as training, writes ``ID,Answer`` with every test
id exactly once, and prints the CSV's path.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .core.config import CONF_DIR

log = logging.getLogger(__name__)


def newest_run(output_dir: Path) -> Path:
    runs = [p.parent for p in output_dir.glob("**/best_model/config.json") if (p.parent.parent / "config_resolved.yaml").is_file()]
    if not runs:
        raise FileNotFoundError(f"no trained run with a best_model/ under {output_dir}; train one first "
                                "(make train) or pass run_dir=/path/to/run")
    return max(runs, key=lambda p: p.stat().st_mtime).parent


def predict_run(run_dir: Path, test_file: str | None = None, output: str | None = None,
                eval_batch_tokens: int | str | None = None, precision: str | None = None,
                strip_commas: bool | None = None) -> Path:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from .core.data import read_examples
    from .core.features import window_config
    from .core.outputs import write_submission
    from .core.windowing import encode_examples, eval_windows
    from .engine.evaluation import PostprocessSettings, predict
    from .engine.modeling import keep_head_fp32

    model_dir = run_dir / "best_model"
    if not (model_dir / "config.json").is_file() or not (run_dir / "config_resolved.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} holds no trained model (best_model/ and config_resolved.yaml): it was trained "
                                "with save_model=false and predict_test=false, or stopped before its first evaluation. "
                                "Fix: run_dir=<a run that kept its best_model/>")
    run_cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
    examples = read_examples(test_file or run_cfg.data.test_file)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = keep_head_fp32(AutoModelForQuestionAnswering.from_pretrained(model_dir))
    from .engine.setup import make_accelerator

    accelerator = make_accelerator(OmegaConf.create({"precision": {"mixed_precision": precision or "auto"}}))
    model = accelerator.prepare(model)
    window = window_config(run_cfg.window)
    enc = encode_examples(examples.examples, tokenizer, window)
    windows = eval_windows(enc, window)
    preds = predict(model, enc, windows, PostprocessSettings.from_cfg(run_cfg),
                    eval_batch_tokens or run_cfg.get("eval_batch_tokens") or "auto", accelerator, "predict")
    out = Path(output) if output else run_dir / "submission.csv"
    if out.is_dir():
        out = out / "submission.csv"
    strip = run_cfg.csv_strip_commas if strip_commas is None else strip_commas
    return write_submission(out, examples.examples, preds, bool(strip))


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from .core.data import DataFormatError
    from .core.errors import SetupError

    try:
        run_dir = Path(cfg.run_dir).resolve() if cfg.run_dir else newest_run(Path(cfg.paths.output_dir))
        path = predict_run(run_dir, cfg.test_file, cfg.output, cfg.eval_batch_tokens, cfg.mixed_precision, cfg.csv_strip_commas)
    except (FileNotFoundError, DataFormatError, SetupError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except PermissionError as err:
        print(f"error: cannot write {err.filename}: {err.strerror}. Fix: output=/a/writable/path.csv", file=sys.stderr)
        sys.exit(2)
    print(path)


if __name__ == "__main__":
    main()
