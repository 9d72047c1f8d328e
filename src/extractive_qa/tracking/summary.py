"""Runs of a sweep grouped by configuration, with seeds aggregated: the numbers a report and a sweep's
parent run show. Pure functions over plain rows, so the sweep callback and ``make report`` agree."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.metrics import METRICS, selection_key
from .base import RunRow
from .naming import SEED_KEYS


def best_metrics(row: RunRow) -> dict[str, float]:
    """``{metric: the run's best dev score}`` (its ``best/dev_<metric>`` values)."""
    return {m: row.metrics[f"best/dev_{m}"] for m in METRICS if f"best/dev_{m}" in row.metrics}


def rank(rows: list[RunRow], optimize_metric: str = "em") -> list[RunRow]:
    """``rows`` best first: by ``optimize_metric``, ties by EM then F1
    (:func:`~extractive_qa.core.metrics.selection_key`), then by name, so equal runs always come in the same order."""
    return sorted(sorted(rows, key=lambda r: r.name), key=lambda r: selection_key(best_metrics(r), optimize_metric),
                  reverse=True)


def optimize_metric_of(rows: list[RunRow]) -> str:
    """The metric the runs were selected by (their ``optimize_metric`` param; EM when they disagree or lack it)."""
    chosen = {r.params.get("optimize_metric", "em") for r in rows}
    return chosen.pop() if len(chosen) == 1 else "em"


@dataclass
class Group:
    """Runs whose swept values differ only in the seed."""

    values: dict[str, str]  # swept values without the seed
    runs: list[RunRow]

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values.items()) or "all runs"

    def stats(self, metric: str) -> tuple[float, float, int]:
        """``(mean, std, n)`` over the group's runs that have ``metric``; std is the sample std (0 for n=1)."""
        xs = [r.metrics[metric] for r in self.runs if metric in r.metrics and not math.isnan(r.metrics[metric])]
        if not xs:
            return math.nan, math.nan, 0
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        return mean, std, len(xs)


def _sort_key(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def group_by_config(rows: list[RunRow]) -> list[Group]:
    """Groups of runs that differ only in the seed, in the order of their swept values."""
    groups: dict[tuple, Group] = {}
    for row in rows:
        values = {k: v for k, v in row.values.items() if k not in SEED_KEYS}
        key = tuple(sorted(values.items()))
        groups.setdefault(key, Group(values=dict(sorted(values.items())), runs=[])).runs.append(row)
    return sorted(groups.values(), key=lambda g: [_sort_key(v) for v in g.values.values()])


def seeds_swept(rows: list[RunRow]) -> bool:
    return any(len({r.values.get(k) for r in rows}) > 1 for k in SEED_KEYS)


def parent_metrics(rows: list[RunRow], optimize_metric: str = "em") -> dict[str, float]:
    """What a sweep's parent run records: the best dev scores of its best job (by ``optimize_metric``,
    :func:`rank`) -- that job's own scores -- as ``sweep/best_dev_*``: under ``best/*`` the parent would
    stand beside its best job as a second, identical bar in every chart."""
    finished = [r for r in rows if r.status == "FINISHED" and best_metrics(r)]
    if not finished:
        return {}
    return {f"sweep/best_dev_{m}": shown(v) for m, v in best_metrics(rank(finished, optimize_metric)[0]).items()}


def configuration_metrics(group: Group, optimize_metric: str = "em") -> dict[str, float]:
    """What a configuration's run records: mean and std over its seeds of the best dev EM, F1 (and the
    ``optimize_metric``), and the number of seeds. The names lead with what differs between charts
    (``seeds/mean_dev_em`` beside ``seeds/std_dev_em``), so truncated chart titles stay apart. Rounded to 4
    places as every score the runs table shows (:func:`shown`)."""
    out: dict[str, float] = {}
    for metric in dict.fromkeys(("em", "f1", optimize_metric)):
        mean, std, n = group.stats(f"best/dev_{metric}")
        if n:
            out.update({f"seeds/mean_dev_{metric}": shown(mean), f"seeds/std_dev_{metric}": shown(std)})
    out["seeds/n"] = float(group.stats("best/dev_em")[2])
    return out


def shown(score: float) -> float:
    """A score as the MLflow runs table shows it: MLflow prints every digit (0.013333333…); 4 places resolve
    one question in 10,000."""
    return round(float(score), 4)


def comparison_metrics(best: dict[str, float]) -> dict[str, float]:
    """A finished run's best dev scores as it logs them at step 0 (bars in the chart view): ``best/dev_*``
    rounded (:func:`shown`), and ``points/best_dev_*`` in points (x 100, 2 places) -- MLflow labels bars
    with 2 decimals, which reads 0.0133 and 0.0067 both as "0.01" and 1.33 and 0.67 apart."""
    out = {f"best/dev_{m}": shown(v) for m, v in best.items()}
    out.update({f"points/best_dev_{m}": round(100 * float(v), 2) for m, v in best.items()})
    return out
