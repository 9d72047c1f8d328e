"""Racing configurations over seeds: spend runs only where the answer is open (F-Race / irace's statistical elimination,
SMAC3's intensification over seeds), with the question-level comparison of :mod:`.significance`.

Round 1 trains every configuration on ``first_seeds`` seeds. After each round (a *look*) the configurations still in
the race are compared with the best of them (paired over questions, paragraphs as clusters, the seed spread pooled
when the spreads agree, simultaneous over every pair of the race's configurations); those the best is ahead of beyond
noise are dropped. The race stops when the best is established (every other configuration dropped), or when the
survivors have ``max_seeds`` seeds, or when ``max_runs`` runs are spent; otherwise every survivor gets one more seed.

The error over repeated looks is spent by a power-family function of the information: by look ``r``, when the
survivors have ``n_r = first_seeds + r - 1`` seeds, at most ``alpha * (n_r / max_seeds) ** rho`` (Kim & DeMets 1987;
rho = 2: little spent on 2 seeds, which measure the seed spread poorly). Each look's level is the group-sequential
boundary for that spending (Lan & DeMets 1983), found for the race's own statistic -- the range of its ``K``
configurations' means, every configuration alike, as the step-down's first step tests it -- over the looks' real
correlation: a configuration's mean after ``n_i`` seeds and after ``n_j`` share ``n_i`` of them. So the chance that
any look drops a configuration, or calls a best, when all are alike is alpha. A bound over the looks as if they were
independent (Bonferroni's shares of alpha, this module before) tested every look at a level 2.4-3.3 times smaller
(``max_seeds=10``, 2-8 configurations), and the race trained every configuration longer for it.
:func:`look_levels` computes the boundaries once per race shape (seeded, so the same race always decides the same);
:func:`extractive_qa.core.calibration.race_rates` measures the whole race by simulation: the real statistic uses each
pair's measured standard error (Student / studentized range on its degrees of freedom) at the boundary's level, as
group-sequential t-tests do (Jennison & Turnbull 2000, ch. 11).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .significance import ALPHA, Difference, Scores, against_best, points, pooled_seed_variance

BOUNDARY_PATHS = 200_000  # simulated races of alike configurations the boundaries are set on (level error ~2%)


@functools.cache
def look_levels(configurations: int, first_seeds: int, max_seeds: int, alpha: float, rho: float) -> tuple[float, ...]:
    """The nominal level of each look (1-based order) of a race of ``configurations`` alike configurations.

    The race's statistic at look ``r`` is the studentized range of the configurations' means, ``range(S_r) /
    sqrt(n_r)`` with ``S_r`` each configuration's sum of ``n_r`` standard normal seed effects; boundary ``c_r`` is set
    so that the share of simulated races first crossing at look ``r`` is the spending function's increment, and its
    level is the single-look chance of crossing ``c_r`` (the studentized range's tail) -- what
    :func:`~extractive_qa.core.significance.against_best` is given as ``1 - confidence``."""
    from scipy.stats import studentized_range

    k = max(int(configurations), 2)
    seeds = np.arange(first_seeds, max(max_seeds, first_seeds) + 1)
    spent = alpha * (seeds / seeds[-1]) ** rho
    rng = np.random.default_rng([k, first_seeds, max_seeds])
    sums = rng.standard_normal((BOUNDARY_PATHS, k)) * np.sqrt(first_seeds)
    crossed = np.zeros(BOUNDARY_PATHS, dtype=bool)
    levels, before = [], 0.0
    for r, n in enumerate(seeds):
        if r:
            sums += rng.standard_normal((BOUNDARY_PATHS, k))
        statistic = (sums.max(axis=1) - sums.min(axis=1)) / np.sqrt(n)
        # The (target + 1)-th largest statistic among the races not yet crossed: exactly `target` cross here.
        target = int(round((spent[r] - before) * BOUNDARY_PATHS))
        open_ = np.sort(statistic[~crossed])[::-1]
        boundary = float(open_[min(target, len(open_) - 1)]) if target > 0 else np.inf
        crossed |= statistic > boundary
        before = spent[r]
        levels.append(float(studentized_range.sf(boundary, k, np.inf)) if np.isfinite(boundary) else 0.0)
    return tuple(levels)


@dataclass(frozen=True)
class RaceSettings:
    first_seeds: int = 2
    max_seeds: int = 10
    max_runs: int | None = None
    alpha: float = ALPHA
    rho: float = 2.0  # the spending function's power
    spend: bool = True  # False: every look at the full alpha (what the calibration shows is wrong)

    @property
    def looks(self) -> int:
        return max(self.max_seeds - self.first_seeds + 1, 1)

    def look_alpha(self, look: int, configurations: int) -> float:
        """Look ``look``'s level (1-based) in a race of ``configurations``: :func:`look_levels`."""
        if not self.spend:
            return self.alpha
        levels = look_levels(configurations, self.first_seeds, self.max_seeds, self.alpha, self.rho)
        return levels[min(look, len(levels)) - 1]


@dataclass
class Look:
    """What one look decided."""

    look: int
    alpha: float  # this look's share
    seeds: dict[str, int]  # seeds per configuration still in the race at this look
    best: str
    dropped: dict[str, str] = field(default_factory=dict)  # configuration -> why (one line)
    lines: dict[str, Difference] = field(default_factory=dict)  # best vs each survivor
    established: bool = False  # every other configuration is dropped: the best is the best

    def row(self) -> dict:
        """A row of the race's rounds table (MLflow table, report)."""
        return {"look": self.look, "alpha": round(self.alpha, 5), "alive": len(self.seeds),
                "seeds": ", ".join(f"{k}: {v}" for k, v in self.seeds.items()), "best": self.best,
                "dropped": "; ".join(self.dropped) or "-", "best established": self.established}


def look(configurations: Mapping[str, Scores], alive: list[str], number: int, settings: RaceSettings,
         metric: str = "EM") -> Look:
    """Look ``number`` at the survivors ``alive``. ``configurations`` holds every configuration of the race, dropped
    ones included: their runs measure the seed spread too (pooled when the spreads agree). The survivors are compared
    with the best of them by the step-down of :func:`~extractive_qa.core.significance.against_best` (what earlier
    looks set apart is out of the family, as what a look's earlier steps set apart is), at this look's level of the
    race's boundaries (:func:`look_levels`, shaped by all the race's configurations)."""
    alpha = settings.look_alpha(number, len(configurations))
    best = max(alive, key=lambda label: (configurations[label].mean, label))
    result = Look(number, alpha, {label: configurations[label].seeds for label in alive}, best)
    if len(alive) == 1:
        result.established = True
        return result
    pooled = pooled_seed_variance(list(configurations.values()))
    survivors = {label: configurations[label] for label in alive}
    result.lines = against_best(survivors, best, 1 - alpha, pooled=pooled)
    for other, d in result.lines.items():
        if d.significant and d.delta > 0:
            result.dropped[other] = (f"look {number}: {points(d.delta)} {metric} points below {best}, simultaneous "
                                     f"{round(100 * (1 - alpha), 2)}% interval [{points(d.low)}, {points(d.high)}]")
    result.established = len(result.dropped) == len(alive) - 1
    return result


def next_seeds(alive: list[str], seeds: Mapping[str, int], settings: RaceSettings, runs_so_far: int) -> dict[str, int]:
    """How many seeds each survivor trains next (one more each), or ``{}`` when the budget says stop."""
    if any(seeds[label] >= settings.max_seeds for label in alive):
        return {}
    if settings.max_runs is not None and runs_so_far + len(alive) > settings.max_runs:
        return {}
    return {label: seeds[label] + 1 for label in alive}
