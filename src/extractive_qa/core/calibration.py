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

from .significance import Difference, Scores, against_best, difference, pooled_seed_variance

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


def pair(a: Scores, b: Scores) -> Difference:
    """``A - B`` as ``compare A B`` and a sweep's report make it: the seed spread pooled over the two when it agrees."""
    return difference(a, b, pooled=pooled_seed_variance([a, b]))


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
        false += pair(_runs(rng, logits, setting.seeds, scale),
                            _runs(rng, logits, setting.seeds, scale)).significant
        own_a, own_b = rng.standard_normal(setting.questions), rng.standard_normal(setting.questions)
        false_q += pair(_runs(rng, logits + own_a, setting.seeds, scale),
                              _runs(rng, logits + own_b, setting.seeds, scale)).significant
        d = pair(_runs(rng, logits, setting.seeds, scale), _runs(rng, logits + offset, setting.seeds, scale))
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
    yield from report_issue42(trials, seed)


# ---------------------------------------------------------------- issue 42's settings
def _clustered(rng: np.random.Generator, base: np.ndarray, paragraph: np.ndarray, sd_paragraph: float,
               sd_question: float) -> np.ndarray:
    """A configuration's own logits: what it reads better or worse, per paragraph (shared by its questions) and per
    question -- zero-mean, so two configurations drawn alike have the same expected EM over the population."""
    groups = int(paragraph.max()) + 1
    return base + sd_paragraph * rng.standard_normal(groups)[paragraph] + sd_question * rng.standard_normal(len(base))


def clustered_rates(world: World, seeds: int, spread: float, paragraphs: int, per_paragraph: int, trials: int,
                    use_clusters: bool = True, sd_paragraph: float = 0.6, sd_question: float = 0.4,
                    seed: int = 0) -> dict:
    """Two configurations with the same expected EM that read paragraphs differently (logit effects per paragraph and
    per question): the share called real (false) and the share of intervals holding 0 (coverage). ``use_clusters``:
    the comparison counts paragraphs (False: questions alone, as before issue 42)."""
    rng = np.random.default_rng([seed, 42, seeds, paragraphs, per_paragraph, int(use_clusters)])
    scale = world.shift_scale(spread)
    paragraph = np.repeat(np.arange(paragraphs), per_paragraph)
    false = covered = 0
    for _ in range(trials):
        base = rng.choice(world.logits, paragraphs * per_paragraph)
        a = _runs(rng, _clustered(rng, base, paragraph, sd_paragraph, sd_question), seeds, scale)
        b = _runs(rng, _clustered(rng, base, paragraph, sd_paragraph, sd_question), seeds, scale)
        if use_clusters:
            a, b = Scores(a.matrix, clusters=paragraph), Scores(b.matrix, clusters=paragraph)
        d = pair(a, b)
        false += d.significant
        covered += d.low <= 0 <= d.high
    return {"false_real": false / trials, "coverage": covered / trials}


def _runs_with_failures(rng: np.random.Generator, logits: np.ndarray, seeds: int, scale: float, share: float,
                        drops: list[float]) -> Scores:
    """Runs of which each fails with probability ``share``: its whole score lowered by one of ``drops`` (logit
    offsets that take 5-30 EM points), as a fine-tuning seed that never took off."""
    shifts = scale * rng.standard_normal(seeds)
    failed = rng.random(seeds) < share
    shifts = shifts + np.where(failed, rng.choice(drops, seeds), 0.0)
    p = _sigmoid(logits[None, :] + shifts[:, None])
    return Scores((rng.random(p.shape) < p).astype(np.float64))


def failed_run_rates(world: World, seeds: int, spread: float, questions: int, share: float, trials: int,
                     difference_: float = 0.0, seed: int = 0) -> dict:
    """Configurations whose runs fail ``share`` of the time: the share called real (false when ``difference_`` is
    0, power otherwise). Every run counts: what a user gets includes the runs that fail."""
    rng = np.random.default_rng([seed, 43, seeds, round(share * 100), round(difference_ * 1e4)])
    scale = world.shift_scale(spread)
    drops = [world.offset_for(x, scale) for x in (0.05, 0.1, 0.2, 0.3)]
    offset = world.offset_for(difference_, scale) if difference_ else 0.0
    called = 0
    for _ in range(trials):
        logits = rng.choice(world.logits, questions)
        d = pair(_runs_with_failures(rng, logits, seeds, scale, share, drops),
                 _runs_with_failures(rng, logits + offset, seeds, scale, share, drops))
        called += d.significant and d.delta > 0 if difference_ else d.significant
    return {"real": called / trials}


def unequal_rates(world: World, seeds: tuple[int, int], spread: float, questions: int, trials: int,
                  difference_: float = 0.0, seed: int = 0) -> dict:
    """``seeds[0]`` against ``seeds[1]`` seeds: the share called real and the coverage of the true difference."""
    rng = np.random.default_rng([seed, 44, *seeds, round(difference_ * 1e4)])
    scale = world.shift_scale(spread)
    offset = world.offset_for(difference_, scale) if difference_ else 0.0
    truth = world.expected_em(0.0, scale) - world.expected_em(offset, scale) if difference_ else 0.0
    called = covered = 0
    for _ in range(trials):
        logits = rng.choice(world.logits, questions)
        d = pair(_runs(rng, logits, seeds[0], scale), _runs(rng, logits + offset, seeds[1], scale))
        called += d.significant
        covered += d.low <= truth <= d.high
    return {"real": called / trials, "coverage": covered / trials}


def sweep_lines(world: World, configurations: int, seeds: int, spread: float, questions: int, trials: int,
                best_by: float = 0.0, pool: bool = True, seed: int = 0) -> dict:
    """Sweeps of ``configurations``: one better by ``best_by`` than the others (identical to each other; all
    identical when 0). ``lines_real``: the share of the best's lines called real (the true best picked and ahead);
    ``any_real``: sweeps with any real line (false when ``best_by`` is 0); ``consistent``: lines whose interval
    excludes 0 exactly when they say real."""
    rng = np.random.default_rng([seed, 45, configurations, seeds, round(spread * 1e5), round(best_by * 1e4),
                                 int(pool)])
    scale = world.shift_scale(spread)
    offset = world.offset_for(best_by, scale) if best_by else 0.0
    lines = real = any_real = consistent = 0
    for _ in range(trials):
        logits = rng.choice(world.logits, questions)
        configs = {f"c{j}": _runs(rng, logits + (0.0 if j == 0 else offset), seeds, scale)
                   for j in range(configurations)}
        best = max(configs, key=lambda c: configs[c].mean)
        out = against_best(configs, best, pool=pool)
        lines += len(out)
        real += sum(d.significant for d in out.values()) if best == "c0" or not best_by else 0
        any_real += any(d.significant for d in out.values())
        consistent += sum(d.significant == (d.low > 0 or d.high < 0) for d in out.values())
    return {"lines_real": real / lines, "any_real": any_real / trials, "consistent": consistent / lines}


def _race_once(rng: np.random.Generator, logits: np.ndarray, offsets: list[float], scale: float,
               settings, share: float, drops: list[float]) -> tuple[bool, str, int, int]:
    from .racing import look, next_seeds

    labels = [f"c{j}" for j in range(len(offsets))]
    rows = {c: [] for c in labels}

    def train(c: str, n: int) -> None:
        rows[c].extend(_runs_with_failures(rng, logits + offsets[labels.index(c)], n, scale, share, drops).matrix)

    for c in labels:
        train(c, settings.first_seeds)
    alive, runs = list(labels), len(labels) * settings.first_seeds
    for number in range(1, settings.looks + 1):
        configs = {c: Scores(np.array(rows[c])) for c in labels}
        seen = look(configs, alive, number, settings)
        alive = [c for c in alive if c not in seen.dropped]
        if seen.established:
            return True, seen.best, runs, len(labels) - len(alive)
        more = next_seeds(seen, alive, {c: len(rows[c]) for c in labels}, settings, runs)
        if not more:
            break
        for c, k in more.items():
            runs += k - len(rows[c])
            train(c, k - len(rows[c]))
    return False, max(alive, key=lambda c: Scores(np.array(rows[c])).mean), runs, len(labels) - len(alive)


def race_rates(world: World, configurations: int, spread: float, questions: int, trials: int, step: float = 0.0,
               share: float = 0.0, max_seeds: int = 10, seed: int = 0, rho: float = 2.0, grid_seeds: int = 8,
               spend: bool = True, grid: bool = True) -> dict:
    """Races of ``configurations`` spaced ``step`` EM points apart (the best ahead of the next by ``step``; all
    identical when 0), against a fixed grid of ``max_seeds`` seeds each compared once at alpha: how often each
    establishes the right best (any best, when identical: a false claim), and the race's runs as a share of the
    grid's."""
    from .racing import RaceSettings

    key = [seed, 46, configurations, round(step * 1e4), round(share * 100), max_seeds, round(spread * 1e5)]
    # Three streams: the questions, the race's runs, the grid's runs -- so a change to how the race spends its runs
    # leaves the questions and the grid it is measured against as they were.
    rng, race_rng, grid_rng = (np.random.default_rng([*key, stream]) for stream in (0, 1, 2))
    scale = world.shift_scale(spread)
    offsets = [world.offset_for(j * step, scale) if step else 0.0 for j in range(configurations)]
    drops = [world.offset_for(x, scale) for x in (0.05, 0.1, 0.2, 0.3)]
    settings = RaceSettings(first_seeds=2, max_seeds=max_seeds, rho=rho, spend=spend)
    race_right = race_any = grid_right = grid_any = runs = dropped_any = 0
    for _ in range(trials):
        logits = rng.choice(world.logits, questions)
        established, best, spent, dropped = _race_once(race_rng, logits, offsets, scale, settings, share, drops)
        dropped_any += dropped > 0
        race_any += established
        race_right += established and best == "c0"
        runs += spent
        if not grid:
            continue
        fixed = {f"c{j}": _runs_with_failures(grid_rng, logits + offsets[j], grid_seeds, scale, share, drops)
                 for j in range(configurations)}
        top = max(fixed, key=lambda c: fixed[c].mean)
        all_real = all(d.significant and d.delta > 0 for d in against_best(fixed, top).values())
        grid_any += all_real
        grid_right += all_real and top == "c0"
    fixed_runs = trials * configurations * grid_seeds
    return {"race_established": race_any / trials, "race_right": race_right / trials,
            "grid_established": grid_any / trials, "grid_right": grid_right / trials, "race_runs": runs / fixed_runs,
            "race_dropped_any": dropped_any / trials}


def tied_top(world: World, configurations: int, tied: int, seeds: int, spread: float, questions: int, trials: int,
             below: float = 0.05, seed: int = 0) -> dict:
    """The step-down's hard case: ``tied`` configurations alike at the top, the rest ``below`` EM points lower --
    the lines against the lower ones are true, any line against a tied one is false. The share of sweeps with a
    false line (target: at most alpha)."""
    rng = np.random.default_rng([seed, 47, configurations, tied, seeds, round(spread * 1e5), round(below * 1e4)])
    scale = world.shift_scale(spread)
    offset = world.offset_for(below, scale)
    false = 0
    for _ in range(trials):
        logits = rng.choice(world.logits, questions)
        configs = {f"c{j}": _runs(rng, logits + (0.0 if j < tied else offset), seeds, scale)
                   for j in range(configurations)}
        best = max(configs, key=lambda c: configs[c].mean)
        out = against_best(configs, best)
        # A line is false when the other is truly at least as good as the best: a tied one, or any when a lower one
        # came out best.
        false += any(d.significant for other, d in out.items() if int(other[1:]) < tied or int(best[1:]) >= tied)
    return {"false_line": false / trials}


def report_issue42(trials: int = 1000, seed: int = 0) -> Iterator[str]:
    """The tables of the second round (paragraphs, failed runs, unequal seeds, sweeps, races) as markdown lines."""
    world = World(seed)
    yield ""
    yield (f"| paragraphs x questions, seeds (configurations reading paragraphs differently: logit sd 0.6 per "
           f"paragraph, 0.4 per question; {trials} comparisons) | false 'real', counted by paragraph | coverage | "
           "false 'real', counted by question (before) | coverage |")
    yield "| --- | --- | --- | --- | --- |"
    for paragraphs, per, k in ((400, 5, 10), (400, 5, 5), (200, 10, 5)):
        ours = clustered_rates(world, k, 0.01, paragraphs, per, trials, seed=seed)
        old = clustered_rates(world, k, 0.01, paragraphs, per, trials, use_clusters=False, seed=seed)
        yield (f"| {paragraphs} x {per}, {k} seeds | {_pct(ours['false_real'])} | {_pct(ours['coverage'])} | "
               f"{_pct(old['false_real'])} | {_pct(old['coverage'])} |")
    yield ""
    yield (f"| runs that fail (5-30 points below their siblings), 5 seeds, 1.0 point spread ({trials} comparisons) | "
           "rate |")
    yield "| --- | --- |"
    for share in (0.1, 0.2):
        null = failed_run_rates(world, 5, 0.01, 3000, share, trials, seed=seed)
        found = failed_run_rates(world, 5, 0.01, 3000, share, trials, difference_=0.05, seed=seed)
        yield f"| {round(100 * share)}% failed: false 'real' (identical) | {_pct(null['real'])} |"
        yield f"| {round(100 * share)}% failed: +5 points called real | {_pct(found['real'])} |"
    yield ""
    yield f"| unequal seeds, 1.0 point spread ({trials} comparisons) | called real | coverage |"
    yield "| --- | --- | --- |"
    for diff in (0.0, 0.05):
        r = unequal_rates(world, (2, 5), 0.01, 3000, trials, diff, seed=seed)
        what = "identical" if not diff else "+5 points"
        yield f"| 2 vs 5 seeds, {what} | {_pct(r['real'])} | {_pct(r['coverage'])} |"
    sweeps = max(trials // 2, 100)
    yield ""
    yield (f"| sweep of 6 configurations, 5 seeds, 1.0 point spread ({sweeps} sweeps) | lines real | sweeps with a "
           "'real' line | interval excludes 0 exactly when 'real' |")
    yield "| --- | --- | --- | --- |"
    for name, best_by, pool in (("identical", 0.0, True), ("best by +2 points", 0.02, True),
                                ("best by +2 points, seed spread not pooled", 0.02, False)):
        r = sweep_lines(world, 6, 5, 0.01, 3000, sweeps, best_by, pool=pool, seed=seed)
        yield f"| {name} | {_pct(r['lines_real'])} | {_pct(r['any_real'])} | {_pct(r['consistent'])} |"
    races = max(trials // 5, 50)
    yield ""
    yield (f"| race (2 seeds first, at most 10; configurations 2 points apart; 2,000 questions; {races} races) | "
           "right best established | grid of 8 seeds each | race's runs / grid's |")
    yield "| --- | --- | --- | --- |"
    for k, step, share in ((4, 0.02, 0.0), (6, 0.02, 0.0), (8, 0.02, 0.0), (6, 0.02, 0.1), (6, 0.0, 0.0)):
        r = race_rates(world, k, 0.01, 2000, races, step, share, seed=seed)
        what = "identical (any best established is false)" if not step else f"{k} configurations" + (
            f", {round(100 * share)}% failed runs" if share else "")
        right = r["race_established"] if not step else r["race_right"]
        grid = r["grid_established"] if not step else r["grid_right"]
        yield f"| {what} | {_pct(right)} | {_pct(grid)} | {r['race_runs']:.2f} |"
        if not step:
            yield f"| identical: a configuration dropped (false) | {_pct(r['race_dropped_any'])} | - | - |"
