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
from .core.errors import SetupError
from .core.metrics import METRIC_LABELS, METRICS
from .core.outputs import write_atomic
from .tracking.base import RunRow, TrackingBackend, backend_named
from .tracking.summary import Group, best_metrics, group_by_config, optimize_metric_of, rank, seeds_swept

PLOTS = ("dev_em.png", "dev_em_steps.png", "train_loss.png")
REPORT_FILES = ("report.html", "report.md", *PLOTS)


def differing_params(rows: list[RunRow]) -> list[str]:
    """The params (a role ``param`` key: :mod:`extractive_qa.core.roles`) whose value differs between runs."""
    keys = sorted({k for r in rows for k in r.params})
    return [k for k in keys if len({r.params.get(k) for r in rows}) > 1]


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _mean_std(group: Group, metric: str) -> str:
    mean, std, n = group.stats(metric)
    return "–" if not n else f"{mean:.4f} ± {std:.4f}"


def tables(rows: list[RunRow], keys: list[str], optimize_metric: str = "em") -> tuple[list[str], list[list[str]], list[str],
                                                                                  list[list[str]]]:
    """The runs table (best first, by ``optimize_metric``) and, when seeds are swept, the table of
    configurations over seeds."""
    head = ["run", *keys, *(f"best dev {METRIC_LABELS[m]}" for m in METRICS), "wall time (s)", "status"]
    body = []
    for r in rank(rows, optimize_metric):
        best = best_metrics(r)
        body.append([r.name, *(r.values.get(k, "") for k in keys), *(_fmt(best.get(m)) for m in METRICS),
                     f"{r.metrics['wall_time_s']:.1f}" if "wall_time_s" in r.metrics else "–", r.status])
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


def plot_history(backend: TrackingBackend, rows: list[RunRow], metric: str, label: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        hist = backend.metric_history(r.run_id, metric)
        if hist:
            ax.plot([s for s, _ in hist], [v for _, v in hist], marker="o" if len(hist) < 15 else None, markersize=3,
                    label=r.name[:40])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(label)
    ax.set_title(f"{label} per run")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(backend: TrackingBackend, title: str, lines: list[str], rows: list[RunRow], keys: list[str],
                 out: Path) -> Path:
    """``report.md``, ``report.html`` and the plots of ``rows`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plot_em(rows, out / "dev_em.png")
    plot_history(backend, rows, "dev/em", "dev EM", out / "dev_em_steps.png")
    plot_history(backend, rows, "train/loss", "training loss", out / "train_loss.png")
    head, body, seed_head, seed_body = tables(rows, keys, optimize_metric_of(rows))
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


def report_sweep(backend: TrackingBackend, sweep: str | None, out_dir: Path | None, log: bool) -> Path:
    record = backend.find_sweep(sweep)
    rows = backend.sweep_runs(record)
    if not rows:
        raise SystemExit(f"error: sweep {record.id} has no runs yet")
    keys = record.keys or differing_params(rows)
    for row in rows:
        row.values = row.values or {k: row.params.get(k, "") for k in keys}
    counts = ", ".join(f"{sum(r.status == s for r in rows)} {s}" for s in ("FINISHED", "FAILED", "KILLED", "RUNNING")
                       if any(r.status == s for r in rows))
    out = write_report(backend, f"Sweep {record.id}", [f"command: {record.command}",
                                                       f"{len(rows)} runs ({counts}); swept: {', '.join(keys) or 'nothing'}"],
                       rows, keys, out_dir or project_root() / "outputs" / "reports" / f"sweep-{record.id}")
    if log:
        backend.attach_report(out, list(REPORT_FILES), record, None)
    return out


def report_experiment(backend: TrackingBackend, experiment: str, out_dir: Path | None, log: bool) -> Path:
    rows = backend.experiment_runs(experiment)
    if not rows:
        raise SystemExit(f"error: experiment {experiment!r} has no runs")
    keys = differing_params(rows)
    for row in rows:
        row.values = {k: row.params.get(k, "") for k in keys}
    out = write_report(backend, f"Experiment {experiment}", [f"{len(rows)} runs; parameters that differ: "
                                                             f"{', '.join(keys) or 'none'}"], rows, keys,
                       out_dir or project_root() / "outputs" / "reports" / f"experiment-{experiment}")
    if log:
        backend.attach_report(out, list(REPORT_FILES), None, experiment)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m extractive_qa.compare", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--experiment", help="compare every training run of this MLflow experiment")
    group.add_argument("--sweep", help="a sweep's id (the start of its runs' names) or folder (default: the newest)")
    parser.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI or the project's mlflow.db)")
    parser.add_argument("--tracking", default="mlflow", help="the backend to read runs from: a conf/tracking/ option")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/reports/<name>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args(argv)
    try:
        backend = backend_named(args.tracking, project_root(), args.uri)
        if args.experiment:
            out = report_experiment(backend, args.experiment, args.out, not args.no_log)
        else:
            out = report_sweep(backend, args.sweep, args.out, not args.no_log)
    except (SetupError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    print(out / "report.html")


if __name__ == "__main__":
    sys.exit(main())
