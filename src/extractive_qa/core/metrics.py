"""Exact match and F1 for Chinese extractive QA, max over reference answers.

Two families, both reported everywhere (training logs, ``make predict`` on a dev file, ``python -m
extractive_qa.evaluate``):

* the course's metrics -- ``em``: the prediction string equals a reference string (the Kaggle
  leaderboard of hw7); ``f1``: the bag of characters of prediction and reference, whitespace
  ignored (DRCD-style character F1);
* ``em_cmrc2018`` / ``f1_cmrc2018`` -- computed by the rules of the official CMRC2018 evaluation
  script (ymcui/cmrc2018, ``squad-style-data/cmrc2018_evaluate.py`` v5), which papers and
  leaderboards also use for DRCD. This is the project's own implementation of those rules:

  - EM: lower-case, strip whitespace at the **ends only**, delete the script's punctuation marks,
    then compare strings -- so ``歐　洲`` is not ``歐洲`` (inner whitespace counts) and ``宽扎 ，``
    is not ``宽扎`` (the space before the comma survives the strip).
  - F1: the same lower-case and end-strip, then "mixed segmentation": each CJK character
    (U+4E00-U+9FA5) is a token, each run of other characters goes through ``nltk.word_tokenize``
    (which keeps ``4.9``, ``1,985``, ``A.``, ``……`` and ``【x】`` whole, and splits ``don't`` into
    ``do`` + ``n't``); punctuation marks are dropped *without* ending the run. F1 comes from the
    longest common contiguous run of tokens (not a bag): precision = run / prediction tokens,
    recall = run / reference tokens.
  - The script's mark ``……`` is two characters, so it never matches one character: a lone ``…``
    is kept, as the script keeps it.

Where this can differ from the script (documented, not hidden): the script calls
``nltk.word_tokenize(run)``, which first splits ``run`` into sentences with nltk's downloadable
punkt model; that data cannot be fetched here, so runs are tokenized as one line
(``preserve_line=True``). The two agree unless a single non-CJK run holds a sentence break that
punkt would cut -- a ``.``/``?``/``!`` followed by a space and more text, e.g. ``"end. Next"``:
there the script splits off that inner ``.`` as its own token (``end`` ``.`` ``Next``) while this
keeps ``end.`` together. Answers are short spans, so such runs are rare; where one occurs, only
that pair's F1 can differ. The script was written for Python 2; this follows Python 3 string rules
(``str.lower`` maps ``İ`` to two characters where Python 2 gave one).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

# The official script's punctuation marks, in its order. "……" (two characters) can never equal one
# character, so a lone "…" survives -- exactly as in the script.
CMRC2018_PUNCTUATION = frozenset([
    "-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=", "，", "。", "：", "？", "！", "“", "”", "；",
    "’", "《", "》", "……", "·", "、", "「", "」", "（", "）", "－", "～", "『", "』",
])
_CJK = re.compile(r"[\u4e00-\u9fa5]")
METRICS = ("em", "f1", "em_cmrc2018", "f1_cmrc2018")
# How each metric is named in tables and plots (reports, `make predict`); keys of METRICS, in order.
METRIC_LABELS = {"em": "EM", "f1": "F1", "em_cmrc2018": "EM (CMRC2018)", "f1_cmrc2018": "F1 (CMRC2018)"}


def check_metric(name: str) -> str:
    """``name`` if it is one of :data:`METRICS` (what ``optimize_metric`` may be), else a ValueError."""
    if name not in METRICS:
        raise ValueError(f"optimize_metric must be one of {', '.join(METRICS)}; got {name!r}")
    return name


def selection_key(scores: dict[str, float], optimize_metric: str = "em") -> tuple[float, ...]:
    """What "better" means wherever a best is picked (the run's best model, a sweep's best job, ``top_k``
    members, a report's order): ``optimize_metric`` first, ties broken by EM, then F1, then the official
    scores. A missing score counts as -inf. Sort with ``key=`` and ``reverse=True``."""
    order = (optimize_metric, *(m for m in METRICS if m != optimize_metric))
    return tuple(float(scores.get(m, float("-inf"))) for m in order)


def exact_match(prediction: str, references: Iterable[str]) -> float:
    return float(any(prediction == r for r in references))


def _f1_from_overlap(overlap: int, n_pred: int, n_ref: int) -> float:
    if overlap == 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def char_f1(prediction: str, references: Iterable[str]) -> float:
    """Character-bag F1, whitespace ignored, max over references."""
    pred = Counter(ch for ch in prediction if not ch.isspace())
    best = 0.0
    for ref in references:
        r = Counter(ch for ch in ref if not ch.isspace())
        if not pred and not r:
            return 1.0
        overlap = sum((pred & r).values())
        best = max(best, _f1_from_overlap(overlap, sum(pred.values()), sum(r.values())))
    return best


def _word_tokenize(run: str) -> list[str]:
    from nltk.tokenize import word_tokenize

    return word_tokenize(run, preserve_line=True)


def cmrc2018_segments(text: str) -> list[str]:
    """Mixed segmentation with punctuation removed (the official script's F1 tokens)."""
    segments: list[str] = []
    run = ""
    for ch in text.lower().strip():
        if ch in CMRC2018_PUNCTUATION:
            continue  # dropped, and the run of non-CJK characters goes on across it
        if _CJK.match(ch):
            if run:
                segments.extend(_word_tokenize(run))
                run = ""
            segments.append(ch)
        else:
            run += ch
    if run:
        segments.extend(_word_tokenize(run))
    return segments


def cmrc2018_normalize(text: str) -> str:
    """The official script's EM normalisation: lower case, ends stripped, punctuation marks removed."""
    return "".join(ch for ch in text.lower().strip() if ch not in CMRC2018_PUNCTUATION)


def _longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous run of tokens that ``a`` and ``b`` share."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                cur[j + 1] = prev[j] + 1
                best = max(best, cur[j + 1])
        prev = cur
    return best


def cmrc2018_em(prediction: str, references: Iterable[str]) -> float:
    p = cmrc2018_normalize(prediction)
    return float(any(p == cmrc2018_normalize(r) for r in references))


def cmrc2018_f1(prediction: str, references: Iterable[str]) -> float:
    p = cmrc2018_segments(prediction)
    best = 0.0
    for ref in references:
        r = cmrc2018_segments(ref)
        best = max(best, _f1_from_overlap(_longest_common_run(r, p), len(p), len(r)))
    return best


def score_prediction(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """All four scores of one prediction; empty ``references`` (an unlabelled question) scores 0."""
    if not references:
        return dict.fromkeys(METRICS, 0.0)
    return {
        "em": exact_match(prediction, references),
        "f1": char_f1(prediction, references),
        "em_cmrc2018": cmrc2018_em(prediction, references),
        "f1_cmrc2018": cmrc2018_f1(prediction, references),
    }


def aggregate(per_question: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each score over questions (0 for none)."""
    if not per_question:
        return dict.fromkeys(METRICS, 0.0)
    return {k: sum(s[k] for s in per_question) / len(per_question) for k in per_question[0]}


def score_answers(answers: dict[str, str], questions: Sequence) -> tuple[dict[str, float], list[dict]]:
    """Scores of predicted ``answers`` (by question id) against ``questions`` (Examples with references).

    The one scoring path: training-time dev evaluation, ``make predict`` on a dev file and ``python -m
    extractive_qa.evaluate`` all call it. Aggregates are means over the questions that have references;
    a question without a predicted answer scores 0 (as in the official script). Returns the aggregate
    and one row per question (id, question, prediction, references and its scores).
    """
    rows, scored = [], []
    for ex in questions:
        prediction = answers.get(ex.id, "")
        s = score_prediction(prediction, ex.answers)
        if ex.answers:
            scored.append(s)
        rows.append({"id": ex.id, "question": ex.question, "prediction": prediction, "references": ex.answers, **s})
    return aggregate(scored), rows
