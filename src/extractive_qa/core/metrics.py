"""Exact match and F1 for Chinese extractive QA, max over reference answers.

* ``em`` -- the course's rule: the prediction string equals a reference string.
* ``f1`` -- character-level F1 (DRCD / CMRC2018 style): the bag of characters of prediction and
  reference, whitespace ignored. (HF's ``squad`` metric splits on whitespace, so on Chinese its F1 is
  nearly EM.)
* ``em_cmrc`` / ``f1_cmrc`` -- the CMRC2018 official script's definitions: lower-cased, punctuation
  (its list) removed -- and, for EM, whitespace too -- and F1 from the longest common substring of
  the "mixed segmentation" (CJK characters one by one, runs of ASCII letters/digits as words).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

# The CMRC2018 official evaluation script's punctuation list.
CMRC_PUNCTUATION = frozenset([
    "-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=", "，", "。", "：", "？", "！", "“", "”", "；",
    "’", "《", "》", "……", "·", "、", "「", "」", "（", "）", "－", "～", "『", "』",
])
_CJK = re.compile(r"[\u4e00-\u9fa5]")
# Stands in for nltk.word_tokenize on the script's non-CJK runs: words and single punctuation marks.
_WORDS = re.compile(r"\w+|[^\w\s]")


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


def cmrc_segments(text: str) -> list[str]:
    """CMRC2018 mixed segmentation with punctuation removed."""
    segments: list[str] = []
    run = ""
    for ch in text.lower().strip():
        if ch in CMRC_PUNCTUATION:
            continue
        if _CJK.match(ch):
            if run:
                segments.extend(_WORDS.findall(run))
                run = ""
            segments.append(ch)
        else:
            run += ch
    if run:
        segments.extend(_WORDS.findall(run))
    return segments


def _longest_common_substring(a: Sequence[str], b: Sequence[str]) -> int:
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


def cmrc_normalize(text: str) -> str:
    """CMRC2018's EM normalisation (lower case, its punctuation removed) plus whitespace removal."""
    return "".join(ch for ch in text.lower() if ch not in CMRC_PUNCTUATION and not ch.isspace())


def cmrc_em(prediction: str, references: Iterable[str]) -> float:
    p = cmrc_normalize(prediction)
    return float(any(p == cmrc_normalize(r) for r in references))


def cmrc_f1(prediction: str, references: Iterable[str]) -> float:
    p = cmrc_segments(prediction)
    return max((_f1_from_overlap(_longest_common_substring(cmrc_segments(r), p), len(p), len(cmrc_segments(r)))
                for r in references), default=0.0)


def score_prediction(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """All four scores of one prediction; empty ``references`` (an unlabelled question) scores 0."""
    if not references:
        return {"em": 0.0, "f1": 0.0, "em_cmrc": 0.0, "f1_cmrc": 0.0}
    return {
        "em": exact_match(prediction, references),
        "f1": char_f1(prediction, references),
        "em_cmrc": cmrc_em(prediction, references),
        "f1_cmrc": cmrc_f1(prediction, references),
    }


def aggregate(per_question: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each score over questions (0 for none)."""
    if not per_question:
        return {"em": 0.0, "f1": 0.0, "em_cmrc": 0.0, "f1_cmrc": 0.0}
    return {k: sum(s[k] for s in per_question) / len(per_question) for k in per_question[0]}
