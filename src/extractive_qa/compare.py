"""``python -m extractive_qa.compare`` (``make report``): compare the runs of a sweep, an experiment, or
any two runs, configurations or sweeps -- and say whether the differences are real.

Writes ``report.html`` (its plots inline, so it shows as it is in the MLflow UI), ``report.md`` and
the PNG plots -- best dev EM per configuration with error bars over seeds, dev EM over steps per run,
training loss per run -- and, when there are two configurations or more, **Is the difference
real?**: each configuration against the best one over the same dev questions, with paired bootstrap
intervals and randomization p-values of ΔEM and ΔF1, the flips (with examples), EM by bucket and the
number of seeds a difference of that size needs (:mod:`extractive_qa.tracking.comparison`). Into
``outputs/reports/<name>/`` and into MLflow:

* a sweep's report goes into the sweep's **parent run** (artifacts under ``report/``, its tables as
  MLflow tables), replacing the previous report: re-running ``make report`` adds no run;
* an experiment's report goes into one run per experiment, named after it, in the separate
  experiment ``reports`` -- kept out of the training runs' table and charts, where it would fill
  every legend (MLflow has no way to hide a run from the default view but deleting it).

    python -m extractive_qa.compare                       # the newest sweep in the store
    python -m extractive_qa.compare --sweep qkfzbm        # a sweep by its id (or its folder)
    python -m extractive_qa.compare --experiment offline_smoke
    python -m extractive_qa.compare outputs/runs/A outputs/runs/B             # any two runs (no store needed)
    python -m extractive_qa.compare sweep=qkfzbm:warmup_ratio=0.1 sweep=qkfzbm:warmup_ratio=0.2
    python -m extractive_qa.compare sweep=qkfzbm sweep=abcdef                  # two sweeps, each over its seeds
    python -m extractive_qa.compare runs/s1,runs/s2 runs/t1,runs/t2            # two configurations, each over seeds
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .core.config import project_root
from .core.errors import SetupError, run_cli
from .core.schema import check_experiment_name
from .core.secrets import redact
from .tracking.base import RunRow, TrackingBackend, backend_named
from .tracking.comparison import SCORES, Comparison, Configuration, compare, load, question_buckets
from .tracking.report import MEANING, REPORT_FILES, write_report
from .tracking.rundir import run_dir_row
from .tracking.summary import group_by_config, optimize_metric_of, rank


def differing_params(rows: list[RunRow]) -> list[str]:
    """The params (a role ``param`` key: :mod:`extractive_qa.core.roles`) whose value differs between runs."""
    keys = sorted({k for r in rows for k in r.params})
    return [k for k in keys if len({r.params.get(k) for r in rows}) > 1]


def comparison_of(backend: TrackingBackend, configurations: list[Configuration], metric: str) -> Comparison | None:
    """Configurations compared question by question (``None`` for fewer than two)."""
    if len(configurations) < 2:
        return None
    questions = load(backend, configurations, tuple(dict.fromkeys((metric, *SCORES))))
    reference = rank([r for c in configurations for r in c.runs], metric)[0]
    return compare(configurations, questions, metric, question_buckets(questions, reference))


def configurations_of(rows: list[RunRow]) -> list[Configuration]:
    """A sweep's or experiment's finished runs grouped by their values other than the seed."""
    finished = [r for r in rows if r.status == "FINISHED"]
    return [Configuration(label=g.label, runs=g.runs) for g in group_by_config(finished)]


def report_sweep(backend: TrackingBackend, sweep: str | None, out_dir: Path | None,
                 log: bool) -> tuple[Path, Comparison | None]:
    record = backend.find_sweep(sweep)
    rows = backend.sweep_runs(record)
    if not rows:
        raise SystemExit(f"error: sweep {record.id} has no runs yet")
    keys = record.keys or differing_params(rows)
    for row in rows:
        row.values = row.values or {k: row.params.get(k, "") for k in keys}
    states = ("FINISHED", "PRUNED", "FAILED", "KILLED", "RUNNING")  # pruned trials counted apart
    counts = ", ".join(f"{sum(r.status == s for r in rows)} {s}" for s in states
                       if any(r.status == s for r in rows))
    lines = [f"command: {record.command}", f"{len(rows)} runs ({counts}); swept: {', '.join(keys) or 'nothing'}",
             *race_history(record)]
    for line in lines[2:]:
        print(line)
    comparison = comparison_of(backend, configurations_of(rows), optimize_metric_of(rows))
    out = out_dir or project_root() / "outputs" / "reports" / f"sweep-{record.id}"
    tables = write_report(backend, f"Sweep {record.id}", lines, rows, keys, out, comparison)
    if log:
        backend.attach_report(out, list(REPORT_FILES), record, None, tables)
    return out, comparison


def race_history(record) -> list[str]:
    """A race's looks, in words, from the newest ``race.json`` among the folders the sweep ran in (nothing for a
    sweep that is not a race)."""
    import json

    found = [Path(d) / "race.json" for d in record.dirs if (Path(d) / "race.json").is_file()]
    if not found:
        return []
    race = json.loads(max(found, key=lambda p: p.stat().st_mtime).read_text())
    lines = [f"race over {len(race['configurations'])} configurations ({race['settings']['first_seeds']} seeds first, "
             f"at most {race['settings']['max_seeds']}; alpha {race['settings']['alpha']} spent over its looks):"]
    for look in race["looks"]:
        lines.append(f"  look {look['look']} (alpha {look['alpha']}): {look['alive']} alive ({look['seeds']}); best "
                     f"{look['best']}; dropped: {look['dropped']}; next seed: {look.get('next seed', '-')}")
    lines += [f"  dropped {label}: {why}" for label, why in race["dropped"].items()]
    lines.append(f"  {'best established: ' + race['best'] if race['established'] else 'no best established yet'}; "
                 f"still in the race: {', '.join(race['alive'])}")
    return lines


def report_experiment(backend: TrackingBackend, experiment: str, out_dir: Path | None,
                      log: bool) -> tuple[Path, Comparison | None]:
    check_experiment_name(experiment)  # it names the report's folder: a name, never a path
    rows = backend.experiment_runs(experiment)
    if not rows:
        raise SystemExit(f"error: experiment {experiment!r} has no runs")
    keys = differing_params(rows)
    for row in rows:
        row.values = {k: row.params.get(k, "") for k in keys}
    comparison = comparison_of(backend, configurations_of(rows), optimize_metric_of(rows))
    out = out_dir or project_root() / "outputs" / "reports" / f"experiment-{experiment}"
    lines = [f"{len(rows)} runs; parameters that differ: {', '.join(keys) or 'none'}"]
    tables = write_report(backend, f"Experiment {experiment}", lines, rows, keys, out, comparison)
    if log:
        backend.attach_report(out, list(REPORT_FILES), None, experiment, tables)
    return out, comparison


def side(backend: TrackingBackend, spec: str) -> Configuration:
    """One side of ``compare A B``: run dirs (comma-separated: a configuration over its seeds), a sweep's
    finished jobs (``sweep=ID``), or one configuration of a sweep (``sweep=ID:key=value,key=value``)."""
    if spec.startswith("sweep="):
        sweep_id, _, selector = spec[len("sweep="):].partition(":")
        wanted = dict(pair.split("=", 1) for pair in selector.split(",") if "=" in pair)
        rows = [r for r in backend.sweep_runs(backend.find_sweep(sweep_id)) if r.status == "FINISHED"
                and all(r.values.get(k) == v for k, v in wanted.items())]
        if not rows:
            raise FileNotFoundError(f"{spec}: no finished run of sweep {sweep_id} has {selector or 'any values'}")
        return Configuration(label=spec[len("sweep="):], runs=rows)
    dirs = [Path(d).expanduser() for d in spec.split(",") if d]
    missing = [str(d) for d in dirs if not (d / "run.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)}: not a run folder (no run.json). Name run folders, or "
                                "sweep=ID[:key=value,...]")
    rows = [run_dir_row(d) for d in dirs]
    label = rows[0].name if len(rows) == 1 else f"{rows[0].name} (+{len(rows) - 1})"
    return Configuration(label=label, runs=rows)


def compare_two(backend: TrackingBackend, a: str, b: str, out_dir: Path | None,
                metric: str | None) -> tuple[Path, Comparison | None]:
    """``A`` against ``B``: the comparison section on its own, into ``outputs/reports/compare-.../``."""
    sides = [side(backend, a), side(backend, b)]
    if sides[0].label == sides[1].label:
        sides[1].label += " (B)"
    rows = [r for s in sides for r in s.runs]
    comparison = comparison_of(backend, sides, metric or optimize_metric_of(rows))
    slug = re.sub(r"[^\w.=-]+", "_", f"{sides[0].label}-vs-{sides[1].label}")[:120]
    out = out_dir or project_root() / "outputs" / "reports" / f"compare-{slug}"
    for s in sides:
        for r in s.runs:
            r.values = r.values or {"side": s.label}
    write_report(backend, f"{sides[0].label} vs {sides[1].label}", [], rows, [], out, comparison)
    return out, comparison


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m extractive_qa.compare`` (also read by the docs' test of every command)."""
    parser = argparse.ArgumentParser(prog="python -m extractive_qa.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("sides", nargs="*", metavar="A B",
                        help="two runs, configurations or sweeps to compare (see above)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--experiment", help="compare every training run of this MLflow experiment")
    group.add_argument("--sweep", help="a sweep's id (the end of its runs' names) or folder (default: the newest)")
    parser.add_argument("--metric", help="what 'best' means (default: the runs' optimize_metric)")
    parser.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI or the project's mlflow.db)")
    parser.add_argument("--tracking", default="mlflow", help="the backend to read runs from: a conf/tracking/ option")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/reports/<name>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    parser.add_argument("--calibrate", action="store_true", help="print how often a verdict is wrong, from a seeded "
                        "simulation of sweeps (false 'real' rate, coverage, power); no runs needed")
    parser.add_argument("--trials", type=int, default=1000, help="simulated comparisons per row of --calibrate")
    parser.add_argument("--questions", type=int, default=3000, help="dev questions per simulated run (--calibrate)")
    parser.add_argument("--links", metavar="UI", help="only print the links that open each experiment's runs view in "
                        "the UI served at UI (make ui: http://127.0.0.1:5000)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = arguments()
    args = parser.parse_args(argv)
    if args.calibrate:
        from .core.calibration import report

        for line in report(args.trials, args.questions):
            print(line, flush=True)
        return
    if args.sides and len(args.sides) != 2:
        parser.error("compare takes two sides (A B), or none with --sweep / --experiment")
    try:
        backend = backend_named(args.tracking, project_root(), args.uri)
        if args.links:
            print("\n".join(backend.links(args.links)) or "no runs view yet: train a run or a sweep first")
            return
        if args.sides:
            out, comparison = compare_two(backend, *args.sides, args.out, args.metric)
        elif args.experiment:
            out, comparison = report_experiment(backend, args.experiment, args.out, not args.no_log)
        else:
            out, comparison = report_sweep(backend, args.sweep, args.out, not args.no_log)
    except (SetupError, FileNotFoundError, ValueError) as err:
        print(redact(f"error: {err}"), file=sys.stderr)
        return 2
    if comparison is not None:  # the answer on the terminal, not only in report.html
        print(f"Is the difference real? ({comparison.questions} dev questions; {MEANING})")
        for line in comparison.lines:
            print(f"  {line}")
    print(f"report: {out / 'report.html'}")


if __name__ == "__main__":
    run_cli(main)  # one-line errors, secrets kept out, a prompt end (core/errors.py)
