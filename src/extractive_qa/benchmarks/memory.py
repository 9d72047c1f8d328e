"""Memory in proportion to the work: the peak RSS of predicting many questions that share one paragraph."""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from .common import peak_rss_mb, set_threads


def prediction_memory(cfg: dict) -> dict:
    """Peak memory of predicting ``bench.memory_questions`` questions that share one 800-character paragraph
    (3 windows each): logits, post-processing with n-best lists, the submission and the n-best file -- with a
    tiny model, so what is measured is what the prediction path holds per window, not the weights."""
    from ..core.data import read_examples
    from ..core.features import window_config
    from ..core.outputs import nbest_json, write_json, write_submission
    from ..core.postprocess import PostprocessSettings
    from ..core.synthetic import _SYNTH_CHARS, write_tiny_model_dir
    from ..core.windowing import encode_examples, eval_windows
    from ..engine.evaluation import predict
    from ..engine.modeling import load_tokenizer

    set_threads(OmegaConf.create(cfg))
    c = OmegaConf.create(cfg)
    n = int(c.bench.memory_questions)
    rng = random.Random(0)
    letters = _SYNTH_CHARS[:200]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paragraph = "".join(rng.choice(letters) for _ in range(800))
        questions = [{"id": i, "paragraph_id": 0, "question_text": "".join(rng.choice(letters) for _ in range(12)),
                      "answer_text": None, "answer_start": None, "answer_end": None} for i in range(n)]
        (tmp / "test.json").write_text(json.dumps({"paragraphs": [paragraph], "questions": questions},
                                                  ensure_ascii=False), encoding="utf-8")
        model_dir = write_tiny_model_dir(tmp / "model")
        import torch
        from transformers import AutoConfig, AutoModelForQuestionAnswering

        model = AutoModelForQuestionAnswering.from_config(AutoConfig.from_pretrained(model_dir)).eval()
        tokenizer = load_tokenizer(OmegaConf.create({"name_or_path": str(model_dir)}))
        window = window_config(c.bench.windows.default)
        test = read_examples(str(tmp / "test.json"))
        enc = encode_examples(test.examples, tokenizer, window)
        windows = eval_windows(enc, window)
        before = peak_rss_mb()
        start = time.perf_counter()
        with torch.inference_mode():
            predictions = predict(model, enc, windows, PostprocessSettings.from_cfg(c), "auto")
        write_submission(tmp / "submission.csv", test.examples, predictions)
        write_json(tmp / "test_nbest.json", nbest_json(predictions))
        peak = peak_rss_mb()
        return {"bench": "prediction_memory", "questions": n, "windows": len(windows),
                "seconds": time.perf_counter() - start, "rss_before_mb": before, "peak_rss_mb": peak,
                "kb_per_window": (peak - before) * 1024 / max(len(windows), 1), "predictions": len(predictions)}
