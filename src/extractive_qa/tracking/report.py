"""Report files of a sweep, an experiment or any two configurations: the runs table, configurations over
seeds, the plots and "Is the difference real?" (intervals, p-values, flips, EM by bucket), as
``report.md`` and a self-contained ``report.html`` that shows as it is in the MLflow UI's artifact view."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..core.metrics import METRIC_LABELS, METRICS
from ..core.outputs import write_atomic
from .base import RunRow, TrackingBackend
from .comparison import Comparison
from .summary import Group, best_metrics, group_by_config, optimize_metric_of, rank, seeds_swept

PLOTS = ("dev_em.png", "dev_em_steps.png", "train_loss.png")
# What every interval, p-value and verdict of a comparison counts, said wherever they are shown.
MEANING = ("Δ = best − other in points; its 95% interval and p-value count both sources of noise: the seeds "
           "(each configuration's spread from run to run, pooled over a sweep's configurations when their spreads "
           "agree) and the dev questions (paired, with each paragraph's questions counted together); in a sweep the "
           "interval and p are simultaneous over every pair of configurations, so an interval excludes 0 exactly "
           "when its line says real")
REPORT_FILES = ("report.html", "report.md", *PLOTS)
Table = tuple[list[str], list[list[str]]]  # header, rows


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _mean_std(group: Group, metric: str) -> str:
    mean, std, n = group.stats(metric)
    return "–" if not n else f"{mean:.4f} ± {std:.4f}"


Table = tuple[list[str], list[list[str]]]  # header, rows


def tables(rows: list[RunRow], keys: list[str], optimize_metric: str = "em") -> tuple[Table, Table]:
    """The runs table (best first, by ``optimize_metric``) and, when seeds are swept, the table of
    configurations over seeds."""
    head = ["run", *keys, *(f"best dev {METRIC_LABELS[m]}" for m in METRICS), "wall time (s)", "status"]
    body = []
    for r in rank(rows, optimize_metric):
        best = best_metrics(r)
        body.append([r.name, *(r.values.get(k, "") for k in keys), *(_fmt(best.get(m)) for m in METRICS),
                     f"{r.metrics['wall_time_s']:.1f}" if "wall_time_s" in r.metrics else "–", r.status])
    if not seeds_swept(rows):
        return (head, body), ([], [])
    seed_head = ["configuration", "n", "best dev EM (mean ± std)", "best dev F1 (mean ± std)"]
    seed_body = [[g.label, str(g.stats("best/dev_em")[2]), _mean_std(g, "best/dev_em"), _mean_std(g, "best/dev_f1")]
                 for g in group_by_config([r for r in rows if r.status == "FINISHED"])]
    return (head, body), (seed_head, seed_body)


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
            ax.scatter([i] * n, [r.metrics["best/dev_em"] for r in g.runs if "best/dev_em" in r.metrics],
                       color="#1f3b57", zorder=3, s=18)
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
        hist = backend.metric_history(r, metric)
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
                 out: Path, comparison: Comparison | None = None) -> dict[str, list[dict]]:
    """``report.md``, ``report.html`` and the plots of ``rows`` into ``out`` -- with the section "Is the
    difference real?" when there is a ``comparison`` -- and that section's tables (for the tracking store)."""
    out.mkdir(parents=True, exist_ok=True)
    plot_em(rows, out / "dev_em.png")
    plot_history(backend, rows, "dev/em", "dev EM", out / "dev_em_steps.png")
    plot_history(backend, rows, "train/loss", "training loss", out / "train_loss.png")
    (head, body), (seed_head, seed_body) = tables(rows, keys, optimize_metric_of(rows))
    md = [f"# {title}", "", *lines, ""]
    page = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{html.escape(line)}</p>" for line in lines)]
    section = significance_section(comparison) if comparison else Section()
    # The answer first (is the difference real?), then the runs it rests on, then the evidence in detail.
    md += [*section.verdict_md, "## Runs", "", _markdown(head, body)]
    page += [*section.verdict_html, "<h2>Runs</h2>", _html_table(head, body)]
    if seed_body:
        md += ["## Over seeds", "", _markdown(seed_head, seed_body)]
        page += ["<h2>Over seeds</h2>", _html_table(seed_head, seed_body)]
    md += section.detail_md
    page += section.detail_html
    md += [f"![{p}]({p})" for p in PLOTS]
    page += [f'<img alt="{p}" src="data:image/png;base64,{base64.b64encode((out / p).read_bytes()).decode()}">'
             for p in PLOTS]
    style = ("<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f3f3f3}"
             "img{max-width:48%;margin:4px}</style>")
    write_atomic(out / "report.md", "\n".join(md) + "\n")
    write_atomic(out / "report.html", f"<!doctype html><html><head><meta charset='utf-8'>{style}</head><body>"
                 + "\n".join(page) + "</body></html>\n")
    return section.tables


def _table_of(rows: list[dict]) -> Table:
    head = list(dict.fromkeys(k for r in rows for k in r))
    return head, [[_fmt(r.get(k, "")) for k in head] for r in rows]


@dataclass
class Section:
    """"Is the difference real?": its opening (verdicts), its detail tables, and those tables as rows."""

    verdict_md: list[str] = field(default_factory=list)
    verdict_html: list[str] = field(default_factory=list)
    detail_md: list[str] = field(default_factory=list)
    detail_html: list[str] = field(default_factory=list)
    tables: dict[str, list[dict]] = field(default_factory=dict)


def significance_section(comparison: Comparison) -> Section:
    """"Is the difference real?" as markdown and HTML, and the tables behind it."""
    intro = (f"Every configuration against the best one, **{comparison.reference}** (by {comparison.metric}), over the "
             f"{comparison.questions} dev questions they all answered. {MEANING}. Configurations need 2 seeds or more "
             "for a verdict. \"Smallest detectable\": the difference these seeds and questions tell apart 4 times in "
             "5; \"seeds needed\": seeds per configuration for a difference of the observed size, a range from the "
             "uncertainty of the measured seed spread.")
    section = Section(
        verdict_md=["## Is the difference real?", "", intro, "", *(f"- {line}" for line in comparison.lines), ""],
        verdict_html=["<h2>Is the difference real?</h2>", f"<p>{html.escape(intro).replace('**', '')}</p>",
                      "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in comparison.lines) + "</ul>"])
    tables = {"differences": comparison.differences, "failed_runs": comparison.failed,
              "flips": comparison.flip_examples, "em_by_bucket": comparison.buckets}
    titles = {"differences": "Differences from the best configuration", "flips": "Flips: examples",
              "failed_runs": "Failed runs (far below their configuration's other seeds)",
              "em_by_bucket": "EM by bucket (per configuration)"}
    for name, rows in tables.items():
        if rows:
            head, body = _table_of(rows)
            section.detail_md += [f"### {titles[name]}", "", _markdown(head, body)]
            section.detail_html += [f"<h3>{titles[name]}</h3>", _html_table(head, body)]
    # MLflow's table view reads a column name as a path: a configuration's name as a column ("wr=0.1")
    # shows empty cells. Its tables get one row per (bucket, configuration) instead.
    section.tables = {**tables, "em_by_bucket": long_buckets(comparison.buckets)}
    return section


def long_buckets(rows: list[dict]) -> list[dict]:
    """EM by bucket with one row per bucket and configuration (columns: bucketing, bucket, questions,
    configuration, EM)."""
    fixed = ("bucketing", "bucket", "n")
    return [{"bucketing": r["bucketing"], "bucket": r["bucket"], "questions": r["n"], "configuration": name,
             "EM": round(value, 4)} for r in rows for name, value in r.items() if name not in fixed]
