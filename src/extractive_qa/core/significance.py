"""Is a difference between two configurations real? Seeds and questions, both counted.

A sweep's report compares configurations -- runs that differ only in their seed. Two sources of noise
stand between a measured difference and a real one, and both are counted here:

* **the seeds**: fine-tuning the same configuration with another seed moves dev EM by 0.5-1.5 points,
  and a seed shifts many questions at once. Each configuration's runs are a sample of its seeds.
* **the questions**: the dev set is a sample of questions. Two configurations are scored on the same
  questions, so they are compared question by question (paired): what differs between them per
  question is the only question-level noise the difference carries.

The model (a two-way random-effects decomposition, per configuration ``c``, seed ``r``, question ``i``):
``score[c,r,i] = mu[c] + q[c,i] + u[c,r] + e[c,r,i]`` -- a question effect shared by every seed of a
configuration, a seed effect shared by every question of a run, and per-(run, question) noise. The
difference of the configurations' mean scores over their seeds, ``delta = mean(A) - mean(B)``, has variance

    Var(q_A - q_B) / n  +  s2_A / k_A  +  s2_B / k_B

where ``s2_c`` is the variance of a configuration's run-level scores across its ``k_c`` seeds (it holds
the seed effect and the per-question noise that averages into a run's score) and ``Var(q_A - q_B)``
is the variance over questions of what the configurations do differently, estimated from the paired
per-question differences of the seed means minus the per-question noise they carry (the two-way
interaction mean square of each configuration, divided by its seeds). :func:`difference` makes a
t interval and p-value of ``delta`` from it, with Welch-Satterthwaite degrees of freedom.

One change to Satterthwaite, and why: with 2 seeds each seed variance rests on 1 degree of freedom,
and a variance that comes out small by chance then also buys degrees of freedom, so plain
Welch-Satterthwaite called 6.4% of no-difference comparisons significant (200,000 simulated ones,
2 seeds, the seed part a third of the variance). The degrees of freedom here are computed with each
seed variance at its 75% upper confidence bound (``SEED_DF_QUANTILE``); the variance itself is not
changed. Measured against its stated error rates by :mod:`extractive_qa.core.calibration`
(``python -m extractive_qa.compare --calibrate``): at most 5% false "real" verdicts for 2-10 seeds and
seed spreads 0-2 EM points, coverage of a true difference at least 95% (README, "Is the difference
real?"). The choice follows Dror et al. 2018 (significance testing in NLP: test over the sources of
variance the claim is about) and Bouthillier et al. 2021 (accounting for variance in ML benchmarks:
the seed variance is as large as the effects compared, so it belongs in the test).

Sweeps compare every configuration with the best one, picked from the same dev scores: the p-values
are Holm-adjusted over **all** pairs of configurations (:func:`holm`), which holds the chance of any
false "real" line in a sweep at 5% whichever configuration comes out best.

No verdict of "real" is given when the data cannot carry one: one seed on a side (its seed noise is
unmeasured), seeds whose predictions are identical (the seed did not change training), or fewer
than two questions. :func:`seeds_needed` and :attr:`Difference.detectable` say what would settle it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

ALPHA = 0.05  # the error rate every verdict is calibrated to
POWER = 0.8  # "could be told apart": detected in 4 of 5 repetitions
SEED_DF_QUANTILE = 0.25  # seed variances at their 75% upper bound when computing degrees of freedom (see above)
TIE = 1e-12  # |delta| below this is a tie: sums of the same scores in another order differ by ~1e-16
MAX_SEEDS = 10_000  # seeds_needed stops counting here


@dataclass(frozen=True)
class Scores:
    """One configuration's per-question scores, one row per seed (run), columns the shared questions."""

    matrix: np.ndarray  # k x n
    label: str = ""

    @property
    def seeds(self) -> int:
        return self.matrix.shape[0]

    @property
    def questions(self) -> int:
        return self.matrix.shape[1]

    @property
    def per_question(self) -> np.ndarray:
        """Mean over seeds per question."""
        return self.matrix.mean(axis=0)

    @property
    def mean(self) -> float:
        return float(self.matrix.mean()) if self.matrix.size else math.nan

    def run_variance(self) -> float:
        """Variance of the run-level scores across seeds, floored at the per-question noise a run's score
        always carries (``noise / n``): a spread that rounds to zero on a small dev set is not no spread."""
        if self.seeds < 2:
            return math.nan
        return max(float(self.matrix.mean(axis=1).var(ddof=1)), self.noise() / max(self.questions, 1))

    def noise(self) -> float:
        """Per-(run, question) noise: the two-way interaction mean square (seeds x questions)."""
        k, n = self.matrix.shape
        if k < 2 or n < 2:
            return 0.0
        rows, cols = self.matrix.mean(axis=1), self.matrix.mean(axis=0)
        grand = float(rows.mean())
        total = float(np.square(self.matrix - grand).sum())
        ss = total - n * float(np.square(rows - grand).sum()) - k * float(np.square(cols - grand).sum())
        return max(ss, 0.0) / ((k - 1) * (n - 1))

    def identical_seeds(self) -> bool:
        return self.seeds >= 2 and bool((self.matrix == self.matrix[0]).all())


def scores(runs: Sequence[Sequence[float]], label: str = "") -> Scores:
    """``runs[r][i]``: seed ``r``'s score on question ``i``. Every score must be a finite number: a NaN
    would silently turn every statistic into NaN (or, in a resampling test, into p = 0.0001)."""
    matrix = np.asarray(runs, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"{label or 'scores'}: expected one row of per-question scores per seed, got shape "
                         f"{matrix.shape}")
    bad = np.argwhere(~np.isfinite(matrix))
    if len(bad):
        r, i = (int(x) for x in bad[0])
        raise ValueError(f"{label or 'scores'}: seed {r} has a non-finite score ({matrix[r, i]}) for question {i} "
                         f"({len(bad)} such scores)")
    return Scores(matrix, label)


@dataclass(frozen=True)
class Difference:
    """``A - B``: the mean over seeds and questions, its interval and p-value over seeds and questions."""

    delta: float
    low: float  # confidence interval of delta (nan when there is no verdict)
    high: float
    p_value: float  # two-sided, this pair alone
    n: int  # questions
    seeds: tuple[int, int]  # (A, B)
    se: float  # standard error of delta
    df: float  # degrees of freedom of the t reference distribution
    question_var: float  # Var(q_A - q_B) / n: the question-sampling part of se^2
    seed_vars: tuple[float, float]  # s2_A, s2_B: run-level variance across each side's seeds
    seed_dfs: tuple[int, int]
    reason: str = ""  # why no verdict can be given ("" when one can)
    p_family: float | None = None  # Holm-adjusted over the sweep's pairs (None: a single comparison)
    pairs: int = 1  # how many comparisons p_family is adjusted over
    confidence: float = 1 - ALPHA

    @property
    def p(self) -> float:
        """The p-value the verdict uses: adjusted over the sweep's pairs when there are several."""
        return self.p_value if self.p_family is None else self.p_family

    @property
    def significant(self) -> bool:
        """Real at the calibrated level: a verdict can be given and ``p < alpha``. Agrees with :attr:`p`."""
        return not self.reason and self.p < 1 - self.confidence

    @property
    def detectable(self) -> float:
        """The smallest difference these seeds and questions tell apart ``POWER`` of the time at ``alpha``
        (two-sided): ``(t_{1-alpha/2} + t_{power}) * se`` on the same degrees of freedom. NaN without a verdict."""
        if self.reason or not math.isfinite(self.se):
            return math.nan
        alpha = 1 - self.confidence
        return float((_t_quantile(1 - alpha / 2, self.df) + _t_quantile(POWER, self.df)) * self.se)


def _t_quantile(q: float, df: float) -> float:
    """Student t quantile (scipy.special: 50x faster than scipy.stats, which the calibration calls 10^5 times)."""
    return float(special.stdtrit(df, q)) if math.isfinite(df) else float(special.ndtri(q))


def _chi2_quantile(q: float, df: float) -> float:
    return float(special.chdtri(df, 1 - q))


def _satterthwaite(parts: Sequence[tuple[float, float]]) -> float:
    total = sum(v for v, _ in parts)
    den = sum(v * v / f for v, f in parts if v > 0)
    return total * total / den if den > 0 else math.inf


def difference(a: Scores, b: Scores, confidence: float = 1 - ALPHA) -> Difference:
    """``A - B`` over the same questions (columns) with both sources of noise (see the module docstring)."""
    if a.questions != b.questions:
        raise ValueError(f"paired scores need the same questions: {a.label or 'A'} has {a.questions}, "
                         f"{b.label or 'B'} has {b.questions}")
    n = a.questions
    delta = a.mean - b.mean if n else 0.0
    if abs(delta) < TIE:
        delta = 0.0
    reason = _no_verdict(a, b)
    seed_vars = (a.run_variance(), b.run_variance())
    seed_dfs = (a.seeds - 1, b.seeds - 1)
    nan = math.nan
    if reason:
        return Difference(delta, nan, nan, nan, n, (a.seeds, b.seeds), nan, nan, nan, seed_vars, seed_dfs, reason,
                          confidence=confidence)
    d = a.per_question - b.per_question
    # What the configurations do differently per question, less the per-run noise the seed means carry.
    tau2 = max(0.0, float(d.var(ddof=1)) - a.noise() / a.seeds - b.noise() / b.seeds)
    differing = int(np.count_nonzero(np.abs(d) > TIE))
    # The question part rests on the questions that differ at all: 5 of 3,000 differing are 5 observations.
    question_part = (tau2 / n, max(min(n, differing) - 1, 1))
    seed_parts = [(v / k, f) for v, k, f in zip(seed_vars, (a.seeds, b.seeds), seed_dfs, strict=True)]
    variance = question_part[0] + sum(v for v, _ in seed_parts)
    upper = [(v * f / _chi2_quantile(SEED_DF_QUANTILE, f), f) for v, f in seed_parts]
    df = _satterthwaite([question_part, *upper])
    se = math.sqrt(variance)
    if se == 0.0:  # every run of both sides scores every question alike: only a tie can get here
        return Difference(delta, delta, delta, 1.0, n, (a.seeds, b.seeds), 0.0, df, 0.0, seed_vars, seed_dfs,
                          confidence=confidence)
    t = _t_quantile(1 - (1 - confidence) / 2, df)
    p = float(min(1.0, 2 * special.stdtr(df, -abs(delta) / se)))
    return Difference(delta, delta - t * se, delta + t * se, p, n, (a.seeds, b.seeds), se, df, question_part[0],
                      seed_vars, seed_dfs, confidence=confidence)


def _no_verdict(a: Scores, b: Scores) -> str:
    if a.questions < 2:
        return "fewer than 2 questions"
    one = [s.label or side for s, side in ((a, "A"), (b, "B")) if s.seeds < 2]
    if one:
        return (f"{' and '.join(one)} {'has' if len(one) == 1 else 'have'} one seed: the difference cannot be told "
                "from seed noise")
    same = [s.label or side for s, side in ((a, "A"), (b, "B")) if s.identical_seeds()]
    if same:
        return (f"the seeds of {' and '.join(same)} scored every question alike, so their seed noise cannot be "
                "measured from this score")
    return ""


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: ``p_(j) * (m - j + 1)``, made monotone, capped at 1 (NaNs stay NaN and
    do not count). A family of comparisons keeps its chance of any false rejection at alpha."""
    finite = [(p, i) for i, p in enumerate(p_values) if math.isfinite(p)]
    m = len(finite)
    out = [math.nan] * len(p_values)
    running = 0.0
    for j, (p, i) in enumerate(sorted(finite)):
        running = max(running, min(1.0, (m - j) * p))
        out[i] = running
    return out


def against_best(configurations: Mapping[str, Scores], best: str,
                 confidence: float = 1 - ALPHA) -> dict[str, Difference]:
    """``best - other`` for every other configuration, Holm-adjusted over **every pair** of configurations:
    the best was chosen from the same scores it is tested on, and a family of all pairs holds its error
    rate whichever one came out best (comparing only best-vs-others at face value does not)."""
    labels = list(configurations)
    pairs = {(x, y): difference(configurations[x], configurations[y], confidence)
             for i, x in enumerate(labels) for y in labels[i + 1:]}
    adjusted = dict(zip(pairs, holm([d.p_value for d in pairs.values()]), strict=True))
    out = {}
    for other in labels:
        if other == best:
            continue
        key, flipped = ((best, other), False) if (best, other) in pairs else ((other, best), True)
        d = pairs[key]
        if flipped:
            d = Difference(-d.delta, -d.high, -d.low, d.p_value, d.n, d.seeds[::-1], d.se, d.df, d.question_var,
                           d.seed_vars[::-1], d.seed_dfs[::-1], d.reason, confidence=d.confidence)
        family = adjusted[key] if len(pairs) > 1 and not d.reason else None
        out[other] = Difference(**{**d.__dict__, "p_family": family, "pairs": len(pairs)})
    return out


def seeds_needed(diff: Difference, confidence: float = 0.9) -> tuple[int, int] | str:
    """Seeds per configuration (both sides alike) for a two-sided test at alpha to detect a difference of the
    observed size ``POWER`` of the time: a **range**, from the ``confidence`` interval of the measured seed
    variances (chi-square, Satterthwaite degrees of freedom) -- two seeds measure a variance to within a
    factor of hundreds, and one number from them would be a guess. A string says why there is no number:
    a tie, no measured seed spread, or a difference smaller than what the question sampling alone hides
    (then more dev questions are what it needs, not seeds)."""
    if diff.delta == 0.0:
        return "the difference is 0: no number of seeds would show it"
    if diff.reason:
        return diff.reason
    seed_sum = sum(diff.seed_vars)  # per-seed variance of the difference, seeds alike on both sides
    df = _satterthwaite(list(zip(diff.seed_vars, diff.seed_dfs, strict=True)))
    tail = (1 - confidence) / 2
    band = (seed_sum * df / _chi2_quantile(1 - tail, df), seed_sum * df / _chi2_quantile(tail, df))
    found = [_seeds_for(abs(diff.delta), diff.question_var, s, 1 - diff.confidence) for s in band]
    if found[0] is None:
        return ("question sampling alone hides a difference this small on these dev questions: more questions, "
                "not more seeds, would settle it")
    return found[0], found[1] if found[1] is not None else MAX_SEEDS


def _seeds_for(delta: float, question_var: float, seed_sum: float, alpha: float) -> int | None:
    """The smallest k (2..MAX_SEEDS) with (t_{1-alpha/2} + t_power)^2 (question_var + seed_sum / k) <= delta^2
    on 2k - 2 degrees of freedom; None when even MAX_SEEDS seeds fall short."""
    def enough(k: int) -> bool:
        df = 2 * k - 2
        z = _t_quantile(1 - alpha / 2, df) + _t_quantile(POWER, df)
        return z * z * (question_var + seed_sum / k) <= delta * delta

    if not enough(MAX_SEEDS):
        return None
    lo, hi = 2, MAX_SEEDS
    while lo < hi:  # enough() is monotone in k
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return lo


def points(x: float) -> str:
    """A difference of scores in points (0.0083 -> "+0.83")."""
    return f"{100 * x:+.2f}"


def settle_hint(diff: Difference) -> str:
    """What would settle a comparison that has no verdict."""
    if "one seed" in diff.reason:
        return "train 2 or more seeds of each (e.g. -m ... seed=1,2,3) and compare again"
    if "alike" in diff.reason:
        return ("seeds that differ in this score: train longer if every run scores alike (all 0 EM), or check "
                "that the seed reaches training")
    return "score more dev questions"


def verdict(diff: Difference, best: str, other: str, metric: str = "EM") -> str:
    """One sentence: is ``best`` really ahead of ``other``, with what the numbers count and what would settle it."""
    if diff.reason:
        return (f"no verdict: {diff.reason}; Δ{metric} {points(diff.delta)} points could be seed noise. To settle it: "
                f"{settle_hint(diff)}.")
    family = (f"; p = {diff.p_family:.4f} over the {diff.pairs} pairs of configurations (Holm), since the best was "
              "picked from these scores" if diff.p_family is not None else "")
    evidence = (f"Δ{metric} {points(diff.delta)} points, {round(100 * diff.confidence)}% interval "
                f"[{points(diff.low)}, {points(diff.high)}], p = {diff.p_value:.4f}{family}")
    if diff.significant:
        return f"real: {best} is ahead of {other}: {evidence} (questions and seeds both counted)."
    k = diff.seeds
    seeds = f"{k[0]} seeds each" if k[0] == k[1] else f"{k[0]} and {k[1]} seeds"
    need = seeds_needed(diff)
    need_text = (f"one of this size would need {need[0]}–{need[1] if need[1] < MAX_SEEDS else f'{MAX_SEEDS}+'} seeds "
                 "per configuration" if isinstance(need, tuple) else need)
    return (f"not established: {evidence} -- within seed noise and question sampling. With {seeds}, differences "
            f"under {100 * diff.detectable:.2f} {metric} points cannot be told apart; {need_text}.")


def flips(a: Sequence[float], b: Sequence[float]) -> tuple[list[int], list[int]]:
    """Indices of questions right in A but wrong in B, and right in B but wrong in A, from per-question EM
    averaged over seeds: right means right with every seed (1.0), wrong with none (0.0)."""
    pairs = list(zip(a, b, strict=True))
    return ([i for i, (x, y) in enumerate(pairs) if x == 1.0 and y == 0.0],
            [i for i, (x, y) in enumerate(pairs) if y == 1.0 and x == 0.0])


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
