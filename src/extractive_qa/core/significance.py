"""Is a difference between two configurations real? Paired statistics over the same dev questions.

A sweep's report compares every configuration with the best one. The unit of evidence is the
question: each configuration's per-question score (EM 0/1, or F1) is **averaged over its seeds**, so
a configuration trained with three seeds contributes one number per question; the two
configurations are then compared question by question (paired), which is far more sensitive than
comparing two aggregate scores, because most questions are answered alike by both.

* :func:`paired_difference` -- the mean difference ``A - B`` with a **paired bootstrap** 95%
  interval (resample questions with replacement, percentile interval; Koehn 2004) and a two-sided
  **paired randomization test** p-value (flip the sign of each question's difference at random:
  under "no difference" A and B are exchangeable per question; Noreen 1989, the approximate
  randomization test NLP papers use). Identical predictions give ``delta = 0``, ``p = 1``.
* :func:`flips` -- questions right in A and wrong in B, and the reverse (right with every seed of one,
  wrong with every seed of the other): where the difference comes from.
* :func:`verdict` -- both answers in one sentence.
* :func:`bucket_of` and friends -- the buckets EM is broken down by: answer length, question word,
  answer position in the paragraph, windows per question, ``[UNK]`` in the answer span.
* :func:`seeds_needed` -- from the seed-to-seed spread of a configuration's score, how many seeds
  per configuration a difference of the observed size needs to be told from seed noise (two-sample,
  alpha 0.05, power 0.8).

The bootstrap and the randomization test treat the questions as the sample and the seeds as fixed:
they answer "would another draw of dev questions show the same difference?". Whether another draw
of *seeds* would is what :func:`seeds_needed` speaks to; a difference is real only when both say so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z_975, Z_80 = 1.959963984540054, 0.8416212335729143  # standard normal quantiles: two-sided 5%, power 80%


@dataclass(frozen=True)
class Difference:
    """``A - B`` over paired per-question scores."""

    delta: float  # mean of A minus mean of B
    low: float  # paired bootstrap 95% interval of delta
    high: float
    p_value: float  # two-sided paired randomization test
    n: int  # questions

    @property
    def significant(self) -> bool:
        """The 95% interval excludes 0 (and so, up to resampling noise, p < 0.05)."""
        return self.low > 0 or self.high < 0


def paired_difference(a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000, seed: int = 0,
                      confidence: float = 0.95) -> Difference:
    """Compare per-question scores ``a`` and ``b`` of the same questions, in the same order.

    Contract: ``a[i]`` and ``b[i]`` score question ``i`` (each already averaged over its
    configuration's seeds); ``n_resamples`` bootstrap resamples and as many random sign flips are
    drawn from ``numpy.random.default_rng(seed)``, so the result is reproducible. The interval is the
    percentile interval of the resampled mean differences; the p-value is ``(1 + #{|mean(s*d)| >=
    |mean(d)|}) / (1 + n_resamples)`` over random signs ``s`` (never 0; exactly 1 when every ``d`` is 0).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need the same questions: got {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        return Difference(0.0, 0.0, 0.0, 1.0, 0)
    d = a - b
    delta = float(d.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    flipped = np.empty(n_resamples)
    for start in range(0, n_resamples, 1000):  # in chunks: 1000 x n at a time stays small
        k = min(1000, n_resamples - start)
        means[start : start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
        flipped[start : start + k] = (d * rng.choice((-1.0, 1.0), size=(k, n))).mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # A tolerance, so sums of the same terms in another order count as equal (d = 0 gives exactly p = 1).
    extreme = int(np.count_nonzero(np.abs(flipped) >= abs(delta) - 1e-12))
    return Difference(delta, float(low), float(high), (1 + extreme) / (1 + n_resamples), n)


def flips(a: Sequence[float], b: Sequence[float]) -> tuple[list[int], list[int]]:
    """Indices of questions right in A but wrong in B, and right in B but wrong in A, from per-question EM
    averaged over seeds: right means right with every seed (1.0), wrong with none (0.0)."""
    pairs = list(zip(a, b, strict=True))
    return ([i for i, (x, y) in enumerate(pairs) if x == 1.0 and y == 0.0],
            [i for i, (x, y) in enumerate(pairs) if y == 1.0 and x == 0.0])


def seeds_needed(delta: float, seed_std: float, power: float = 0.8, alpha: float = 0.05) -> int | None:
    """Seeds per configuration for a two-sample comparison of mean scores to tell ``delta`` from seed noise
    of standard deviation ``seed_std`` (normal approximation: ``n = 2 (z_{1-alpha/2} + z_power)^2 s^2 / delta^2``).
    ``None`` when it cannot be said: no spread measured (``seed_std`` NaN, i.e. fewer than 2 seeds) or
    ``delta`` 0; at least 2."""
    if not math.isfinite(seed_std) or delta == 0:
        return None
    if power != 0.8 or alpha != 0.05:
        from statistics import NormalDist

        z_a, z_b = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    else:
        z_a, z_b = Z_975, Z_80
    return max(2, math.ceil(2 * (z_a + z_b) ** 2 * seed_std**2 / delta**2))


def verdict(diff: Difference, needed: int | None, seeds: int) -> str:
    """Whether a difference is real, in words: significant over the questions, and measured against the
    seed spread with the ``seeds`` per configuration there are (``needed`` from :func:`seeds_needed`)."""
    if not diff.significant:
        return "no evidence of a difference: the interval includes 0"
    if needed is None:
        return ("real over these questions, for these seeds; the seed-to-seed spread is unmeasured -- train 2+ seeds "
                "per configuration to know whether another seed would reverse it")
    if needed <= seeds:
        return (f"real: significant over the questions, and {seeds} seeds per configuration suffice against the "
                "seed spread")
    return (f"not established: significant over the questions, but the seed spread calls for {needed} seeds per "
            f"configuration (there are {seeds})")


# ---------------------------------------------------------------- buckets
# Question words, most specific first (為什麼 before 什麼); traditional and simplified forms.
QUESTION_WORDS = (
    ("為什麼/为什么", ("為什麼", "为什么", "為何", "为何")),
    ("何時/何时", ("何時", "何时", "什麼時候", "什么时候", "哪一年", "哪年", "幾年", "几年")),
    ("多少", ("多少", "多大", "多長", "多长", "多久", "多高", "多遠", "多远")),
    ("幾/几", ("幾", "几")),
    ("誰/谁", ("誰", "谁")),
    ("哪", ("哪",)),
    ("如何/怎麼", ("如何", "怎麼", "怎么", "怎樣", "怎样")),
    ("什麼/什么", ("什麼", "什么", "甚麼", "何")),
)
OTHER = "other"


def question_word(question: str) -> str:
    """The question word bucket of ``question`` (``other`` when none of :data:`QUESTION_WORDS` occurs)."""
    for label, words in QUESTION_WORDS:
        if any(w in question for w in words):
            return label
    return OTHER


def answer_length_bucket(reference: str) -> str:
    """Characters of the (first) reference, whitespace ignored: 1-2, 3-4, 5-8, 9-16, 17+."""
    n = len(re.sub(r"\s", "", reference))
    for upper, label in ((2, "1-2 chars"), (4, "3-4 chars"), (8, "5-8 chars"), (16, "9-16 chars")):
        if n <= upper:
            return label
    return "17+ chars"


def position_bucket(answer_start: int | None, context_length: int) -> str:
    """Where the answer starts in its paragraph: first, middle or last third (``unknown`` without a label)."""
    if answer_start is None or context_length <= 0:
        return "unknown"
    third = 3 * answer_start / context_length
    return "first third" if third < 1 else "middle third" if third < 2 else "last third"


def windows_bucket(windows: int) -> str:
    return "1 window" if windows == 1 else "2 windows" if windows == 2 else "3+ windows"


def em_by_bucket(buckets: dict[str, Sequence[str]], scores: dict[str, Sequence[float]]) -> list[dict]:
    """Rows ``{"bucketing", "bucket", "n", <name>: mean score, ...}``: each configuration's mean score per bucket.

    ``buckets[bucketing][i]`` is question ``i``'s bucket under that bucketing; ``scores[name][i]`` its
    score under configuration ``name``. Buckets come in their first-seen order within a bucketing.
    """
    rows = []
    for bucketing, labels in buckets.items():
        for label in dict.fromkeys(labels):
            members = [i for i, x in enumerate(labels) if x == label]
            row = {"bucketing": bucketing, "bucket": label, "n": len(members)}
            row.update({name: float(np.mean([s[i] for i in members])) for name, s in scores.items()})
            rows.append(row)
    return rows
