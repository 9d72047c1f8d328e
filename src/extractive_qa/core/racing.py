"""Racing configurations over seeds: spend runs only where the answer is open (F-Race / irace's statistical elimination,
SMAC3's intensification over seeds), with the question-level comparison of :mod:`.significance`.

Round 1 trains every configuration on ``first_seeds`` seeds. After each round (a *look*) the configurations still in
the race are compared with the best of them (paired over questions, paragraphs as clusters, the seed spread pooled
when the spreads agree, simultaneous over every pair of the race's configurations); those the best is ahead of beyond
noise are dropped. The race stops when the best is established (every other configuration dropped), or when the
survivors have ``max_seeds`` seeds, or when ``max_runs`` runs are spent; otherwise every survivor gets one more seed.

The error over repeated looks: look ``r`` of at most ``L = max_seeds - first_seeds + 1`` tests at its share
``alpha_r = alpha * ((r / L)^2 - ((r - 1) / L)^2)`` of alpha (a power-family spending function, rho = 2: Kim &
DeMets 1987, little spent early, when 2 seeds measure the seed spread poorly). The shares add up to alpha, and each
look's family holds every pair of all the race's configurations (not only the survivors), so the chance of any false
"dropped" or "best" claim over the whole race is at most alpha by the union bound -- whatever the looks have in common.
:func:`extractive_qa.core.calibration.race_table` measures it by simulation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .significance import ALPHA, Difference, Scores, against_best, points, pooled_seed_variance


@dataclass(frozen=True)
class RaceSettings:
    first_seeds: int = 2
    max_seeds: int = 8
    max_runs: int | None = None
    alpha: float = ALPHA
    rho: float = 2.0  # the spending function's power
    spend: bool = True  # False: every look at the full alpha (what the calibration shows is wrong)

    @property
    def looks(self) -> int:
        return max(self.max_seeds - self.first_seeds + 1, 1)

    def look_alpha(self, look: int) -> float:
        """Look ``look``'s share of alpha (1-based): the power-family spending function, rho = 2."""
        if not self.spend:
            return self.alpha
        lo, hi = (look - 1) / self.looks, min(look, self.looks) / self.looks
        return self.alpha * (hi ** self.rho - lo ** self.rho)


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
    ones included: their runs measure the seed spread too (pooled when the spreads agree), and the family the
    intervals are simultaneous over is every pair of the race's configurations, whichever earlier looks dropped."""
    alpha = settings.look_alpha(number)
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
