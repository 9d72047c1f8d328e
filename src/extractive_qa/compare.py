"""``python -m extractive_qa.compare`` (``make report``): compare the runs of a sweep or an experiment.

Reads the runs from MLflow, writes under ``outputs/reports/<name>/`` a Markdown table (the params
that differ between runs, best dev EM / F1, wall time, status) and two PNG plots (best dev EM against
the swept parameter; training-loss curves per run), and logs them to a "comparison" run in the same
MLflow experiment.

    python -m extractive_qa.compare                       # the newest sweep in the store
    python -m extractive_qa.compare --sweep outputs/sweeps/2026-11-24_10-00-00
    python -m extractive_qa.compare --experiment offline_smoke
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .core.config import project_root
from .core.outputs import write_atomic

REPORT_TAG = "extractive_qa.report"
IGNORED_PARAMS = ("paths.", "hydra.", "tracking.run_id")


def _client(uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}")


def find_runs(client, experiment: str | None, sweep: str | None) -> tuple[str, str, list]:
    """``(experiment_id, report name, runs)`` for the chosen sweep or experiment (newest sweep by default)."""
    experiments = client.search_experiments()
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise SystemExit(f"error: no MLflow experiment named {experiment!r} (have: {[e.name for e in experiments]})")
        ids, name, flt = [exp.experiment_id], experiment, ""
    else:
        ids = [e.experiment_id for e in experiments]
        if sweep is None:
            newest = client.search_runs(ids, filter_string="tags.`sweep.dir` != ''", order_by=["attributes.start_time DESC"],
                                        max_results=1)
            if not newest:
                raise SystemExit("error: no sweep runs in the store; run one (python -m extractive_qa.train -m ...) "
                                 "or pass --experiment NAME")
            sweep = newest[0].data.tags["sweep.dir"]
        sweep = str(Path(sweep).resolve())
        name, flt = Path(sweep).name, f"tags.`sweep.dir` = '{sweep}'"
    runs = [r for r in client.search_runs(ids, filter_string=flt, order_by=["attributes.start_time ASC"], max_results=1000)
            if REPORT_TAG not in r.data.tags and "sweep.parent" not in r.data.tags]
    if not runs:
        raise SystemExit(f"error: no runs found for {name!r}")
    return runs[0].info.experiment_id, name, runs


def differing_params(runs) -> list[str]:
    keys = sorted({k for r in runs for k in r.data.params if not k.startswith(IGNORED_PARAMS)})
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def markdown_table(runs, params: list[str]) -> str:
    head = ["run", *params, "best dev EM", "best dev F1", "wall time (s)", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in sorted(runs, key=lambda r: -r.data.metrics.get("best/dev_em", -1)):
        m = r.data.metrics
        row = [r.info.run_name, *(r.data.params.get(p, "") for p in params), _fmt(m.get("best/dev_em")),
               _fmt(m.get("best/dev_f1")), f"{m['wall_time_s']:.1f}" if "wall_time_s" in m else "–", r.info.status]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def _as_number(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def plot_em(runs, params: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    em = [r.data.metrics.get("best/dev_em", float("nan")) for r in runs]
    xs = [_as_number(r.data.params.get(params[0])) for r in runs] if len(params) == 1 else [None]
    if len(params) == 1 and all(x is not None for x in xs):
        pairs = sorted(zip(xs, em, strict=True))
        ax.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o")
        ax.set_xlabel(params[0])
    else:
        ax.bar(range(len(runs)), em)
        ax.set_xticks(range(len(runs)), [r.info.run_name[:30] for r in runs], rotation=30, ha="right", fontsize=7)
        ax.set_xlabel(", ".join(params) or "run")
    ax.set_ylabel("best dev EM")
    ax.set_title("dev exact match")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss(client, runs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        hist = sorted(client.get_metric_history(r.info.run_id, "train/loss"), key=lambda m: m.step)
        if hist:
            ax.plot([m.step for m in hist], [m.value for m in hist], label=r.info.run_name[:40])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss")
    ax.set_title("training loss")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(experiment: str | None = None, sweep: str | None = None, uri: str | None = None,
            out_dir: str | Path | None = None, log_to_mlflow: bool = True) -> Path:
    client = _client(uri)
    experiment_id, name, runs = find_runs(client, experiment, sweep)
    params = differing_params(runs)
    out = Path(out_dir) if out_dir else project_root() / "outputs" / "reports" / name
    out.mkdir(parents=True, exist_ok=True)
    title = f"# Comparison: {name}\n\n{len(runs)} runs; parameters that differ: {', '.join(params) or 'none'}\n\n"
    write_atomic(out / "comparison.md", title + markdown_table(runs, params)
                 + "\n![dev EM](dev_em.png)\n\n![training loss](train_loss.png)\n")
    plot_em(runs, params, out / "dev_em.png")
    plot_loss(client, runs, out / "train_loss.png")
    if log_to_mlflow:
        run = client.create_run(experiment_id, run_name=f"comparison: {name}", tags={REPORT_TAG: "true"})
        for f in ("comparison.md", "dev_em.png", "train_loss.png"):
            client.log_artifact(run.info.run_id, str(out / f), "comparison")
        client.set_terminated(run.info.run_id, "FINISHED")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m extractive_qa.compare", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--experiment", help="compare every run of this MLflow experiment")
    group.add_argument("--sweep", help="compare the jobs of this sweep dir (default: the newest sweep)")
    parser.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI or the project's mlflow.db)")
    parser.add_argument("--out", help="output folder (default: outputs/reports/<name>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args(argv)
    out = compare(args.experiment, args.sweep, args.uri, args.out, not args.no_log)
    print(out / "comparison.md")


if __name__ == "__main__":
    sys.exit(main())
