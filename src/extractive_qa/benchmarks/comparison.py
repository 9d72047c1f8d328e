"""The report's statistics at scale: two configurations compared on 100,000 questions."""

from __future__ import annotations

import time

import numpy as np
from omegaconf import OmegaConf

from .common import peak_rss_mb


def comparison_speed(cfg: dict) -> dict:
    """Time and peak memory of comparing two configurations of ``bench.compare_seeds`` seeds each over
    ``bench.compare_questions`` questions (the statistics of a report: EM and F1, interval, p-value, power,
    seeds needed); issue 27's target: 100,000 questions in < 5 s and < 300 MB."""
    from ..core.significance import Scores, against_best, seeds_needed

    c = OmegaConf.create(cfg)
    n, k = int(c.bench.compare_questions), int(c.bench.compare_seeds)
    rng = np.random.default_rng(0)
    p = rng.beta(0.8, 0.2, n)
    before = peak_rss_mb()
    start = time.perf_counter()
    for metric in ("em", "f1"):
        draw = (lambda: (rng.random((k, n)) < p).astype(np.float64)) if metric == "em" else (
            lambda: np.clip(p + rng.normal(0, 0.2, (k, n)), 0, 1))
        configs = {"A": Scores(draw()), "B": Scores(draw())}
        diff = against_best(configs, "A")["B"]
        seeds_needed(diff)
        _ = diff.detectable
    return {"bench": "comparison", "questions": n, "seeds": k, "seconds": time.perf_counter() - start,
            "rss_before_mb": before, "peak_rss_mb": peak_rss_mb()}
