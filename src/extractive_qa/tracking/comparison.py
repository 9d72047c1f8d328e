"""Configurations compared question by question: the evidence behind a report's "is the difference real?".

A **configuration** is the runs that differ only in their seed (a sweep's jobs grouped by their
other swept values, or the runs named on each side of ``python -m extractive_qa.compare A B``). Each
run's ``dev_predictions.jsonl`` holds its per-question scores at its best checkpoint; a
configuration's per-question score is their mean over its seeds. :func:`compare` sets every
configuration against a reference (the best one by ``optimize_metric``) with the statistics of
:mod:`extractive_qa.core.significance`: paired bootstrap intervals and randomization p-values of ΔEM
and ΔF1, the flips, EM by bucket, and how many seeds the difference would need.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.significance import (
    Difference,
    answer_length_bucket,
    em_by_bucket,
    flips,
    paired_difference,
    position_bucket,
    question_word,
    seeds_needed,
    verdict,
    windows_bucket,
)
from .base import RunRow, TrackingBackend
from .summary import best_metrics

log = logging.getLogger(__name__)

PREDICTIONS = "dev_predictions.jsonl"
SCORES = ("em", "f1")  # what the differences are computed for
EXAMPLES = 3  # flip examples shown per direction


@dataclass
class Configuration:
    label: str
    runs: list[RunRow]
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> per-question mean over seeds
    answers: list[str] = field(default_factory=list)  # its best run's predictions, per question

    def mean(self, metric: str) -> float:
        return float(self.scores[metric].mean()) if len(self.scores.get(metric, ())) else math.nan

    def seed_scores(self, metric: str) -> list[float]:
        """Each run's best dev score."""
        return [best_metrics(r)[metric] for r in self.runs if metric in best_metrics(r)]


@dataclass
class Questions:
    """The dev questions every compared run was scored on, in the first run's order."""

    ids: list[str]
    questions: list[str]
    references: list[list[str]]


@dataclass
class Comparison:
    reference: str  # the configuration the others are set against
    metric: str  # optimize_metric: what "best" means
    questions: int
    differences: list[dict]  # one row per other configuration
    flip_examples: list[dict]
    buckets: list[dict]
    lines: list[str]  # the verdicts, in words


def _read_predictions(path: Path) -> dict[str, dict]:
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[str(row["id"])] = row
    return rows


def _key(run: RunRow) -> str:
    return run.run_id or run.run_dir or run.name


def load(backend: TrackingBackend, configurations: list[Configuration]) -> Questions:
    """Read every run's per-question scores; fill each configuration's ``scores`` (mean over its seeds) and
    ``answers`` (its best run's), over the questions all runs were scored on."""
    per_run: dict[str, dict[str, dict]] = {}
    for config in configurations:
        for run in config.runs:
            path = backend.run_file(run, PREDICTIONS)
            if path is None:
                raise FileNotFoundError(f"run {run.name} has no {PREDICTIONS} (here or in the store): it cannot be "
                                        "compared question by question")
            per_run[_key(run)] = _read_predictions(path)
    first = next(iter(per_run.values()))
    ids = [i for i in first if all(i in rows for rows in per_run.values())]
    dropped = max(len(rows) for rows in per_run.values()) - len(ids)
    if dropped:
        log.warning("the runs were scored on different dev questions: comparing the %d they share (%d left out)",
                    len(ids), dropped)
    for config in configurations:
        runs = [per_run[_key(r)] for r in config.runs]
        for metric in SCORES:
            config.scores[metric] = np.mean([[float(rows[i][metric]) for i in ids] for rows in runs], axis=0)
        best = max(config.runs, key=lambda r: best_metrics(r).get("em", -1.0))
        config.answers = [per_run[_key(best)][i]["prediction"] for i in ids]
    return Questions(ids=ids, questions=[first[i]["question"] for i in ids],
                     references=[list(first[i].get("references") or []) for i in ids])


def seed_std(configurations: list[Configuration], metric: str) -> float:
    """The seed-to-seed standard deviation of the best dev score, pooled over configurations with 2+ seeds."""
    num = den = 0.0
    for config in configurations:
        xs = config.seed_scores(metric)
        if len(xs) > 1:
            num += float(np.var(xs, ddof=1)) * (len(xs) - 1)
            den += len(xs) - 1
    return math.sqrt(num / den) if den else math.nan


def _fmt_diff(d: Difference) -> str:
    return f"{d.delta:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"


def compare(configurations: list[Configuration], questions: Questions, metric: str = "em",
            buckets: dict[str, list[str]] | None = None, n_resamples: int = 10_000) -> Comparison:
    """Every configuration against the best one (by ``metric``, ties by EM then F1; see the module docstring)."""
    ranked = sorted(configurations, key=lambda c: (c.mean(metric) if metric in c.scores else -1, c.mean("em"),
                                                   c.mean("f1")), reverse=True)
    best = ranked[0]
    spread = {m: seed_std(configurations, m) for m in SCORES}
    differences, examples, lines = [], [], []
    for other in ranked[1:]:
        diffs = {m: paired_difference(best.scores[m], other.scores[m], n_resamples=n_resamples) for m in SCORES}
        key = metric if metric in diffs else "em"
        need = seeds_needed(diffs[key].delta, spread[key])
        best_only, other_only = flips(best.scores["em"], other.scores["em"])
        seeds = min(len(best.runs), len(other.runs))
        row = {"configuration": other.label, "seeds": len(other.runs), f"mean {key.upper()}": round(other.mean(key), 4)}
        for m, d in diffs.items():
            row.update({f"Δ{m.upper()} (best - this)": round(d.delta, 4), f"Δ{m.upper()} 95% low": round(d.low, 4),
                        f"Δ{m.upper()} 95% high": round(d.high, 4), f"p {m.upper()}": round(d.p_value, 4)})
        row.update({"right only in best": len(best_only), "right only here": len(other_only),
                    "seeds needed": need if need is not None else "2+ seeds per configuration to say",
                    "verdict": verdict(diffs[key], need, seeds)})
        differences.append(row)
        d = diffs[key]
        spread_text = f" (seed std {spread[key]:.4f})" if math.isfinite(spread[key]) else ""
        lines.append(f"{best.label} vs {other.label}: Δ{key.upper()} {_fmt_diff(d)}, p = {d.p_value:.4f} -- "
                     f"{verdict(d, need, seeds)}{spread_text}. Flips: {len(best_only)} questions right (every seed) "
                     f"only with {best.label}, {len(other_only)} only with {other.label}.")
        for direction, indices in (("right only in " + best.label, best_only), ("right only in " + other.label,
                                                                                 other_only)):
            for i in indices[:EXAMPLES]:
                examples.append({"pair": f"{best.label} vs {other.label}", "flip": direction, "id": questions.ids[i],
                                 "question": questions.questions[i], "references": " | ".join(questions.references[i]),
                                 best.label: best.answers[i], other.label: other.answers[i]})
    bucket_rows = em_by_bucket(buckets or {}, {c.label: c.scores["em"] for c in ranked})
    return Comparison(reference=best.label, metric=metric, questions=len(questions.ids), differences=differences,
                      flip_examples=examples, buckets=bucket_rows, lines=lines)


def question_buckets(questions: Questions, run: RunRow | None = None) -> dict[str, list[str]]:
    """The buckets of each question: question word and answer length always; answer position, windows per
    question and ``[UNK]`` in the answer span when ``run``'s dev file and tokenizer can be read here (its run
    dir's ``config_resolved.yaml`` and ``best_model/``)."""
    out = {"question word": [question_word(q) for q in questions.questions],
           "answer length": [answer_length_bucket(r[0]) if r else "no reference" for r in questions.references]}
    if run is None or not run.run_dir:
        return out
    try:
        out.update(_token_buckets(questions, Path(run.run_dir)))
    except Exception as err:  # noqa: BLE001 - optional buckets: the report says which it has
        log.warning("answer position / windows / [UNK] buckets left out: %s", str(err)[:300])
    return out


def _token_buckets(questions: Questions, run_dir: Path) -> dict[str, list[str]]:
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from ..core.data import read_examples
    from ..core.features import window_config
    from ..core.windowing import encode_examples, eval_windows

    cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
    by_id = {ex.id: ex for ex in read_examples(str(cfg.data.dev_file)).examples}
    examples = [by_id[i] for i in questions.ids]
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "best_model")
    window = window_config(cfg.window)
    enc = encode_examples(examples, tokenizer, window)
    per_question = np.bincount(eval_windows(enc, window).example_index, minlength=len(examples))
    unk = []
    for k in range(len(examples)):
        span = enc.answer_token_span(k)
        ids = enc.context_ids[enc.context_index[k]][span[0] : span[1] + 1] if span else []
        unk.append("no label" if span is None else "[UNK] in answer" if tokenizer.unk_token_id in ids else "no [UNK]")
    return {"answer position": [position_bucket(ex.answer_start, len(ex.context)) for ex in examples],
            "windows per question": [windows_bucket(int(n)) for n in per_question],
            "[UNK] in answer span": unk}
