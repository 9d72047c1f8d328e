"""The view of an experiment's runs that MLflow's UI opens with from this project's links.

MLflow 3's UI keeps its runs-page state (columns, widths, expanded rows, sort, chart cards and their
order) in the browser, and opens any experiment on a view that shows no metric or param column and
charts every metric in alphabetical sections -- system metrics included, legends cut to a few runs.
It also reads a **shared view**: a JSON state stored in the experiment's tag
``mlflow.sharedViewState.<key>``, opened with ``?viewStateShareKey=<key>`` in the runs page's URL (its
own "Share" button no longer writes one in 3.17; the reader is still there). :func:`publish_view`
writes one per experiment, after every sweep and single run, so a link opens on:

* the runs sorted by the best dev score by ``optimize_metric``, a wide run-name column, columns for the
  best dev scores, the configurations' mean and std over seeds, and the params that differ between runs;
* every sweep's parent expanded, so its jobs and configuration runs show;
* charts led by the best dev scores (one bar per run, all runs), then the configurations side by side,
  then the dev and training curves; system metrics come after them.

What MLflow does not let a project decide: the view a bare experiment URL opens on (the browser's
last state, else MLflow's default), the order of the compare-runs page's plot selectors, and the
columns of the model-version page. ``make ui`` and ``make report`` print the link.
"""

from __future__ import annotations

import json

from ..core.metrics import METRICS
from .store import with_retry

VIEW_KEY = "extractive-qa"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
RUN_NAME_COLUMN = "attributes.`Run Name`"
PARAM_COLUMNS = 8  # params shown as columns at most (the ones that differ between runs)


def _bar(uuid: str, section: str, metric: str) -> dict:
    return {"uuid": uuid, "type": "BAR", "runsCountToCompare": 100, "metricSectionId": section, "deleted": False,
            "isGenerated": False, "metricKey": metric, "displayName": metric}


def _line(uuid: str, section: str, metric: str) -> dict:
    return {**_bar(uuid, section, metric), "type": "LINE", "lineSmoothness": 0, "xAxisScaleType": "linear",
            "scaleType": "linear", "range": {}, "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
            "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}


def view_state(optimize_metric: str, params: list[str], expanded: list[str]) -> dict:
    """The shared view's JSON state (the fields the UI persists; see the module docstring)."""
    best = [f"best/dev_{m}" for m in dict.fromkeys((optimize_metric, "em", "f1"))]
    seeds = ["seeds/mean_dev_em", "seeds/std_dev_em", "seeds/mean_dev_f1", "seeds/std_dev_f1", "seeds/n"]
    columns = [*(f"metrics.`{m}`" for m in [*best, "seeds/mean_dev_em", "seeds/std_dev_em"]),
               *(f"params.`{p}`" for p in params[:PARAM_COLUMNS]), "attributes.`Models`"]
    sections = [("eqa-best", "best dev scores: one bar per run"), ("eqa-seeds", "configurations over seeds"),
                ("eqa-curves", "dev and training curves")]
    charts = [*(_bar(f"eqa-{m}", "eqa-best", m) for m in [*best, *(f"best/dev_{m}" for m in METRICS if
                                                                     f"best/dev_{m}" not in best), "wall_time_s"]),
              *(_bar(f"eqa-{m}", "eqa-seeds", m) for m in seeds),
              *(_line(f"eqa-{m}", "eqa-curves", m) for m in ("dev/em", "dev/f1", "train/loss", "train/lr"))]
    return {
        "searchFilter": "", "orderByKey": f"metrics.`best/dev_{optimize_metric}`", "orderByAsc": False,
        "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": columns, "columnOrder": [RUN_NAME_COLUMN, *columns],
        "columnWidths": {RUN_NAME_COLUMN: 300}, "runsExpanded": dict.fromkeys(expanded, True), "runsPinned": [],
        "runsHidden": [], "runsVisibilityMap": {}, "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": u, "name": n, "display": True, "isReordered": True, "deleted": False,
                                "isGenerated": False} for u, n in sections],
        "viewMaximized": False, "runListHidden": False, "isAccordionReordered": True, "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {}, "autoRefreshEnabled": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def publish_view(client, experiment_id: str, optimize_metric: str = "em") -> str:
    """Write (or refresh) the experiment's shared view from its runs as they are now; the runs-page URL
    path that opens it (``#/experiments/<id>/runs?viewStateShareKey=...``)."""
    from .parents import CONFIGURATION_TAG, PARENT_TAG

    runs = with_retry(lambda: client.search_runs([experiment_id], max_results=5000), "find runs")
    parents = [r.info.run_id for r in runs if PARENT_TAG in r.data.tags]
    jobs = [r for r in runs if PARENT_TAG not in r.data.tags and CONFIGURATION_TAG not in r.data.tags]
    keys = sorted({k for r in jobs for k in r.data.params})
    differing = [k for k in keys if len({r.data.params.get(k) for r in jobs}) > 1]
    swept = [k for r in runs if PARENT_TAG in r.data.tags for k in r.data.tags.get("sweep.keys", "").split(", ") if k]
    params = list(dict.fromkeys([*swept, *differing]))
    state = view_state(optimize_metric, params, parents)
    with_retry(lambda: client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + VIEW_KEY,
                                                 json.dumps(state, separators=(",", ":"))), "publish view")
    return view_path(experiment_id)


def view_path(experiment_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"


def view_links(client, ui: str) -> list[str]:
    """``<experiment>: <link>`` for every experiment with a published view, for the UI served at ``ui``."""
    experiments = with_retry(lambda: client.search_experiments(), "list experiments")
    return [f"{e.name}: {ui.rstrip('/')}/{view_path(e.experiment_id)}" for e in experiments
            if SHARED_VIEW_TAG + VIEW_KEY in e.tags]
