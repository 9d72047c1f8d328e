"""Sweep summaries in-process: configurations over seeds, a sweep's best job by optimize_metric, ties."""

import math

import pytest

from extractive_qa.tracking.base import RunRow
from extractive_qa.tracking.summary import (
    configuration_metrics,
    group_by_config,
    optimize_metric_of,
    parent_metrics,
    rank,
)


def row(name: str, em: float, f1: float, status: str = "FINISHED", **values) -> RunRow:
    return RunRow(name=name, values={k: str(v) for k, v in values.items()}, status=status,
                  metrics={"best/dev_em": em, "best/dev_f1": f1, "best/dev_em_cmrc2018": em,
                           "best/dev_f1_cmrc2018": f1})


def test_the_best_job_follows_optimize_metric_and_ties_break_by_em_then_f1():
    rows = [row("a", 0.60, 0.70), row("b", 0.62, 0.66), row("c", 0.62, 0.68), row("d", 0.90, 0.95, status="FAILED")]
    assert [r.name for r in rank(rows[:3], "em")] == ["c", "b", "a"]  # b and c tie on EM: F1 decides
    assert [r.name for r in rank(rows[:3], "f1")] == ["a", "c", "b"]
    assert parent_metrics(rows, "em")["sweep/best_dev_f1"] == 0.68  # the best job's own F1, not the best F1 of any
    assert parent_metrics(rows, "f1")["sweep/best_dev_em"] == 0.60
    assert [r.name for r in rank([row("y", 0.5, 0.5), row("x", 0.5, 0.5)])] == ["x", "y"]  # full tie: by name, always


def test_seeds_are_aggregated_per_configuration():
    rows = [row("1", 0.5, 0.6, seed=1, lr=1), row("2", 0.7, 0.8, seed=2, lr=1), row("3", 0.2, 0.3, seed=1, lr=2)]
    groups = group_by_config(rows)
    assert [g.label for g in groups] == ["lr=1", "lr=2"]
    mean, std, n = groups[0].stats("best/dev_em")
    assert (mean, n) == (pytest.approx(0.6), 2) and std == pytest.approx(math.sqrt(0.02))
    metrics = configuration_metrics(groups[0])
    assert metrics["seeds/n"] == 2 and metrics["seeds/mean_dev_em"] == pytest.approx(0.6)
    assert metrics["seeds/std_dev_em"] == round(math.sqrt(0.02), 4)  # 4 places: MLflow's table prints every digit


def test_scores_are_logged_as_the_ui_shows_them():
    from extractive_qa.tracking.summary import comparison_metrics

    logged = comparison_metrics({"em": 1 / 75, "f1": 1 / 150})
    assert logged == {"best/dev_em": 0.0133, "best/dev_f1": 0.0067, "points/best_dev_em": 1.33,
                      "points/best_dev_f1": 0.67}  # bars labelled with 2 decimals read 1.33 and 0.67 apart


def test_the_runs_own_optimize_metric_is_read_from_their_params():
    a, b = row("a", 0.1, 0.2), row("b", 0.1, 0.2)
    a.params, b.params = {"optimize_metric": "f1"}, {"optimize_metric": "f1"}
    assert optimize_metric_of([a, b]) == "f1"
    b.params = {}
    assert optimize_metric_of([a, b]) == "em"  # runs that disagree (or predate the key): EM
