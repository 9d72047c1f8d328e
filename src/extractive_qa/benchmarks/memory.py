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


def write_large_train_file(folder: Path, megabytes: int, source: Path | None) -> Path:
    """An hw7 training file of about ``megabytes``: ``source`` (../shared's hw7_train.json, else a synthetic
    set) repeated with fresh ids and paragraph indexes, so questions per paragraph and text are real."""
    from ..core.synthetic import make_split

    base = json.loads(source.read_text(encoding="utf-8")) if source and source.is_file() else make_split(3000, 1, True)
    size = len(json.dumps(base, ensure_ascii=False).encode())
    copies = max(1, round(megabytes * 2**20 / size))
    out = {"paragraphs": [], "questions": []}
    for c in range(copies):
        offset = len(out["paragraphs"])
        out["paragraphs"].extend(base["paragraphs"])
        out["questions"].extend({**q, "id": f"{c}-{q['id']}", "paragraph_id": q["paragraph_id"] + offset}
                                for q in base["questions"])
    path = folder / "hw7_train.json"
    path.write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")
    return path


def large_train_file(folder: Path, cfg: dict) -> Path:
    """The ``bench.memory_train_mb`` training file, written by another process (building 200 MB of JSON here would
    set this process's peak before reading)."""
    import subprocess
    import sys

    source = Path(str(cfg["data"]["dir"])) / "hw7_train.json"
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from extractive_qa.benchmarks."
                    "memory import write_large_train_file as w; w(Path(sys.argv[1]), int(sys.argv[2]), "
                    "Path(sys.argv[3]))", str(folder), str(int(cfg["bench"]["memory_train_mb"])), str(source)],
                   check=True)
    return folder / "hw7_train.json"


def train_file_memory(cfg: dict, path: str, limit: int | None = None, cache_dir: str | None = None,
                      run: str = "") -> dict:
    """Peak RSS of what training does with its training file ``path`` before the first step -- read it, tokenize it
    (through the feature cache in ``cache_dir``, as ``make train`` does by default: ``run`` says whether this is the
    first run, which builds it, or a later one, which maps it), cut its training windows -- or with
    ``data.limit_train`` = ``limit``. ``data_growth_x``: the peak above the process before reading, over the file's
    size."""
    from ..core.datafiles import load_split
    from ..core.features import encode_cached, window_config
    from ..engine.batching import TrainWindowDataset
    from ..engine.modeling import load_tokenizer

    set_threads(cfg)
    c = OmegaConf.create(cfg)
    tokenizer = load_tokenizer(c.model)
    window = window_config(c.bench.windows.default)
    data_cfg = OmegaConf.merge(c.data, {"train_file": str(path), "limit_train": limit})
    before = _hwm_mb()
    start = time.perf_counter()
    examples = load_split(data_cfg, "train")
    read_peak = _hwm_mb()
    windows = len(TrainWindowDataset(encode_cached(examples, tokenizer, window, cache_dir, offsets=False), window, 0))
    peak = _hwm_mb()
    file_mb = Path(path).stat().st_size / 2**20
    cache_mb = (sum(f.stat().st_size for f in Path(cache_dir).rglob("*") if f.is_file()) / 2**20
                if cache_dir else None)
    return {"bench": "train_file_memory", "path": "default (feature cache on)" if cache_dir else "no cache",
            "run": run or None, "file_mb": round(file_mb, 1), "questions": len(examples), "limit_train": limit,
            "windows": windows, "seconds": round(time.perf_counter() - start, 1), "rss_before_mb": round(before, 1),
            "peak_after_reading_mb": round(read_peak, 1), "peak_rss_mb": round(peak, 1),
            "data_growth_x": round((peak - before) / file_mb, 2),
            "cache_mb": round(cache_mb, 1) if cache_mb is not None else None}


def _hwm_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from a forking parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return peak_rss_mb()
