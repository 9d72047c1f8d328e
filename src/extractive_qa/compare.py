"""``python -m extractive_qa.compare`` (``make report``): compare the runs of a sweep or an experiment.

Writes ``report.html`` (its plots inline, so it shows as it is in the MLflow UI), ``report.md`` and
the PNG plots -- best dev EM per configuration with error bars over seeds, dev EM over steps per run,
training loss per run -- into ``outputs/reports/<name>/`` and into MLflow:

* a sweep's report goes into the sweep's **parent run** (artifacts under ``report/``), replacing the
  previous report: re-running ``make report`` adds no run;
* an experiment's report goes into one run per experiment, named after it, in the separate
  experiment ``reports`` -- kept out of the training runs' table and charts, where it would fill
  every legend (MLflow has no way to hide a run from the default view but deleting it).

Configurations that differ only in ``seed`` are aggregated: mean +/- std (and n) of the best dev EM
and F1, in the report and (at the end of a sweep) as the parent run's metrics.

    python -m extractive_qa.compare                       # the newest sweep in the store
    python -m extractive_qa.compare --sweep qkfzbm        # a sweep by its id (or its folder)
    python -m extractive_qa.compare --experiment offline_smoke
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import sys
from pathlib import Path

from .core.config import project_root
from .core.outputs import write_atomic
from .tracking.parents import children_of, find_sweep, training_runs
from .tracking.store import client_for, get_or_create_experiment, resolve_uri, with_retry
from .tracking.summary import Group, RunRow, group_by_config, row_of, seeds_swept

REPORTS_EXPERIMENT = "reports"
PLOTS = ("dev_em.png", "dev_em_steps.png", "train_loss.png")
# Params that differ between runs without being a choice worth a column.
NOT_COMPARED = ("experiment_name", "data.limit_")


def differing_params(runs) -> list[str]:
    keys = sorted({k for r in runs for k in r.data.params if not k.startswith(NOT_COMPARED)})
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _mean_std(group: Group, metric: str) -> str:
    mean, std, n = group.stats(metric)
    return "–" if not n else f"{mean:.4f} ± {std:.4f}"


def tables(rows: list[RunRow], keys: list[str]) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """The runs table (best first) and, when seeds are swept, the table of configurations over seeds."""
    head = ["run", *keys, "best dev EM", "best dev F1", "EM (CMRC2018)", "F1 (CMRC2018)", "wall time (s)", "status"]
    body = []
    for r in sorted(rows, key=lambda r: -r.metrics.get("best/dev_em", -1)):
        m = r.metrics
        body.append([r.name, *(r.values.get(k, "") for k in keys), _fmt(m.get("best/dev_em")), _fmt(m.get("best/dev_f1")),
                     _fmt(m.get("best/dev_em_cmrc2018")), _fmt(m.get("best/dev_f1_cmrc2018")),
                     f"{m['wall_time_s']:.1f}" if "wall_time_s" in m else "–", r.status])
    if not seeds_swept(rows):
        return head, body, [], []
    seed_head = ["configuration", "n", "best dev EM (mean ± std)", "best dev F1 (mean ± std)"]
    seed_body = [[g.label, str(g.stats("best/dev_em")[2]), _mean_std(g, "best/dev_em"), _mean_std(g, "best/dev_f1")]
                 for g in group_by_config([r for r in rows if r.status == "FINISHED"])]
    return head, body, seed_head, seed_body


def _markdown(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in body)]) + "\n"


def _html_table(head: list[str], body: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{rows}</tbody></table>"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_em(rows: list[RunRow], path: Path) -> None:
    """Best dev EM per configuration (categories, in swept-value order): bar = mean over seeds, error bar =
    std, dots = the runs. The axis starts at 0, so two close runs do not look far apart."""
    plt = _plt()
    groups = group_by_config(rows)
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(groups) + 2), 4))
    for i, g in enumerate(groups):
        mean, std, n = g.stats("best/dev_em")
        if n:
            ax.bar(i, mean, yerr=std if n > 1 else None, capsize=6, color="#8fb3d9", edgecolor="#2b5d8a")
            ax.scatter([i] * n, [r.metrics["best/dev_em"] for r in g.runs if "best/dev_em" in r.metrics], color="#1f3b57",
                       zorder=3, s=18)
    ax.set_xticks(range(len(groups)), [g.label[:40] for g in groups], rotation=20 if len(groups) > 3 else 0,
                  ha="right" if len(groups) > 3 else "center", fontsize=8)
    top = max([r.metrics.get("best/dev_em", 0) for r in rows] + [0.01])
    ax.set_ylim(0, min(1.0, top * 1.25) if top < 0.8 else 1.0)
    ax.set_ylabel("best dev EM")
    ax.set_title("best dev EM" + (" (mean ± std over seeds)" if seeds_swept(rows) else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(client, rows: list[RunRow], metric: str, label: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        hist = sorted(with_retry(lambda rid=r.run_id: client.get_metric_history(rid, metric), "history"), key=lambda m: m.step)
        if hist:
            ax.plot([m.step for m in hist], [m.value for m in hist], marker="o" if len(hist) < 15 else None, markersize=3,
                    label=r.name[:40])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(label)
    ax.set_title(f"{label} per run")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(client, title: str, lines: list[str], rows: list[RunRow], keys: list[str], out: Path) -> Path:
    """``report.md``, ``report.html`` and the plots of ``rows`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plot_em(rows, out / "dev_em.png")
    plot_history(client, rows, "dev/em", "dev EM", out / "dev_em_steps.png")
    plot_history(client, rows, "train/loss", "training loss", out / "train_loss.png")
    head, body, seed_head, seed_body = tables(rows, keys)
    md = [f"# {title}", "", *lines, "", _markdown(head, body)]
    page = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{html.escape(line)}</p>" for line in lines), _html_table(head, body)]
    if seed_body:
        md += ["## Over seeds", "", _markdown(seed_head, seed_body)]
        page += ["<h2>Over seeds</h2>", _html_table(seed_head, seed_body)]
    md += [f"![{p}]({p})" for p in PLOTS]
    page += [f'<img alt="{p}" src="data:image/png;base64,{base64.b64encode((out / p).read_bytes()).decode()}">'
             for p in PLOTS]
    style = ("<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f3f3f3}"
             "img{max-width:48%;margin:4px}</style>")
    write_atomic(out / "report.md", "\n".join(md) + "\n")
    write_atomic(out / "report.html", f"<!doctype html><html><head><meta charset='utf-8'>{style}</head><body>"
                 + "\n".join(page) + "</body></html>\n")
    return out


def _log_report(client, run_id: str, out: Path) -> None:
    """The report files as ``report/*`` artifacts of ``run_id`` (same paths: a new report replaces the old)."""
    for name in ("report.html", "report.md", *PLOTS):
        with_retry(lambda n=name: client.log_artifact(run_id, str(out / n), "report"), f"log {name}")


def report_sweep(client, sweep: str | None, out_dir: Path | None, log: bool) -> Path:
    parent = find_sweep(client, sweep)
    tags = parent.data.tags
    runs = children_of(client, parent)
    if not runs:
        raise SystemExit(f"error: sweep {tags.get('sweep.id')} has no runs yet")
    keys = [k for k in tags.get("sweep.keys", "").split(", ") if k] or differing_params(runs)
    rows = [row_of(r) for r in runs]
    for row, run in zip(rows, runs, strict=True):
        row.values = row.values or {k: run.data.params.get(k, "") for k in keys}
    sweep_id = tags.get("sweep.id", parent.info.run_id[:6])
    counts = ", ".join(f"{sum(r.status == s for r in rows)} {s}" for s in ("FINISHED", "FAILED", "KILLED", "RUNNING")
                       if any(r.status == s for r in rows))
    out = write_report(client, f"Sweep {sweep_id}", [f"command: {tags.get('sweep.command', '')}",
                                                     f"{len(rows)} runs ({counts}); swept: {', '.join(keys) or 'nothing'}"],
                       rows, keys, out_dir or project_root() / "outputs" / "reports" / f"sweep-{sweep_id}")
    if log:
        _log_report(client, parent.info.run_id, out)
    return out


def report_experiment(client, uri: str, experiment: str, out_dir: Path | None, log: bool) -> Path:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise SystemExit(f"error: no MLflow experiment named {experiment!r} (have: {names})")
    runs = training_runs(client, exp.experiment_id)
    if not runs:
        raise SystemExit(f"error: experiment {experiment!r} has no runs")
    keys = differing_params(runs)
    rows = [row_of(r) for r in runs]
    for row, run in zip(rows, runs, strict=True):
        row.values = {k: run.data.params.get(k, "") for k in keys}
    out = write_report(client, f"Experiment {experiment}", [f"{len(rows)} runs; parameters that differ: "
                                                            f"{', '.join(keys) or 'none'}"], rows, keys,
                       out_dir or project_root() / "outputs" / "reports" / f"experiment-{experiment}")
    if log:
        reports_id = get_or_create_experiment(client, uri, REPORTS_EXPERIMENT)
        found = with_retry(lambda: client.search_runs([reports_id], filter_string=f"tags.`report.experiment` = '{experiment}'",
                                                      max_results=1), "find report run")
        run_id = found[0].info.run_id if found else with_retry(lambda: client.create_run(
            reports_id, run_name=experiment, tags={"report.experiment": experiment}), "create report run").info.run_id
        _log_report(client, run_id, out)
        with_retry(lambda: client.set_terminated(run_id, "FINISHED"), "end report run")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m extractive_qa.compare", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--experiment", help="compare every training run of this MLflow experiment")
    group.add_argument("--sweep", help="a sweep's id (the start of its runs' names) or folder (default: the newest)")
    parser.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI or the project's mlflow.db)")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/reports/<name>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args(argv)
    uri = resolve_uri(args.uri, project_root())
    client = client_for(uri)
    if args.experiment:
        out = report_experiment(client, uri, args.experiment, args.out, not args.no_log)
    else:
        out = report_sweep(client, args.sweep, args.out, not args.no_log)
    print(out / "report.html")


if __name__ == "__main__":
    sys.exit(main())
