"""Does "real" mean what it says? A seeded simulation of sweeps, checked against the verdict's error rates.

Each simulated dev set draws ``questions`` question difficulties from Beta(0.8, 0.2) (most questions
easy, a tail of hard ones, as with a fine-tuned BERT on DRCD). A run of a configuration answers
question ``i`` right with probability ``sigmoid(logit(p_i) + offset + u)``: ``u`` is the run's
**seed shift**, one draw per seed shared by every question (a seed moves many questions at once),
scaled so that it alone moves dev EM by ``spread`` points from seed to seed; each answer is then its
own Bernoulli draw (the per-question noise, about 0.5 EM points more at 3,000 questions). Scenarios:

* ``null``: two identical configurations -- any "real" verdict is false;
* ``null_per_question``: configurations that answer different questions (each gets its own
  per-question logit perturbation, N(0, 1)) with the same expected EM -- false again;
* ``truth``: B is A with every logit lowered so the expected EM is ``difference`` lower: the share
  called real is the power, and the share of intervals holding the true difference is the coverage;
* ``sweep``: ``configurations`` identical configurations compared as a sweep's report does (best by
  mean EM, each other one against it, Holm over all pairs) -- the share of sweeps with any "real" line.

Everything comes from ``numpy.random.default_rng(seed)``: the same call gives the same table.
``python -m extractive_qa.compare --calibrate`` prints it; the README's table is its output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np

from .significance import Scores, against_best, difference

POPULATION = 200_000  # question difficulties the dev sets are drawn from
SHIFT_DRAWS = 2_000  # seed shifts averaged over when a population quantity is solved for


@dataclass(frozen=True)
class Setting:
    seeds: int  # per configuration
    spread: float  # seed-to-seed std of dev EM the seed shift alone makes, as a fraction (0.009 = 0.9 points)
    questions: int


@dataclass(frozen=True)
class Rates:
    setting: Setting
    trials: int
    false_real: float  # identical configurations called real
    false_real_per_question: float  # same expected EM, different questions right: called real
    coverage: float  # intervals holding the true difference (nan with one seed: there is no interval)
    power: float  # a true difference called real
    difference: float  # that true difference


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class World:
    """The question population and the scale of the seed shift for a spread, solved once."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        p = np.clip(rng.beta(0.8, 0.2, POPULATION), 1e-4, 1 - 1e-4)
        self.logits = np.log(p / (1 - p))
        self._normal = np.random.default_rng(seed + 1).standard_normal(SHIFT_DRAWS)
        self._sample = self.logits[:20_000]

    def _em_std(self, scale: float) -> float:
        """Seed-to-seed std of expected EM when every logit moves by ``scale * N(0, 1)``."""
        u = scale * self._normal[:400]
        return float(np.array([_sigmoid(self._sample + x).mean() for x in u]).std())

    @cache  # noqa: B019 - a World lives as long as the table it makes
    def shift_scale(self, spread: float) -> float:
        """The std of the per-seed logit shift that moves expected dev EM by ``spread`` (bisection)."""
        if spread <= 0:
            return 0.0
        lo, hi = 0.0, 8.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self._em_std(mid) < spread else (lo, mid)
        return (lo + hi) / 2

    def expected_em(self, offset: float, scale: float) -> float:
        u = scale * self._normal[:200]
        return float(np.mean([_sigmoid(self._sample + offset + x).mean() for x in u]))

    @cache  # noqa: B019
    def offset_for(self, difference: float, scale: float) -> float:
        """The logit offset that lowers expected EM by ``difference`` (bisection)."""
        target = self.expected_em(0.0, scale) - difference
        lo, hi = -4.0, 0.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.expected_em(mid, scale) > target else (mid, hi)
        return (lo + hi) / 2


def _runs(rng: np.random.Generator, logits: np.ndarray, seeds: int, scale: float) -> Scores:
    shifts = scale * rng.standard_normal(seeds)
    p = _sigmoid(logits[None, :] + shifts[:, None])
    return Scores((rng.random(p.shape) < p).astype(np.float64))


def rates(world: World, setting: Setting, trials: int, difference_: float = 0.01, seed: int = 0) -> Rates:
    """Every scenario but ``sweep`` for one setting, ``trials`` simulated comparisons each."""
    rng = np.random.default_rng([seed, setting.seeds, round(setting.spread * 1e5), setting.questions])
    scale = world.shift_scale(setting.spread)
    offset = world.offset_for(difference_, scale)
    truth = world.expected_em(0.0, scale) - world.expected_em(offset, scale)
    false = false_q = called = covered = 0
    for _ in range(trials):
        logits = rng.choice(world.logits, setting.questions)
        false += difference(_runs(rng, logits, setting.seeds, scale),
                            _runs(rng, logits, setting.seeds, scale)).significant
        own_a, own_b = rng.standard_normal(setting.questions), rng.standard_normal(setting.questions)
        false_q += difference(_runs(rng, logits + own_a, setting.seeds, scale),
                              _runs(rng, logits + own_b, setting.seeds, scale)).significant
        d = difference(_runs(rng, logits, setting.seeds, scale), _runs(rng, logits + offset, setting.seeds, scale))
        called += d.significant
        covered += d.low <= truth <= d.high
    return Rates(setting, trials, false / trials, false_q / trials,
                 covered / trials if setting.seeds > 1 else math.nan, called / trials, truth)


def sweep_false_real(world: World, setting: Setting, configurations: int, trials: int, seed: int = 0) -> float:
    """Share of sweeps of ``configurations`` identical configurations whose report shows any "real" line."""
    rng = np.random.default_rng([seed, 7, setting.seeds, round(setting.spread * 1e5), setting.questions])
    scale = world.shift_scale(setting.spread)
    hits = 0
    for _ in range(trials):
        logits = rng.choice(world.logits, setting.questions)
        configs = {f"c{j}": _runs(rng, logits, setting.seeds, scale) for j in range(configurations)}
        best = max(configs, key=lambda c: configs[c].mean)
        hits += any(d.significant for d in against_best(configs, best).values())
    return hits / trials


def table(seeds=(1, 2, 3, 5, 10), spreads=(0.0, 0.009, 0.015, 0.02), questions=(3000,), trials: int = 1000,
          difference_: float = 0.01, seed: int = 0) -> Iterator[Rates]:
    world = World(seed)
    for n in questions:
        for spread in spreads:
            for k in seeds:
                yield rates(world, Setting(k, spread, n), trials, difference_, seed)


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}%"


def report(trials: int = 1000, questions: int = 3000, seed: int = 0) -> Iterator[str]:
    """The calibration table as markdown lines, printed as they are computed (a few minutes at 1,000 trials)."""
    yield (f"Calibration: {trials} simulated comparisons per row, {questions} questions, seed {seed} "
           "(python -m extractive_qa.compare --calibrate). Verdicts at alpha 0.05; targets: false 'real' <= 5%, "
           "coverage >= 93%.")
    yield ""
    yield ("| seeds per configuration | seed spread (EM points) | false 'real': identical configurations | "
           "false 'real': same EM, different questions right | coverage of a true +1 point | "
           "power: +1 point called real |")
    yield "| --- | --- | --- | --- | --- | --- |"
    world = World(seed)
    for spread in (0.0, 0.009, 0.015, 0.02):
        for k in (1, 2, 3, 5, 10):
            r = rates(world, Setting(k, spread, questions), trials, 0.01, seed)
            yield (f"| {k} | {100 * spread:.1f} | {_pct(r.false_real)} | {_pct(r.false_real_per_question)} | "
                   f"{_pct(r.coverage)} | {_pct(r.power)} |")
    yield ""
    yield "| power: a true difference called real | seeds | seed spread | rate |"
    yield "| --- | --- | --- | --- |"
    for k, spread, diff in ((5, 0.01, 0.02), (3, 0.01, 0.02), (10, 0.01, 0.02), (5, 0.01, 0.01), (5, 0.015, 0.02)):
        r = rates(world, Setting(k, spread, questions), trials, diff, seed)
        yield f"| +{100 * diff:.0f} points | {k} | {100 * spread:.1f} | {_pct(r.power)} |"
    yield ""
    sweeps = max(trials // 4, 50)
    yield (f"| sweep of 6 identical configurations ({sweeps} sweeps each) | seeds | seed spread | "
           "sweeps with a 'real' line |")
    yield "| --- | --- | --- | --- |"
    for k in (1, 2, 3, 5):
        for spread in (0.009, 0.015):
            rate = sweep_false_real(world, Setting(k, spread, questions), 6, sweeps, seed)
            yield f"| 6 configurations | {k} | {100 * spread:.1f} | {_pct(rate)} |"
