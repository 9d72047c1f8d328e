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

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import special

ALPHA = 0.05  # the error rate every verdict is calibrated to
POWER = 0.8  # "could be told apart": detected in 4 of 5 repetitions
SEED_DF_QUANTILE = 0.25  # seed variances at their 75% upper bound when computing degrees of freedom (see above)
TIE = 1e-12  # |delta| below this is a tie: sums of the same scores in another order differ by ~1e-16
MAX_SEEDS = 10_000  # seeds_needed stops counting here


@dataclass(frozen=True)
class Scores:
    """One configuration's per-question scores, one row per seed (run), columns the shared questions; ``clusters``:
    each question's paragraph (an integer code), the sampling unit of the question part (None: questions alone)."""

    matrix: np.ndarray  # k x n
    label: str = ""
    clusters: np.ndarray | None = None  # n integer codes 0..G-1

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

    def without(self, rows: Sequence[int]) -> Scores:
        """These scores without the runs (rows) named."""
        keep = [r for r in range(self.seeds) if r not in set(rows)]
        return Scores(self.matrix[keep], self.label, self.clusters)


def scores(runs: Sequence[Sequence[float]], label: str = "", clusters: Sequence | None = None) -> Scores:
    """``runs[r][i]``: seed ``r``'s score on question ``i``; ``clusters[i]``: question ``i``'s paragraph (any hashable
    key: the record's context), or None. Every score must be a finite number: a NaN would silently turn every
    statistic into NaN (or, in a resampling test, into p = 0.0001)."""
    matrix = np.asarray(runs, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"{label or 'scores'}: expected one row of per-question scores per seed, got shape "
                         f"{matrix.shape}")
    bad = np.argwhere(~np.isfinite(matrix))
    if len(bad):
        r, i = (int(x) for x in bad[0])
        raise ValueError(f"{label or 'scores'}: seed {r} has a non-finite score ({matrix[r, i]}) for question {i} "
                         f"({len(bad)} such scores)")
    codes = None
    if clusters is not None:
        keys = list(clusters)
        if len(keys) != matrix.shape[1]:
            raise ValueError(f"{label or 'scores'}: {len(keys)} cluster keys for {matrix.shape[1]} questions")
        codes = np.unique(np.asarray([str(k) for k in keys]), return_inverse=True)[1].astype(np.int64)
    return Scores(matrix, label, codes)


@dataclass(frozen=True)
class Difference:
    """``A - B``: the mean over seeds and questions, its interval and p-value over seeds and questions. In a sweep
    (``family`` configurations, 3 or more) the interval and the p-value are simultaneous over every pair of them
    (:func:`against_best`): the interval excludes 0 exactly when the verdict says real."""

    delta: float
    low: float  # confidence interval of delta (nan when there is no verdict); simultaneous in a sweep
    high: float
    p_value: float  # two-sided, this pair alone
    n: int  # questions
    seeds: tuple[int, int]  # (A, B)
    se: float  # standard error of delta
    df: float  # degrees of freedom of the t reference distribution
    question_var: float  # Var(q_A - q_B) / n: the question-sampling part of se^2 (cluster-robust with paragraphs)
    seed_vars: tuple[float, float]  # s2_A, s2_B: run-level variance across each side's seeds (pooled: the same)
    seed_dfs: tuple[int, int]
    reason: str = ""  # why no verdict can be given ("" when one can)
    pairs: int = 1  # pairs of configurations the family holds
    confidence: float = 1 - ALPHA
    family: int = 2  # configurations compared at once (2: a single pair)
    critical: float = math.nan  # the multiplier of se the interval and the verdict use
    pooled: bool = False  # the seed variance is the sweep's pooled one (their spreads agreed)
    step_size: int = 0  # in a step-down family: the configurations not yet set apart at this line's step
    clusters: int = 0  # paragraphs the question part was counted over (0: questions alone)

    @functools.cached_property
    def p_family(self) -> float | None:
        """The p-value simultaneous over the sweep's pairs (None: a single comparison, or no verdict). Computed when
        asked: the studentized range's tail costs ~10 ms, and the verdict needs only the interval."""
        if self.family <= 2 or self.reason or not math.isfinite(self.se):
            return None
        if self.se == 0.0:
            return 1.0
        # A step-down line's p: the range of its step's configurations at the t its critical value stands for
        # (a line after the stop carries the stopping line's critical value, and so at least its p).
        size = self.step_size or self.family
        t = max(abs(self.delta) / self.se, 0.0)
        p = family_p(t, size, self.df)
        if self.step_size:  # never below what the critical value it was decided at implies (alpha at the boundary)
            at_critical = family_p(self.critical, size, self.df)
            p = max(p, at_critical) if abs(self.delta) <= self.critical * self.se else p
        return p

    @property
    def p(self) -> float:
        """The p-value the verdict uses: simultaneous over the sweep's pairs when there are several."""
        return self.p_value if self.p_family is None else self.p_family

    @property
    def significant(self) -> bool:
        """Real at the calibrated level: a verdict can be given and the interval excludes 0 (``p < alpha``)."""
        return not self.reason and math.isfinite(self.se) and abs(self.delta) > self.critical * self.se

    @property
    def detectable(self) -> float:
        """The smallest difference these seeds and questions tell apart ``POWER`` of the time at the level the
        verdict uses (the family's critical value in a sweep): ``(critical + t_power) * se``. NaN without a
        verdict."""
        if self.reason or not math.isfinite(self.se):
            return math.nan
        return float((self.critical + _t_quantile(POWER, self.df)) * self.se)


def _t_quantile(q: float, df: float) -> float:
    """Student t quantile (scipy.special: 50x faster than scipy.stats, which the calibration calls 10^5 times)."""
    return float(special.stdtrit(df, q)) if math.isfinite(df) else float(special.ndtri(q))


def _chi2_quantile(q: float, df: float) -> float:
    return float(special.chdtri(df, 1 - q))


def _satterthwaite(parts: Sequence[tuple[float, float]]) -> float:
    total = sum(v for v, _ in parts)
    den = sum(v * v / f for v, f in parts if v > 0)
    return total * total / den if den > 0 else math.inf


# ---------------------------------------------------------------- the family of a sweep's configurations
# Degrees of freedom the studentized range quantile is cached at; a df between two is rounded down (a larger,
# conservative quantile). scipy's ppf takes ~0.2 s, and a calibration asks for thousands.
_DF_GRID = (*range(1, 31), 32, 36, 40, 45, 50, 60, 70, 80, 100, 120, 150, 200, 300, 500, 1000)


@functools.cache
def _range_quantile(k: int, df: float, confidence: float) -> float:
    from scipy.stats import studentized_range

    return float(studentized_range.ppf(confidence, k, df)) / math.sqrt(2)


def family_critical(k: int, df: float, confidence: float = 1 - ALPHA) -> float:
    """The multiplier of a pair's standard error for intervals simultaneous over every pair of ``k`` configurations:
    Tukey-Kramer's studentized range quantile ``q(k, df) / sqrt(2)`` (with each pair's own standard error and
    degrees of freedom: the Games-Howell procedure). For ``k = 2`` it is Student's ``t``. Why not Holm, as before:
    Holm's p-values come from a step-down procedure with no intervals of its own, and a sweep's line showed an
    unadjusted interval that excluded 0 beside a Holm p that said "not established"."""
    if k <= 2:
        return _t_quantile(1 - (1 - confidence) / 2, df)
    return _range_quantile(k, _grid_df(df), round(confidence, 10))


def _grid_df(df: float) -> float:
    """``df`` rounded down to :data:`_DF_GRID` (the interval and the family p-value use the same)."""
    if not math.isfinite(df) or df > _DF_GRID[-1]:
        return float(_DF_GRID[-1])
    return float(max((g for g in _DF_GRID if g <= df), default=1))


def family_p(t: float, k: int, df: float) -> float:
    """The simultaneous p-value of a pair's ``|t|`` in a family of ``k`` configurations (studentized range, on the
    same rounded degrees of freedom as :func:`family_critical`: p < alpha exactly when the interval excludes 0)."""
    if k <= 2:
        return float(min(1.0, 2 * special.stdtr(df, -abs(t))))
    from scipy.stats import studentized_range

    return float(studentized_range.sf(abs(t) * math.sqrt(2), k, _grid_df(df)))


POOL_P = 0.05  # pool the seed variances unless Bartlett's test says their spreads differ (p below this)


class SeedPool(NamedTuple):
    """A sweep's seed variance pooled over its configurations, its degrees of freedom, and whether their spreads
    agree (Bartlett): then both sides of every comparison take it; if not, it is the least a side's variance is
    taken to be (:func:`difference`)."""

    var: float
    df: int
    agree: bool = True


def pooled_seed_variance(configurations: Sequence[Scores]) -> SeedPool | None:
    """The sweep's seed variance, pooled over its configurations, and its degrees of freedom -- when there are at
    least two configurations with 2+ seeds that moved their scores. Pooling turns 1 degree of freedom per
    configuration (2 seeds) into the sweep's sum: the seed part is then known to within a factor of a few, not
    hundreds, and the verdicts gain the power they lose to it (a sweep of 6 configurations with 5 seeds: README,
    "Calibration"). When Bartlett's test says the spreads differ (``p < POOL_P``) the pool is marked so: each side then
    keeps its own variance where it is larger -- spreads that only look unequal by chance would otherwise give the
    configurations that came out steady too small an error (a sweep's false lines went from 5% to 11% in those
    sweeps, simulated)."""
    from scipy.stats import bartlett

    eligible = [c for c in configurations if c.seeds >= 2 and not c.identical_seeds()]
    if len(eligible) < 2:
        return None
    means = [c.matrix.mean(axis=1) for c in eligible]
    agree = not (all(float(m.var()) > 0 for m in means) and bartlett(*means).pvalue < POOL_P)
    dfs = [c.seeds - 1 for c in eligible]
    # Each configuration's raw variance, pooled, then floored once at the per-question noise a run's score carries:
    # flooring each one first (as one configuration alone is) biases the pooled value upward -- the floor binds for a
    # good share of 2-5-seed variances.
    raw = sum(float(m.var(ddof=1)) * f for m, f in zip(means, dfs, strict=True)) / sum(dfs)
    floor = float(np.mean([c.noise() / max(c.questions, 1) for c in eligible]))
    return SeedPool(max(raw, floor), sum(dfs), agree)


def _question_part(a: Scores, b: Scores, d: np.ndarray) -> tuple[float, float, int]:
    """Var(q_A - q_B) / n and its degrees of freedom: the paired per-question differences' variance less the per-run
    noise the seed means carry -- counted over paragraphs (cluster-robust, CR1) when the questions have them, since a
    configuration that reads a paragraph better gets several of its questions right together. The third value is
    the number of paragraphs (0: questions alone)."""
    n = len(d)
    noise = a.noise() / a.seeds + b.noise() / b.seeds
    differing = np.abs(d) > TIE
    clusters = a.clusters if a.clusters is not None else b.clusters
    if clusters is None:
        tau2 = max(0.0, float(d.var(ddof=1)) - noise)
        # The question part rests on the questions that differ at all: 5 of 3,000 differing are 5 observations.
        return tau2 / n, max(min(n, int(differing.sum())) - 1, 1), 0
    groups = int(clusters.max()) + 1
    sums = np.bincount(clusters, weights=d - d.mean(), minlength=groups)
    robust = groups / max(groups - 1, 1) * float(np.square(sums).sum()) / (n * n)
    varying = int(np.count_nonzero(np.bincount(clusters, weights=differing.astype(float), minlength=groups)))
    return max(0.0, robust - noise / n), max(min(groups, varying) - 1, 1), groups


def difference(a: Scores, b: Scores, confidence: float = 1 - ALPHA, pooled: SeedPool | tuple | None = None,
               family: int = 2) -> Difference:
    """``A - B`` over the same questions (columns) with both sources of noise (see the module docstring).
    ``pooled``: the sweep's seed variance and its degrees of freedom (:func:`pooled_seed_variance`) for both sides;
    ``family``: the configurations compared at once -- the interval is then simultaneous over all their pairs."""
    if a.questions != b.questions:
        raise ValueError(f"paired scores need the same questions: {a.label or 'A'} has {a.questions}, "
                         f"{b.label or 'B'} has {b.questions}")
    n = a.questions
    delta = a.mean - b.mean if n else 0.0
    if abs(delta) < TIE:
        delta = 0.0
    if pooled is not None and not isinstance(pooled, SeedPool):
        pooled = SeedPool(*pooled)
    if pooled is not None and not pooled.agree:  # each side its own spread where larger, the pool's at the least
        sides = [(s.run_variance(), s.seeds - 1) if s.seeds >= 2 and s.run_variance() > pooled.var
                 else (pooled.var, pooled.df) for s in (a, b)]
        seed_vars, seed_dfs = (sides[0][0], sides[1][0]), (sides[0][1], sides[1][1])
        pooled_both = None
    else:
        pooled_both = pooled
        seed_vars = (pooled.var, pooled.var) if pooled else (a.run_variance(), b.run_variance())
        seed_dfs = (pooled.df, pooled.df) if pooled else (a.seeds - 1, b.seeds - 1)
    reason = _no_verdict(a, b, pooled is not None)
    pairs = family * (family - 1) // 2
    nan = math.nan
    extra = {"confidence": confidence, "family": family, "pairs": pairs, "pooled": pooled_both is not None}
    if reason:
        return Difference(delta, nan, nan, nan, n, (a.seeds, b.seeds), nan, nan, nan, seed_vars, seed_dfs, reason,
                          **extra)
    d = a.per_question - b.per_question
    question_var, question_df, groups = _question_part(a, b, d)
    seeds = (a.seeds, b.seeds)
    if pooled_both is not None:  # one variance, known on the sweep's degrees of freedom
        part = pooled_both.var * (1 / seeds[0] + 1 / seeds[1])
        df_pool = pooled_both.df
        seed_parts, upper = [(part, df_pool)], [(part * df_pool / _chi2_quantile(SEED_DF_QUANTILE, df_pool), df_pool)]
    else:
        seed_parts = [(v / k, f) for v, k, f in zip(seed_vars, seeds, seed_dfs, strict=True)]
        upper = [(v * f / _chi2_quantile(SEED_DF_QUANTILE, f), f) for v, f in seed_parts]
    variance = question_var + sum(v for v, _ in seed_parts)
    df = _satterthwaite([(question_var, question_df), *upper])
    se = math.sqrt(variance)
    critical = family_critical(family, df, confidence)
    extra["clusters"] = groups
    if se == 0.0:  # every run of both sides scores every question alike: only a tie can get here
        return Difference(delta, delta, delta, 1.0, n, seeds, 0.0, df, 0.0, seed_vars, seed_dfs, critical=critical,
                          **extra)
    p = float(min(1.0, 2 * special.stdtr(df, -abs(delta) / se)))
    return Difference(delta, delta - critical * se, delta + critical * se, p, n, seeds, se, df, question_var,
                      seed_vars, seed_dfs, critical=critical, **extra)


def _no_verdict(a: Scores, b: Scores, pooled: bool = False) -> str:
    if a.questions < 2:
        return "fewer than 2 questions"
    one = [s.label or side for s, side in ((a, "A"), (b, "B")) if s.seeds < 2]
    if one and not pooled:
        return (f"{' and '.join(one)} {'has' if len(one) == 1 else 'have'} one seed: the difference cannot be told "
                "from seed noise")
    if one and pooled and (a.seeds + b.seeds < 3):
        return "one seed each: the difference cannot be told from seed noise"
    same = [s.label or side for s, side in ((a, "A"), (b, "B")) if s.identical_seeds()]
    if len(same) == 2 or (same and not pooled):
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


def against_best(configurations: Mapping[str, Scores], best: str, confidence: float = 1 - ALPHA,
                 pool: bool = True, step_down: bool = True, family: int | None = None,
                 pooled: tuple[float, int] | None = None) -> dict[str, Difference]:
    """``best - other`` for every other configuration, with intervals and p-values that hold for the family of all
    the configurations: the best was chosen from the same scores it is tested on.

    Step down (``step_down``, the default): the lines are taken from the largest ``t`` down; the first is tested with
    the studentized range of all ``k`` configurations (:func:`family_critical`: what holds the chance of any false
    line at alpha when every configuration is alike, the best picked among them), the next with the range of the
    ``k - 1`` not yet set apart, and so on; at the first line that falls short every later line is not established,
    and keeps that line's critical value -- so on every line the interval excludes 0 exactly when it says real. What
    that adds over one critical value for all: in a sweep of 6 configurations with 5 seeds, a true best by +2 points
    is real in a third more of its lines; simulated, the chance of any false line stays at alpha when configurations
    tie at the top (README, "Calibration"). ``step_down=False``: Tukey-Kramer's single step.

    The seed variance is pooled over the configurations when their spreads agree (``pool``,
    :func:`pooled_seed_variance`). A race passes ``family`` (all its configurations, dropped ones included: the
    first step's range) and ``pooled`` (over all of them)."""
    labels = list(configurations)
    if pooled is None and pool and len(labels) >= 2:
        pooled = pooled_seed_variance(list(configurations.values()))
    family = family or len(labels)
    lines = {other: difference(configurations[best], configurations[other], confidence, pooled, family)
             for other in labels if other != best}
    if not step_down or family <= 2:
        return lines
    order = sorted((o for o in lines if not lines[o].reason and lines[o].se > 0),
                   key=lambda o: lines[o].delta / lines[o].se, reverse=True)
    out, stop = dict(lines), None
    for step, other in enumerate(order):
        d = lines[other]
        size = family - step  # the configurations not yet set apart, the best among them
        critical = family_critical(size, d.df, confidence) if stop is None else stop
        out[other] = _with_critical(d, critical, size)
        if stop is None and not (abs(d.delta) > critical * d.se):
            stop = critical  # every later line: not established, at this line's critical value
    return out


def _with_critical(d: Difference, critical: float, size: int) -> Difference:
    """``d`` with its interval at ``critical`` standard errors (a step of :func:`against_best`)."""
    import dataclasses

    return dataclasses.replace(d, low=d.delta - critical * d.se, high=d.delta + critical * d.se, critical=critical,
                               step_size=size)


def seeds_needed(diff: Difference, confidence: float = 0.9) -> tuple[int, int] | str:
    """Seeds per configuration (both sides alike) to detect a difference of the observed size ``POWER`` of the time
    at the level the verdict uses (the family's critical value in a sweep): a **range**, from the ``confidence``
    interval of the measured seed variances (chi-square, Satterthwaite degrees of freedom) -- two seeds measure a
    variance to within a factor of hundreds, and one number from them would be a guess. Never fewer than one more
    than were trained: what was trained did not settle it. A string says why there is no number: a tie, no measured
    seed spread, or a difference smaller than what the question sampling alone hides (then more dev questions are
    what it needs, not seeds)."""
    if diff.delta == 0.0:
        return "the difference is 0: no number of seeds would show it"
    if diff.reason:
        return diff.reason
    seed_sum = sum(diff.seed_vars)  # per-seed variance of the difference, seeds alike on both sides
    df = _satterthwaite(list(zip(diff.seed_vars, diff.seed_dfs, strict=True)))
    tail = (1 - confidence) / 2
    band = (seed_sum * df / _chi2_quantile(1 - tail, df), seed_sum * df / _chi2_quantile(tail, df))
    found = [_seeds_for(abs(diff.delta), diff.question_var, s, diff) for s in band]
    if found[0] is None:
        return ("question sampling alone hides a difference this small on these dev questions: more questions, "
                "not more seeds, would settle it")
    trained = max(diff.seeds) + (0 if diff.significant else 1)
    high = found[1] if found[1] is not None else MAX_SEEDS
    return max(found[0], trained), max(high, trained)


def _seeds_for(delta: float, question_var: float, seed_sum: float, diff: Difference) -> int | None:
    """The smallest k (2..MAX_SEEDS) with (critical + t_power)^2 (question_var + seed_sum / k) <= delta^2, on the
    degrees of freedom k seeds would give (pooled over the sweep when ``diff`` was); None when even MAX_SEEDS seeds
    fall short."""
    extra = max(diff.seed_dfs[0] - (diff.seeds[0] - 1), 0) if diff.pooled else 0  # other configurations' dfs

    def enough(k: int) -> bool:
        df = 2 * k - 2 + extra
        z = family_critical(diff.family, df, diff.confidence) + _t_quantile(POWER, df)
        return z * z * (question_var + seed_sum / k) <= delta * delta

    if not enough(MAX_SEEDS):
        return None
    lo, hi = 2, MAX_SEEDS
    while lo < hi:  # enough() is monotone in k
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return lo


FAILED_GAP = 0.05  # a run this far below its configuration's others (5 points) may be a failed run ...
FAILED_SPREADS = 4.0  # ... when it is also this many of the sweep's robust seed-to-seed deviations below


def failed_runs(configurations: Mapping[str, Scores]) -> dict[str, list[tuple[int, float]]]:
    """Runs far below their configuration's others -- a fine-tuning seed that never took off (Dodge et al. 2020,
    Mosbach et al. 2021): ``{configuration: [(run row, its gap below the median of its siblings), ...]}``. Far means
    more than :data:`FAILED_GAP` and more than :data:`FAILED_SPREADS` robust deviations of the sweep's seed-to-seed
    spread (1.4826 x the median absolute deviation of every run from its configuration's median, floored at the
    per-question noise a run's score carries). Needs 3 seeds in a configuration: of two, neither is the odd one.
    Named, never dropped: every run counts in the comparison (what a user gets includes the runs that fail)."""
    eligible = {label: c for label, c in configurations.items() if c.seeds >= 3}
    if not eligible:
        return {}
    deviations = np.concatenate([np.abs(c.matrix.mean(axis=1) - np.median(c.matrix.mean(axis=1)))
                                 for c in eligible.values()])
    floor = math.sqrt(float(np.mean([c.noise() / max(c.questions, 1) for c in eligible.values()])))
    spread = max(1.4826 * float(np.median(deviations)), floor)
    found: dict[str, list[tuple[int, float]]] = {}
    for label, c in eligible.items():
        means = c.matrix.mean(axis=1)
        for r in range(c.seeds):
            gap = float(np.median(np.delete(means, r)) - means[r])
            if gap > max(FAILED_GAP, FAILED_SPREADS * spread):
                found.setdefault(label, []).append((r, gap))
    return found


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
    simultaneous = f" simultaneous over the {diff.pairs} pairs" if diff.p_family is not None else ""
    family = (f"; p = {diff.p_family:.4f} over the {diff.family} configurations (studentized range, stepped down), "
              "since the best was picked from these scores" if diff.p_family is not None else "")
    counted = "paragraphs" if diff.clusters else "questions"
    pooled = f", the seed spread pooled over the {diff.family} configurations" if diff.pooled else ""
    evidence = (f"Δ{metric} {points(diff.delta)} points, {round(100 * diff.confidence)}% interval{simultaneous} "
                f"[{points(diff.low)}, {points(diff.high)}], p = {diff.p_value:.4f}{family}")
    if diff.significant:
        return f"real: {best} is ahead of {other}: {evidence} ({counted} and seeds both counted{pooled})."
    k = diff.seeds
    seeds = f"{k[0]} seeds each" if k[0] == k[1] else f"{k[0]} and {k[1]} seeds"
    need = seeds_needed(diff)
    need_text = (f"one of this size would need {need[0]}–{need[1] if need[1] < MAX_SEEDS else f'{MAX_SEEDS}+'} seeds "
                 "per configuration" if isinstance(need, tuple) else need)
    return (f"not established: {evidence} -- within seed noise and question sampling ({counted} and seeds both "
            f"counted{pooled}). With {seeds}, differences under {100 * diff.detectable:.2f} {metric} points cannot be "
            f"told apart; {need_text}.")


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
