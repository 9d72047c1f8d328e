"""Configurations compared question by question: the evidence behind a report's "is the difference real?".

A **configuration** is the runs that differ only in their seed (a sweep's jobs grouped by their
other swept values, or the runs named on each side of ``python -m extractive_qa.compare A B``). Each
run's ``dev_predictions.jsonl`` holds its per-question scores at its best checkpoint; a
configuration is the matrix of its seeds' per-question scores. :func:`compare` sets every
configuration against a reference (the best one by ``optimize_metric``) with the statistics of
:mod:`extractive_qa.core.significance`: intervals and p-values of ΔEM and ΔF1 that count the seeds and
the questions both, Holm-adjusted over every pair of a sweep's configurations, the smallest difference
the seeds at hand can tell apart, the seeds a difference of the observed size would need (a range),
the flips and EM by bucket.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.metrics import METRIC_LABELS
from ..core.significance import (
    MAX_SEEDS,
    Difference,
    Scores,
    against_best,
    answer_length_bucket,
    em_by_bucket,
    failed_runs,
    flips,
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
SCORES = ("em", "f1")  # what the differences are computed for (and optimize_metric, when it is another)
EXAMPLES = 3  # flip examples shown per direction


@dataclass
class Configuration:
    label: str
    runs: list[RunRow]
    scores: dict[str, Scores] = field(default_factory=dict)  # metric -> seeds x questions
    answers: list[str] = field(default_factory=list)  # its best run's predictions, per question

    def mean(self, metric: str) -> float:
        return self.scores[metric].mean if metric in self.scores else math.nan

    def per_question(self, metric: str) -> np.ndarray:
        """Mean over seeds per question."""
        return self.scores[metric].per_question


@dataclass
class Questions:
    """The dev questions every compared run was scored on, in the first run's order, with each one's paragraph (the
    sampling unit of the comparison's question part; ``None`` when the runs did not record it)."""

    ids: list[str]
    questions: list[str]
    references: list[list[str]]
    paragraphs: list[str] | None = None


@dataclass
class Comparison:
    reference: str  # the configuration the others are set against
    metric: str  # optimize_metric: what "best" means
    questions: int
    differences: list[dict]  # one row per other configuration
    flip_examples: list[dict]
    buckets: list[dict]
    lines: list[str]  # the verdicts, in words
    failed: list[dict] = field(default_factory=list)  # runs far below their configuration's others (named)


def _read_predictions(path: Path) -> dict[str, dict]:
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[str(row["id"])] = row
    return rows


def _key(run: RunRow) -> str:
    return run.run_id or run.run_dir or run.name


def _score(name: str, path: Path, row: dict, metric: str) -> float:
    """One question's score, refused unless it is a finite number: a NaN would make every statistic NaN."""
    value = row.get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"run {name}: {path} holds {metric}={value!r} for question {row.get('id')!r}, not a "
                         f"finite score. Fix: re-score the run (python -m extractive_qa.evaluate {path} DEV_FILE) "
                         "or leave it out of the comparison")
    return float(value)


@dataclass
class ScoreFiles:
    """Every run's per-question score file, read once, over the questions they all share."""

    files: dict[str, tuple[Path, dict[str, dict]]]  # run key -> its file and its rows by question id
    ids: list[str]  # the questions with references that every run was scored on, in the first file's order
    paragraphs: list | None  # each question's paragraph, where the files hold it for every question

    def matrix(self, keys: list[str], names: list[str], metric: str) -> np.ndarray:
        """The runs ``keys`` (named ``names`` in an error) x the shared questions, each score a finite number."""
        return np.asarray([[_score(name, self.files[key][0], self.files[key][1][i], metric) for i in self.ids]
                           for key, name in zip(keys, names, strict=True)], dtype=np.float64).reshape(len(keys),
                                                                                                    len(self.ids))


def read_score_files(paths: dict[str, Path]) -> ScoreFiles:
    """Read the runs' ``dev_predictions.jsonl`` (run key -> path): the questions with references that all of them
    were scored on (a warning names how many some runs lacked), and each one's paragraph when the files hold it.
    Questions without references score 0 for everyone and are not in a run's EM: left out here too."""
    files = {key: (path, _read_predictions(path)) for key, path in paths.items()}
    first = next(iter(files.values()))[1]
    ids = [i for i, row in first.items() if row.get("references") and all(i in rows for _, rows in files.values())]
    dropped = max(sum(1 for r in rows.values() if r.get("references")) for _, rows in files.values()) - len(ids)
    if dropped:
        log.warning("the runs were scored on different dev questions: comparing the %d they share (%d left out)",
                    len(ids), dropped)
    paragraphs = [first[i].get("paragraph") for i in ids]
    return ScoreFiles(files, ids, paragraphs if all(p is not None for p in paragraphs) else None)


def load(backend: TrackingBackend, configurations: list[Configuration], metrics=SCORES) -> Questions:
    """Read every run's per-question scores; fill each configuration's ``scores`` (its seeds x the questions)
    and ``answers`` (its best run's), over the questions with references that all runs were scored on."""
    paths: dict[str, Path] = {}
    for config in configurations:
        for run in config.runs:
            path = backend.run_file(run, PREDICTIONS)
            if path is None:
                raise FileNotFoundError(f"run {run.name} has no {PREDICTIONS} (here or in the store): it cannot be "
                                        "compared question by question")
            paths[_key(run)] = path
    read = read_score_files(paths)
    ids, first = read.ids, next(iter(read.files.values()))[1]
    paragraphs = read.paragraphs if read.paragraphs is not None else _paragraphs_from_dev_file(configurations, ids)
    codes = None if paragraphs is None else np.unique(np.asarray(paragraphs, dtype=str), return_inverse=True)[1]
    for config in configurations:
        keys, names = [_key(run) for run in config.runs], [run.name for run in config.runs]
        for metric in metrics:
            config.scores[metric] = Scores(read.matrix(keys, names, metric), config.label, codes)
        best = max(config.runs, key=lambda r: best_metrics(r).get("em", -1.0))
        config.answers = [read.files[_key(best)][1][i]["prediction"] for i in ids]
    return Questions(ids=ids, questions=[first[i]["question"] for i in ids],
                     references=[list(first[i].get("references") or []) for i in ids], paragraphs=paragraphs)


def _paragraphs_from_dev_file(configurations: list[Configuration], ids: list[str]) -> list[str] | None:
    """Each question's paragraph for runs that did not record it (before issue 42): from the dev file a run's
    config names, when it can be read here; else ``None`` (questions counted alone, and said so)."""
    from omegaconf import OmegaConf

    from ..core.data import read_examples

    for run in (r for c in configurations for r in c.runs if r.run_dir):
        try:
            cfg = OmegaConf.load(Path(run.run_dir) / "config_resolved.yaml")
            by_id = {ex.id: ex.context_key for ex in read_examples(str(cfg.data.dev_file)).examples}
            if all(i in by_id for i in ids):
                return [by_id[i] for i in ids]
        except Exception as err:  # noqa: BLE001 - the comparison goes on, counting questions alone
            log.warning("paragraphs of %s not found (%s): questions counted alone", run.name, str(err)[:200])
            return None
    log.warning("the runs did not record their questions' paragraphs: questions counted alone")
    return None


def _fmt_need(diff: Difference) -> str:
    need = seeds_needed(diff)
    if isinstance(need, str):
        return need
    return f"{need[0]}–{need[1]}" if need[1] < MAX_SEEDS else f"{need[0]}–{MAX_SEEDS}+"


def _row(other: Configuration, diffs: dict[str, Difference], key: str, best_only: list[int],
         other_only: list[int]) -> dict:
    """One row of the differences table, the verdict next to the name (an MLflow table: the UI shows the first
    columns of a wide table; short cells; column names without dots, which it would read as paths)."""
    d = diffs[key]
    label = METRIC_LABELS[key]

    def pts(x: float) -> float | None:
        return round(100 * x, 2) if math.isfinite(x) else None

    row = {"configuration": other.label,
           "verdict": "real" if d.significant else "no verdict" if d.reason else "not established",
           f"Δ{label} (points)": pts(d.delta), "95% low": pts(d.low), "95% high": pts(d.high),
           "p": round(d.p_value, 4) if math.isfinite(d.p_value) else None,
           **({"p simultaneous": round(d.p_family, 4)} if d.p_family is not None else {}),
           "seeds": other.scores[key].seeds, f"mean {label}": round(other.mean(key), 4),
           "smallest detectable (points)": pts(d.detectable),
           "seeds needed": _fmt_need(d) if not d.significant else ""}
    for m, diff in diffs.items():
        if m != key:
            row[f"Δ{METRIC_LABELS[m]} (points)"] = pts(diff.delta)
    row.update({"right only in best": len(best_only), "right only here": len(other_only)})
    return row


def _questions(n: int) -> str:
    return f"{n} question" if n == 1 else f"{n} questions"


def compare(configurations: list[Configuration], questions: Questions, metric: str = "em",
            buckets: dict[str, list[str]] | None = None) -> Comparison:
    """Every configuration against the best one (by ``metric``, ties by EM then F1; see the module docstring)."""
    ranked = sorted(configurations, key=lambda c: (c.mean(metric) if metric in c.scores else -1, c.mean("em"),
                                                   c.mean("f1")), reverse=True)
    best = ranked[0]
    key = metric if metric in best.scores else "em"
    measured = list(dict.fromkeys((key, *SCORES)))
    against = {m: against_best({c.label: c.scores[m] for c in ranked}, best.label) for m in measured}
    differences, examples, lines = [], [], []
    for other in ranked[1:]:
        diffs = {m: against[m][other.label] for m in measured}
        best_only, other_only = flips(best.per_question("em"), other.per_question("em"))
        differences.append(_row(other, diffs, key, best_only, other_only))
        said = verdict(diffs[key], best.label, other.label, METRIC_LABELS[key])
        lines.append(f"{best.label} vs {other.label}: {said} Flips: {_questions(len(best_only))} right (every seed) "
                     f"only with {best.label}, {len(other_only)} only with {other.label}.")
        for direction, indices in (("right only in " + best.label, best_only), ("right only in " + other.label,
                                                                                 other_only)):
            for i in indices[:EXAMPLES]:
                examples.append({"pair": f"{best.label} vs {other.label}", "flip": direction, "id": questions.ids[i],
                                 "question": questions.questions[i], "references": " | ".join(questions.references[i]),
                                 "answer of the best": best.answers[i], "answer of the other": other.answers[i]})
    failed, without = _failed_runs(ranked, key, best)
    lines.extend(without)
    bucket_rows = em_by_bucket(buckets or {}, {c.label: c.per_question("em") for c in ranked})
    return Comparison(reference=best.label, metric=key, questions=len(questions.ids), differences=differences,
                      flip_examples=examples, buckets=bucket_rows, lines=lines, failed=failed)


def _failed_runs(ranked: list[Configuration], key: str, best: Configuration) -> tuple[list[dict], list[str]]:
    """Runs far below their configuration's others, named (rows for the report), and what the comparison says
    without them (lines) -- beside the comparison of every run, which stays the verdict: what a user gets."""
    found = failed_runs({c.label: c.scores[key] for c in ranked})
    if not found:
        return [], []
    label = METRIC_LABELS[key]
    rows, names = [], []
    for config in ranked:
        for r, gap in found.get(config.label, []):
            rows.append({"configuration": config.label, "run": config.runs[r].name,
                         f"points below its siblings ({label})": round(100 * gap, 2),
                         "failure rate of the configuration": f"{len(found[config.label])} of {len(config.runs)}"})
            names.append(f"{config.runs[r].name}: {100 * gap:.1f} {label} points below its siblings")
    lines = [f"Failed runs (far below their configuration's other seeds; counted above, as a user would get them): "
             f"{'; '.join(names)}."]
    trimmed = {c.label: c.scores[key].without([r for r, _ in found.get(c.label, [])]) for c in ranked}
    again = against_best(trimmed, best.label)
    for other, d in again.items():
        lines.append(f"  without the failed runs, {best.label} vs {other}: {verdict(d, best.label, other, label)}")
    return rows, lines


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
