"""The view of an experiment's runs that MLflow's UI opens with from this project's links.

MLflow 3's UI keeps its runs-page state (columns, widths, sort, grouping, chart cards and their order)
in the browser, and opens any experiment on a view that shows no metric or param column and charts
every metric in alphabetical sections -- system metrics included, legends cut to a few runs. It also
reads a **shared view**: a JSON state stored in the experiment's tag ``mlflow.sharedViewState.<key>``,
opened with ``?viewStateShareKey=<key>`` in the runs page's URL (its own "Share" button no longer writes
one in 3.17; the reader is still there). :func:`publish_view` writes one per experiment, after every
sweep and single run, so a link opens on:

* the runs **grouped by configuration** (the tag ``configuration``: a sweep's seeds of one setting and its
  configuration run, or a single run on its own), every group open, best dev score first, with columns
  for the best dev scores, the seed spread and the params that differ. Grouping is the only nesting a
  shared view can open with: MLflow nests children under a sweep's parent only when sorted by start time,
  and keeps which parents are expanded out of shared views, so a nested view opens collapsed with its
  charts empty;
* charts of **one bar per configuration** (its mean over seeds), in points, so the 2-decimal bar labels
  read 1.33 and 0.67 where 0.0133 and 0.0067 both read 0.01; then the dev and training curves (mean per
  configuration, the band its seeds span); system metrics after them.

What MLflow does not let a project decide: the view a bare experiment URL opens on (the browser's
last state, else MLflow's default), the bar labels' 2 decimals, the order of the compare-runs page's
plot selectors, and the columns of the model-version page. ``make ui`` and ``make report`` print the link.
"""

from __future__ import annotations

import json

from ..core.metrics import METRIC_LABELS, METRICS
from .naming import CONFIGURATION_TAG, GROUP_TAG, PARENT_TAG
from .store import with_retry

VIEW_KEY = "extractive-qa"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
RUN_NAME_COLUMN = "attributes.`Run Name`"
PARAM_COLUMNS = 8  # params shown as columns at most (the ones that differ between runs)


def _bar(uuid: str, section: str, metric: str, title: str | None = None) -> dict:
    return {"uuid": uuid, "type": "BAR", "runsCountToCompare": 100, "metricSectionId": section, "deleted": False,
            "isGenerated": False, "metricKey": metric, "displayName": title or metric}


def _line(uuid: str, section: str, metric: str) -> dict:
    return {**_bar(uuid, section, metric), "type": "LINE", "lineSmoothness": 0, "xAxisScaleType": "linear",
            "scaleType": "linear", "range": {}, "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
            "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}


def view_state(optimize_metric: str, params: list[str]) -> dict:
    """The shared view's JSON state (the fields the UI persists; see the module docstring)."""
    first = list(dict.fromkeys((optimize_metric, "em", "f1")))
    best = [f"best/dev_{m}" for m in first]
    columns = [*(f"metrics.`{m}`" for m in [*best, "seeds/std_dev_em"]),
               *(f"params.`{p}`" for p in params[:PARAM_COLUMNS]), "attributes.`Models`"]
    sections = [("eqa-best", "best dev scores in points: one bar per configuration (mean over its seeds)"),
                ("eqa-curves", "dev and training curves per configuration")]
    order = [*first, *(m for m in METRICS if m not in first)]
    charts = [*(_bar(f"eqa-{m}", "eqa-best", f"points/best_dev_{m}", f"best dev {METRIC_LABELS[m]} (points)")
                for m in order), _bar("eqa-wall", "eqa-best", "wall_time_s", "wall time (s)"),
              *(_line(f"eqa-{m}", "eqa-curves", m) for m in ("dev/em", "dev/f1", "train/loss", "train/lr"))]
    return {
        "searchFilter": "", "orderByKey": f"metrics.`best/dev_{optimize_metric}`", "orderByAsc": False,
        "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": columns, "columnOrder": [RUN_NAME_COLUMN, *columns],
        "columnWidths": {RUN_NAME_COLUMN: 300}, "runsExpanded": {}, "runsPinned": [],
        "runsHidden": [], "runsVisibilityMap": {}, "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": u, "name": n, "display": True, "isReordered": True, "deleted": False,
                                "isGenerated": False} for u, n in sections],
        "viewMaximized": False, "runListHidden": False, "isAccordionReordered": True, "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True, "groupsExpanded": {}, "autoRefreshEnabled": True,
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": GROUP_TAG}]},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def publish_view(client, experiment_id: str, optimize_metric: str = "em") -> str:
    """Write (or refresh) the experiment's shared view from its runs as they are now; the runs-page URL
    path that opens it (``#/experiments/<id>/runs?viewStateShareKey=...``)."""
    runs = with_retry(lambda: client.search_runs([experiment_id], max_results=5000), "find runs")
    jobs = [r for r in runs if PARENT_TAG not in r.data.tags and CONFIGURATION_TAG not in r.data.tags]
    keys = sorted({k for r in jobs for k in r.data.params})
    differing = [k for k in keys if len({r.data.params.get(k) for r in jobs}) > 1]
    swept = [k for r in runs if PARENT_TAG in r.data.tags for k in r.data.tags.get("sweep.keys", "").split(", ") if k]
    params = list(dict.fromkeys([*swept, *differing]))
    state = view_state(optimize_metric, params)
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
