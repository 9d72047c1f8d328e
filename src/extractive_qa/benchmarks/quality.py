"""Does bf16 answer as fp32 does? A tiny model trained on the synthetic set (the training CLI, fp32), its dev
predictions in fp32 and under bf16 autocast."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from .common import peak_rss_mb


def bf16_agreement(cfg: dict) -> dict:
    """Train a tiny model on the synthetic set (the training CLI, fp32), then compare its fp32 and
    bf16 dev predictions."""
    import subprocess

    import torch

    from ..core.datafiles import load_split
    from ..core.features import window_config
    from ..core.postprocess import PostprocessSettings
    from ..core.synthetic import write_synthetic_hw7, write_tiny_model_dir
    from ..core.windowing import encode_examples, eval_windows
    from ..engine.evaluation import predict, score
    from ..engine.modeling import load_qa_model, load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = write_synthetic_hw7(tmp / "data", n_train=600, n_dev=200)
        subprocess.run([sys.executable, "-m", "extractive_qa.train", "model=tiny",
                        f"model.name_or_path={write_tiny_model_dir(tmp / 'model')}", f"data.dir={data_dir}",
                        "tracking=none",
                        "epochs=4", "lr=1e-3", "batch_size=32", "predict_test=false", "feature_cache=false",
                        "precision=fp32", f"paths.output_dir={tmp}", f"hydra.run.dir={tmp / 'run'}"],
                       check=True, capture_output=True, text=True)
        c = OmegaConf.create(cfg)
        model = load_qa_model(tmp / "run" / "best_model").eval()
        tokenizer = load_tokenizer(OmegaConf.create({"name_or_path": str(tmp / "run" / "best_model")}))
        window = window_config(c.bench.windows.default)
        enc = encode_examples(load_split(OmegaConf.create({"dev_file": str(data_dir / "hw7_dev.json")}),
                                         "dev").examples,
                              tokenizer, window)
        windows = eval_windows(enc, window)
        post = PostprocessSettings.from_cfg(c)
        fp32 = predict(model, enc, windows, post, "auto")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = predict(model, enc, windows, post, "auto")
        same = sum(a.text == b.text for a, b in zip(fp32, bf16, strict=True)) / len(fp32)
        return {"bench": "bf16_agreement", "questions": len(fp32), "same_prediction": same,
                "dev_em_fp32": score(fp32, enc)[0]["em"], "dev_em_bf16": score(bf16, enc)[0]["em"],
                "peak_rss_mb": peak_rss_mb()}
