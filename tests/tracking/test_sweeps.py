"""Sweeps you can compare: a parent run per sweep with its jobs nested, seeds aggregated, reports that
replace themselves inside the parent, sweeps that resume, honest curves, a real submitit launch."""

from __future__ import annotations

import json
import math
import re
import stat
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from extractive_qa.compare import main as report_main
from extractive_qa.tracking.mlflow_backend import REPORTS_EXPERIMENT

from helpers import empty_store, run_module, run_with_faults


def experiment_runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def split(runs: list, configurations: bool = False) -> tuple[object, list]:
    """The sweep's parent and its jobs (or, ``configurations=True``, its configuration runs)."""
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], [r for r in nested if ("sweep.configuration" in r.data.tags) == configurations]


def test_a_seed_sweep_is_one_parent_with_its_jobs_nested_and_seed_statistics(seed_sweep):
    uri = seed_sweep["uri"]
    parent, children = split(experiment_runs(uri, "seeds"))
    sweep_id = parent.data.tags["sweep.id"]
    assert len(sweep_id) == 6 and parent.info.run_name == f"sweep {sweep_id}: seed"
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs.finished"] == "3"
    assert parent.data.tags["sweep.command"].startswith("python -m extractive_qa.train -m seed=1,2,3")
    assert sorted(r.info.run_name for r in children) == [f"seed={s} · {sweep_id}" for s in (1, 2, 3)]
    ems = [r.data.metrics["best/dev_em"] for r in children]
    mean = sum(ems) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in ems) / 2)
    # The seeds' mean and std: a configuration run beside the jobs (all three seeds: one configuration).
    _, (config,) = split(experiment_runs(uri, "seeds"), configurations=True)
    m = config.data.metrics
    assert config.info.run_name == f"all runs · 3 seeds · {sweep_id}" and m["seeds/n"] == 3
    assert m["seeds/mean_dev_em"] == round(mean, 4) and m["seeds/std_dev_em"] == round(std, 4)  # as the UI shows
    assert parent.data.metrics["sweep/best_dev_em"] == max(ems) and "best/dev_em" not in parent.data.metrics
    client = MlflowClient(uri)
    for run in children:  # comparison numbers at step 0: the chart view draws one bar per run
        assert [h.step for h in client.get_metric_history(run.info.run_id, "best/dev_em")] == [0]
    # Params: what a user sets, once, no machine-local paths.
    params = children[0].data.params
    assert "lr" in params and "optimizer.lr" not in params and "max_answer_len" not in params
    assert "data.max_answer_len" in params and not any(k.startswith(("paths.", "tracking.")) for k in params)
    assert not any(v.startswith("/") for v in params.values()) and params["data.dir"] == "data"
    assert params["precision.requested"] == "auto" and params["precision.mixed_precision"] in ("bf16", "no")
    exp = MlflowClient(uri).get_experiment_by_name("seeds")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs table


def test_every_file_a_run_writes_is_readable_by_others(seed_sweep):
    files = [p for p in seed_sweep["runs"][0].rglob("*") if p.is_file()]
    assert len(files) > 10
    unreadable = [str(p) for p in files if not p.stat().st_mode & stat.S_IROTH]
    assert not unreadable


def test_report_goes_into_the_parent_and_replaces_itself(seed_sweep, tmp_path):
    uri = seed_sweep["uri"]
    before = len(experiment_runs(uri, "seeds"))
    for _ in range(2):
        report_main(["--uri", uri, "--out", str(tmp_path / "report")])
    assert len(experiment_runs(uri, "seeds")) == before  # no comparison run among the training runs
    parent, _ = split(experiment_runs(uri, "seeds"))
    client = MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {
        "report/report.html", "report/report.md", "report/dev_em.png", "report/dev_em_steps.png",
        "report/train_loss.png"}
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3  # images travel inside the page: they show in the UI
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Over seeds" in md and "| all runs | 3 |" in md and " ± " in md
    # A report over the whole experiment lives in its own experiment, one run per reported experiment.
    for _ in range(2):
        report_main(["--uri", uri, "--experiment", "seeds", "--out", str(tmp_path / "exp")])
    reports = experiment_runs(uri, REPORTS_EXPERIMENT)
    assert [r.info.run_name for r in reports] == ["seeds"] and len(experiment_runs(uri, "seeds")) == before


def test_an_interrupted_sweep_resumes_with_the_same_command(synthetic, tmp_path):
    uri = empty_store(tmp_path)
    args = ["-m", "lr=1e-3,2e-3,3e-3", f"paths.output_dir={tmp_path}/outputs", f"paths.cache_dir={tmp_path}/cache",
            f"tracking.uri={uri}", "experiment_name=resume-sweep", "model=tiny",
            f"model.name_or_path={synthetic['model']}",
            f"data.dir={synthetic['data']}", "data.limit_train=80", "data.limit_dev=12", "predict_test=false",
            "epochs=2",
            "batch_size=8", "logging_steps=5"]
    # Ctrl-C during job 1 (its 12th step): the sweep stops there; job 2 never starts.
    first = run_with_faults(["after:_maybe_log:12#2=SIGINT"], *args, f"hydra.sweep.dir={tmp_path}/outputs/s1")
    assert first.returncode == 130
    parent, children = split(experiment_runs(uri, "resume-sweep"))
    assert parent.info.status == "KILLED" and sorted(r.info.status for r in children) == ["FINISHED", "KILLED"]
    again = run_module("extractive_qa.train", *args, f"hydra.sweep.dir={tmp_path}/outputs/s2")
    log = again.stdout + again.stderr
    assert log.count("already finished") == 1 and log.count("resuming") >= 1
    parent, children = split(experiment_runs(uri, "resume-sweep"))
    assert parent.info.status == "FINISHED" and len(children) == 3 and {r.info.status for r in children} == {"FINISHED"}
    job1 = next(r for r in children if r.data.tags["job.num"] == "1")
    run_dir = Path(job1.data.tags["run_dir"])
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 20  # continued, not restarted
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(5) == 1 and steps.count(15) == 1  # logged before the kill, then after the resume, once each
    assert not (tmp_path / "outputs" / "s2" / "0").exists()  # the finished job trained nothing
    from extractive_qa.tracking.parents import find_sweep

    for folder in ("s1", "s2"):  # the sweep is found by either folder it ran in
        assert find_sweep(MlflowClient(uri), str(tmp_path / "outputs" / folder)).info.run_id == parent.info.run_id


def test_sweep_ids_survive_a_hydra_command_line():
    """A sweep id is typed back as ``sweep=ID``: Hydra must read it as that same string, never as a number
    (hex ids did not: ``79e635`` became inf, ``012345`` the int 12345)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from extractive_qa.tracking.sweep import describe_sweep

    parser = OverridesParser.create()
    ids = {describe_sweep([f"lr={i}e-5,{i + 1}e-5", f"paths.output_dir=/tmp/{i}"])["id"] for i in range(3000)}
    assert len(ids) > 2990  # distinct sweeps get distinct ids
    for sweep_id in ids:
        assert len(sweep_id) == 6 and parser.parse_override(f"sweep={sweep_id}").value() == sweep_id


def test_a_two_by_two_sweep_reads_apart_and_says_whether_its_configurations_differ(synthetic, tmp_path, capsys):
    """`-m warmup_ratio=0.1,0.3 seed=1,2`: job names lead with what differs; each configuration gets a run with
    its mean and std over seeds, coloured like its jobs; the experiment's shared view shows them; `make report`
    (twice: no new run) says whether the configurations differ; `compare A B` does the same for any two sides."""
    import json as json_module

    uri = empty_store(tmp_path)
    run_module("extractive_qa.train", "-m", "warmup_ratio=0.1,0.3", "seed=1,2", f"paths.output_dir={tmp_path}/outputs",
               f"paths.cache_dir={tmp_path}/cache", f"tracking.uri={uri}", "experiment_name=two-by-two", "model=tiny",
               f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}", "data.limit_train=96",
               "data.limit_dev=40", "predict_test=false", "max_steps=6", "batch_size=16", "logging_steps=3",
               "tracking.system_metrics=false", f"hydra.sweep.dir={tmp_path}/sweep")
    runs = experiment_runs(uri, "two-by-two")
    parent, jobs = split(runs)
    _, configurations = split(runs, configurations=True)
    sweep_id = parent.data.tags["sweep.id"]
    assert parent.info.run_name == f"sweep {sweep_id}: wr=warmup_ratio, seed"
    names = [f"wr={w} seed={s} · {sweep_id}" for w in (0.1, 0.3) for s in (1, 2)]
    assert sorted(r.info.run_name for r in jobs) == names
    assert sorted(r.info.run_name for r in configurations) == [f"wr={w} · 2 seeds · {sweep_id}" for w in (0.1, 0.3)]
    for config in configurations:
        mine = [j for j in jobs if j.data.params["warmup_ratio"] == config.data.params["warmup_ratio"]]
        ems = [j.data.metrics["best/dev_em"] for j in mine]
        assert config.data.metrics["seeds/mean_dev_em"] == pytest.approx(sum(ems) / 2)
        assert config.data.metrics["seeds/n"] == 2
        assert {j.data.tags["mlflow.runColor"] for j in mine} == {config.data.tags["mlflow.runColor"]}
    assert len({c.data.tags["mlflow.runColor"] for c in configurations}) == 2  # told apart by colour too
    exp = MlflowClient(uri).get_experiment_by_name("two-by-two")
    view = json_module.loads(exp.tags["mlflow.sharedViewState.extractive-qa"])
    assert view["orderByKey"] == "metrics.`best/dev_em`"
    # Grouped by configuration (MLflow nests a sweep only when sorted by start time, and opens it collapsed).
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "configuration"}]
    groups = {r.info.run_name: r.data.tags["configuration"] for r in [*jobs, *configurations]}
    assert groups[f"wr=0.1 seed=2 · {sweep_id}"] == groups[f"wr=0.1 · 2 seeds · {sweep_id}"] == f"wr=0.1 · {sweep_id}"
    assert {"metrics.`best/dev_em`", "params.`warmup_ratio`", "params.`seed`"} <= set(view["selectedColumns"])
    charts = [c["metricKey"] for c in view["compareRunCharts"]]
    assert charts[0] == "points/best_dev_em" and "seeds/n" not in charts  # charts lead with dev EM, in points

    before = len(runs)
    for _ in range(2):
        report_main(["--uri", uri, "--out", str(tmp_path / "report")])
    assert len(experiment_runs(uri, "two-by-two")) == before
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.index("## Is the difference real?") < md.index("## Runs")  # the answer first
    line = next(x for x in md.splitlines() if x.startswith("- warmup_ratio="))
    assert re.match(r"- warmup_ratio=0\.[13] vs warmup_ratio=0\.[13]: (real|not established|no verdict): ", line), line
    assert "ΔEM" in line and "seeds" in md and "questions" in md  # what the numbers count, said with them
    printed = capsys.readouterr().out
    assert line[2:] in printed  # the verdict reaches the terminal, not only report.html
    assert "### EM by bucket" in md and "question word" in md
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id, "report")}
    assert {"report/differences.json", "report/em_by_bucket.json"} <= artifacts  # MLflow tables: shown as tables
    table = MlflowClient(uri).download_artifacts(parent.info.run_id, "report/differences.json", str(tmp_path))
    assert len(json_module.loads(open(table).read())["data"]) == 1  # made twice, the one pair's line once

    # Any two sides: configurations of the sweep through the store, or run folders without any store.
    report_main(["--uri", uri, f"sweep={sweep_id}:warmup_ratio=0.1", f"sweep={sweep_id}:warmup_ratio=0.3",
                 "--out", str(tmp_path / "sides")])
    assert "ΔEM" in (tmp_path / "sides" / "report.md").read_text()
    report_main([str(tmp_path / "sweep" / "0"), str(tmp_path / "sweep" / "2"), "--tracking", "none",
                 "--out", str(tmp_path / "dirs")])
    text = (tmp_path / "dirs" / "report.md").read_text()
    assert "## Is the difference real?" in text and "40 dev questions" in text
