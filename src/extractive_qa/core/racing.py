"""Racing configurations over seeds: spend runs only where the answer is open (F-Race / irace's statistical elimination,
SMAC3's intensification over seeds), with the question-level comparison of :mod:`.significance`.

Round 1 trains every configuration on ``first_seeds`` seeds. After each round (a *look*) the configurations still in
the race are compared with the best of them (paired over questions, paragraphs as clusters, the seed spread pooled
when the spreads agree, simultaneous over every pair of the race's configurations); those the best is ahead of beyond
noise are dropped. The race stops when the best is established (every other configuration dropped), after its last
look (``max_seeds - first_seeds + 1`` looks), or when ``max_runs`` runs are spent. Otherwise the next round trains
one more seed of **the best and of the challenger it is least sure to beat** (the smallest ``t``, its lead over
noise) -- as best-arm identification does (LUCB, Kalyanakrishnan et al. 2012): a configuration far behind is dropped
once the best's seeds and the pooled spread's degrees of freedom grow, without seeds of its own, and the one close
behind gets the seeds that settle it. Training every survivor each round (this module before) spent 0.69 of an
8-seed grid's runs with 4 configurations 2 points apart, this 0.59, the right best found more often (88.0% against
the grid's 78.5%; 200 races of ``compare --calibrate``, docs/sweeps.md).

The error over repeated looks is spent by a power-family function of the information: by look ``r``, when the best
has ``n_r = first_seeds + r - 1`` seeds, at most ``alpha * (n_r / max_seeds) ** rho`` (Kim & DeMets 1987; rho = 2:
little spent on 2 seeds, which measure the seed spread poorly). Each look's level is the group-sequential boundary for
that spending (Lan & DeMets 1983), found by simulating the race itself 200,000 times with every configuration alike
(:func:`look_levels`): its statistic -- the largest ``t`` of the best over another, on the pooled seed variance the
race estimates as it goes -- and its allocation, which follows the data: a configuration that drew two unlucky seeds
is not trained again and keeps its low mean while the best's regresses and the pooled spread firms up
(``tests/core/test_racing_and_pooling.py`` checks the levels against races simulated apart from this module; the
levels set for every survivor trained and the spread known miss the spending by up to 17%). The real look applies
:func:`~extractive_qa.core.significance.against_best`'s studentized-range critical values at the boundary's level, on
each line's own degrees of freedom (Jennison & Turnbull 2000, ch. 11: the significance-level approach);
:func:`extractive_qa.core.calibration.race_rates` measures the whole race by simulation of per-question scores.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .significance import ALPHA, Difference, Scores, against_best, points, pooled_seed_variance

BOUNDARY_PATHS = 200_000  # simulated races of alike configurations the boundaries are set on (level error ~2%)


def trained_next(t: np.ndarray, seeds: np.ndarray, best: np.ndarray, max_seeds: int) -> np.ndarray:
    """Which configurations train one more seed after a look, for many races at once (one per row): the best, and the
    challenger it is least sure to beat -- the smallest ``t`` (the best's lead over its standard error) among those
    with fewer than ``max_seeds`` seeds. ``t``: the best's lead over each configuration in the race (``inf`` for one
    that is out of it); ``seeds``: seeds so far; ``best``: each row's best (an index). The race and the simulation
    its boundaries are set on (:func:`look_levels`) both choose with this function."""
    rows = np.arange(t.shape[0])
    open_ = np.where(seeds >= max_seeds, np.inf, t)
    open_[rows, best] = np.inf
    challenger = open_.argmin(axis=1)
    more = np.zeros(t.shape, dtype=bool)
    more[rows, best] = seeds[rows, best] < max_seeds
    has = np.isfinite(open_[rows, challenger])
    more[rows[has], challenger[has]] = True
    return more


@functools.cache
def look_levels(configurations: int, first_seeds: int, max_seeds: int, alpha: float, rho: float) -> tuple[float, ...]:
    """The nominal level of each look (1-based order) of a race of ``configurations`` alike configurations.

    Simulated: each configuration's seeds are standard normal; at each look the statistic is ``sqrt(2)`` times the
    largest ``t = (mean_best - mean_j) / sqrt(s2 (1/n_best + 1/n_j))`` -- ``s2`` the seed variance pooled over every
    configuration, as the race pools it -- the studentized range's scale, on which
    :func:`~extractive_qa.core.significance.against_best` tests the step-down's first line; the configurations then
    train as the race trains them (:func:`trained_next`). Boundary ``c_r`` is set so that the share of simulated races
    first crossing at look ``r`` is the spending function's increment; its level is the single-look chance of crossing
    ``c_r`` at that look's pooled degrees of freedom (the studentized range's tail) -- what ``against_best`` is given
    as ``1 - confidence``. Seeded: the same race shape always gets the same levels."""
    from scipy.stats import studentized_range

    k = max(int(configurations), 2)
    first = int(first_seeds)  # >= 2: RaceSettings refuses fewer (one seed each has no spread to pool)
    seeds = np.arange(first, max(max_seeds, first) + 1)
    spent = alpha * (seeds / seeds[-1]) ** rho
    rng = np.random.default_rng([k, first, max_seeds])
    draws = rng.standard_normal((BOUNDARY_PATHS, k, first))
    sums, squares = draws.sum(axis=2), np.square(draws).sum(axis=2)
    counts = np.full((BOUNDARY_PATHS, k), float(first))
    rows = np.arange(BOUNDARY_PATHS)
    crossed = np.zeros(BOUNDARY_PATHS, dtype=bool)
    levels, before = [], 0.0
    for r in range(len(seeds)):
        means = sums / counts
        best = means.argmax(axis=1)
        df = (counts - 1).sum(axis=1)
        pooled = (squares - np.square(sums) / counts).sum(axis=1) / df
        lead = means[rows, best][:, None] - means
        t = lead / np.sqrt(pooled[:, None] * (1 / counts[rows, best][:, None] + 1 / counts))
        t[rows, best] = -np.inf
        statistic = np.sqrt(2) * t.max(axis=1)
        # The (target + 1)-th largest statistic among the races not yet crossed: exactly `target` cross here.
        target = int(round((spent[r] - before) * BOUNDARY_PATHS))
        open_ = np.sort(statistic[~crossed])[::-1]
        boundary = float(open_[min(target, len(open_) - 1)]) if target > 0 else np.inf
        crossed |= statistic > boundary
        before = spent[r]
        # Every race trains the same number of seeds a round until one reaches max_seeds: one df for the look.
        look_df = float(np.median(df[~crossed])) if (~crossed).any() else float(np.median(df))
        levels.append(float(studentized_range.sf(boundary, k, look_df)) if np.isfinite(boundary) else 0.0)
        more = trained_next(t, counts, best, max_seeds)
        new = rng.standard_normal((BOUNDARY_PATHS, k)) * more
        sums += new
        squares += np.square(new)
        counts += more
    return tuple(levels)


@dataclass(frozen=True)
class RaceSettings:
    first_seeds: int = 2
    max_seeds: int = 10
    max_runs: int | None = None
    alpha: float = ALPHA
    rho: float = 2.0  # the spending function's power
    spend: bool = True  # False: every look at the full alpha (what the calibration shows is wrong)

    def __post_init__(self) -> None:
        if self.first_seeds < 2:
            raise ValueError(f"a race needs first_seeds >= 2 (got {self.first_seeds}): a look compares seed spreads, "
                             "and one seed each has none -- set hydra.sweeper.first_seeds=2")
        if self.max_seeds < self.first_seeds:
            raise ValueError(f"max_seeds ({self.max_seeds}) is below first_seeds ({self.first_seeds}): set "
                             f"hydra.sweeper.max_seeds={self.first_seeds} or more")

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
    trains: list[str] = field(default_factory=list)  # what trains one more seed after this look (next_seeds)

    def row(self) -> dict:
        """A row of the race's rounds table (MLflow table, report)."""
        return {"look": self.look, "alpha": round(self.alpha, 5), "alive": len(self.seeds),
                "seeds": ", ".join(f"{k}: {v}" for k, v in self.seeds.items()), "best": self.best,
                "dropped": "; ".join(self.dropped) or "-", "best established": self.established,
                "next seed": ", ".join(self.trains) or "-"}


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


def next_seeds(seen: Look, alive: list[str], seeds: Mapping[str, int], settings: RaceSettings,
               runs_so_far: int) -> dict[str, int]:
    """The seeds each configuration has after the next round, for those that train one more -- the best and the
    survivor it is least sure to beat (:func:`trained_next`; a line without a verdict, e.g. seeds that scored every
    question alike, counts as the least settled), and any survivor with no finished run yet (nothing to compare until
    one finishes) -- or ``{}`` when the race stops: after its last look, when none can train another seed, or when the
    round would pass ``max_runs``. Records the choice on ``seen.trains``."""
    if seen.established or seen.look >= settings.looks:
        return {}
    compared = [label for label in alive if label in seen.seeds]
    t = np.array([[_lead(seen.lines.get(label)) for label in compared]])
    counts = np.array([[seeds[label] for label in compared]])
    more = trained_next(t, counts, np.array([compared.index(seen.best)]), settings.max_seeds)[0]
    chosen = [label for label, m in zip(compared, more, strict=True) if m]
    chosen += [label for label in alive if label not in seen.seeds and seeds[label] < settings.max_seeds]
    if not chosen or (settings.max_runs is not None and runs_so_far + len(chosen) > settings.max_runs):
        return {}
    seen.trains = chosen
    return {label: seeds[label] + 1 for label in chosen}


def _lead(line: Difference | None) -> float:
    """The best's lead over a configuration in standard errors; 0 where the look has no verdict on it."""
    if line is None or line.reason or not line.se > 0:
        return 0.0
    return line.delta / line.se


def configuration_rows(looks: list[Look], labels: list[str], seeds: Mapping[str, int]) -> list[dict]:
    """One row per configuration of the race: seeds trained, where it stands, how far behind the best its last look
    put it, and why it was dropped -- the race's other table (a table cell shows a dozen characters, so the rounds
    table's seeds cell cannot say which configuration trained; and a column per configuration would be named
    ``lr=0.003``, which MLflow's table view reads as a nested field and leaves empty)."""
    last = looks[-1] if looks else None
    dropped = {label: (seen.look, why) for seen in looks for label, why in seen.dropped.items()}
    rows = []
    for label in labels:
        lines = [seen.lines[label] for seen in looks if label in seen.lines]
        if label in dropped:
            status = f"dropped at look {dropped[label][0]}"
        elif last is not None and label == last.best:
            status = "best (established)" if last.established else "leader"
        else:
            status = "in the race" if any(label in seen.seeds for seen in looks) else "no finished run"
        behind = 0.0 if last is not None and label == last.best else (
            round(100 * lines[-1].delta, 2) if lines else None)
        rows.append({"configuration": label, "seeds": int(seeds.get(label, 0)), "status": status,
                     "behind the best (points)": behind, "why": dropped[label][1] if label in dropped else "-"})
    return rows
