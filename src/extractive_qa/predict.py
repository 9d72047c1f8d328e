"""``python -m extractive_qa.predict`` (``make predict``): a submission CSV from one trained model or an
ensemble of several.

Which models: ``run_dir=`` (one run), ``run_dirs=[a,b,c]``, ``top_k=3 sweep=<id>`` or ``top_k=3
experiment=<name>`` (the k best finished runs in the tracking store, by ``optimize_metric`` with ties
broken by EM then F1), ``model_uri=models:/<name>/<version>``
or ``runs:/<run id>/model`` (a logged or registered model), or -- with none of these -- the newest run
that kept its ``best_model/``. Each model predicts with its run's own window and post-processing
settings; several are combined by averaging logits when their windows line up, else by an n-best
vote (:mod:`extractive_qa.engine.ensemble`). Members are named as the MLflow UI names their runs. With
several models (or ``dev_file=``), every member and the ensemble are also scored -- by default on the dev
questions the runs were scored on while training, so the numbers match the UI -- and the gain is
measured, not assumed. The CSV has every test id exactly once, in file order; the last line printed is
``submission: <its path>``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .core.config import CONF_DIR, project_root
from .core.errors import run_cli

log = logging.getLogger(__name__)


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def newest_run(output_dir: Path) -> Path:
    """The newest run under ``output_dir`` whose ``best_model/`` is complete (its manifest verifies); runs
    passed over on the way -- a kill while their best model was written -- are named."""
    from .core.runs import RUN_RECORD, read_run_record
    from .engine.checkpointing import model_folder_problem

    # Every run under outputs/ is read, those without a model too: a dead RUNNING run (killed before its first
    # evaluation) is ended KILLED -- in run.json and its tracking store -- by this reader as by every other.
    for record in output_dir.glob(f"**/{RUN_RECORD}"):
        read_run_record(record.parent)
    # A kill between the two renames of a best-model swap leaves only .tmp_/.previous_best_model: still a run.
    found = {p.parent for pattern in ("best_model", ".tmp_best_model", ".previous_best_model")
             for p in output_dir.glob(f"**/{pattern}") if p.is_dir() and (p.parent / "config_resolved.yaml").is_file()}
    skipped = []
    for run in sorted(found, key=lambda p: max(f.stat().st_mtime for f in p.glob("*best_model")), reverse=True):
        problem = model_folder_problem(run / "best_model")
        if problem is None or problem.startswith("unverified"):
            for line in skipped:
                _warn(f"skipped {line}")
            return run
        skipped.append(f"{run}: its best_model/ is incomplete ({problem})")
    raise FileNotFoundError(f"no trained run with a complete best_model/ under {output_dir}"
                            + (f" (skipped: {'; '.join(skipped)})" if skipped else "")
                            + "; train one first (make train) or pass run_dir=/path/to/run")


def why_no_model(run_dir: Path) -> str:
    """What happened to a run without a ``best_model/``, from what it recorded (run.json, its config, its metrics)."""
    from omegaconf import OmegaConf

    from .core.runs import read_metrics, read_run_record

    record = read_run_record(run_dir) or {}
    status = record.get("status", "no run.json")
    if not (run_dir / "config_resolved.yaml").is_file():
        return "it has no config_resolved.yaml (not a run folder, or one cut short at its very start)"
    cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
    evaluated = any(name == "dev/em" for name, *_ in read_metrics(run_dir))
    if not cfg.get("save_model", True) and status == "FINISHED":
        return "it finished with save_model=false, which deletes best_model/ once the test predictions are written"
    if evaluated:
        return (f"it evaluated, but no complete best_model/ survived: the run is {status}"
                + (f" ({record['error'].splitlines()[0][:200]})" if record.get("error") else "")
                + " -- stopped while its first best model was being written. Resume it (resume=" + str(run_dir) + ")")
    return f"it is {status} and never reached its first evaluation (eval_steps / the end of an epoch)"


def check_run_dir(run_dir: Path) -> Path:
    """``run_dir``, after checking it holds a trained model; says so when the weights in its ``best_model/`` are
    not the ones the run saved (changed, truncated, or unverifiable for a run from an older version)."""
    from .engine.checkpointing import model_folder_problem, recover_model_folder

    run_dir = Path(run_dir).expanduser().resolve()
    recover_model_folder(run_dir / "best_model")  # an interrupted save: put back a complete copy, clean the rest
    problem = model_folder_problem(run_dir / "best_model") if (run_dir / "best_model").is_dir() else "missing"
    no_model = problem in ("missing", "no config.json (no model was saved there)")
    if no_model or not (run_dir / "config_resolved.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} holds no trained model: {why_no_model(run_dir)}. Fix: "
                                "run_dir=<a run that kept its best_model/>")
    if problem is not None:
        _warn(f"{run_dir}/best_model: {problem}" if problem.startswith("unverified") else
              f"the weights in {run_dir}/best_model are not the ones the run saved ({problem}); predicting with "
              "them as they are")
    return run_dir


def _backend(cfg: DictConfig):
    from .tracking.base import backend_for

    return backend_for(cfg.tracking, project_root())


def top_runs(cfg: DictConfig) -> list[tuple[str, Path]]:
    """``(run name, run dir)`` of the ``top_k`` best FINISHED runs of ``sweep`` or ``experiment`` that kept a
    ``best_model/``: ranked by ``optimize_metric`` (default: the one the runs were trained with), ties broken
    by EM then F1, then by name."""
    from .tracking.summary import best_metrics, optimize_metric_of, rank

    backend = _backend(cfg)
    if cfg.sweep:
        rows = backend.sweep_runs(backend.find_sweep(str(cfg.sweep)))
    elif cfg.experiment_name:
        rows = backend.experiment_runs(str(cfg.experiment_name))
    else:
        raise FileNotFoundError("top_k needs sweep=<id> or experiment_name=<name> to choose from")
    finished = [r for r in rows if r.status == "FINISHED" and best_metrics(r) and r.run_dir
                and (Path(r.run_dir) / "best_model").is_dir()]
    if len(finished) < int(cfg.top_k):
        raise FileNotFoundError(f"top_k={cfg.top_k} but only {len(finished)} finished runs with a best_model/ "
                                "were found")
    ranked = rank(finished, str(cfg.optimize_metric or optimize_metric_of(finished)))
    return [(r.name, Path(r.run_dir)) for r in ranked[: int(cfg.top_k)]]


def member_sources(cfg: DictConfig) -> list[tuple[str, Path]]:
    """``(name, folder)`` of every model to predict with (a run dir, or a downloaded MLflow model)."""
    if cfg.model_uri:
        folder = _backend(cfg).model_folder(str(cfg.model_uri))
        if not (folder / "config_resolved.yaml").is_file():
            raise FileNotFoundError(f"{cfg.model_uri} was not logged by this project (no config_resolved.yaml beside "
                                    "the model): its windows and post-processing settings are unknown")
        return [(str(cfg.model_uri), folder)]
    if cfg.top_k and not cfg.run_dirs:
        return [(name, check_run_dir(d)) for name, d in top_runs(cfg)]
    if cfg.run_dirs:
        dirs = [Path(str(d)) for d in cfg.run_dirs]
    else:
        dirs = [Path(str(cfg.run_dir)) if cfg.run_dir else default_run(Path(cfg.paths.output_dir),
                                                                        cfg.get("optimize_metric"))]
    return [(run_name(d), check_run_dir(d)) for d in dirs]


def default_run(output_dir: Path, metric: str | None = None) -> Path:
    """What plain ``make predict`` predicts with: the newest run -- and when it belongs to a sweep, that sweep's
    best finished run by ``optimize_metric`` (the newest job of a sweep is as often its worst). Its first line
    says which run it took and why, with its dev score."""
    from .core.metrics import METRIC_LABELS, selection_key
    from .core.runs import read_run_record
    from .engine.checkpointing import model_folder_problem

    newest = newest_run(output_dir)
    record = read_run_record(newest) or {}
    sweep = record.get("sweep") or {}
    metric = metric or str(record.get("optimize_metric") or "em")
    candidates = []
    if sweep.get("dir"):
        for path in Path(sweep["dir"]).glob("*/run.json"):
            other = read_run_record(path.parent) or {}
            if other.get("status") != "FINISHED" or not other.get("best") or not (path.parent / "best_model").is_dir():
                continue
            problem = model_folder_problem(path.parent / "best_model")
            if problem is None or problem.startswith("unverified"):
                candidates.append((selection_key(other["best"], metric), path.parent, other))
    if candidates:
        _, chosen, best = max(candidates, key=lambda c: (c[0], str(c[1])))
        why = (f"the best of sweep {sweep.get('id')} ({len(candidates)} finished runs) by dev "
               f"{METRIC_LABELS.get(metric, metric)} {best['best'].get(metric, float('nan')):.4f}")
    else:
        chosen, best = newest, record
        score = (best.get("best") or {}).get(metric)
        why = "the newest run" + (f", dev {METRIC_LABELS.get(metric, metric)} {score:.4f}" if score is not None else "")
    print(f"predicting with {run_name(chosen)} ({chosen}): {why}; run_dir=... or top_k=... for another",
          flush=True)
    return chosen


def run_name(run_dir: Path) -> str:
    """The run's name as the MLflow UI shows it (recorded in its ``run.json``); for runs from before names
    were recorded, its folder (``<sweep>/<job>`` for a sweep's numbered job dirs)."""
    from .core.runs import read_run_record

    name = (read_run_record(run_dir) or {}).get("run_name")
    return str(name) if name else f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.isdigit() else run_dir.name


def dev_set(cfg: DictConfig, members: list) -> tuple[list, str] | None:
    """The dev questions to score members on, and a label saying which they are: ``dev_file=auto`` (several
    members) -- the questions the runs were scored on while training (their ``data.dev_file``, first
    ``data.limit_dev``), so the numbers match the MLflow UI; ``dev_file=<path>`` -- that whole file."""
    from .core.data import read_examples

    if str(cfg.dev_file) == "none" or (cfg.dev_file in (None, "auto") and len(members) < 2):
        return None
    if cfg.dev_file not in (None, "auto"):
        return read_examples(str(cfg.dev_file)).examples, f"{cfg.dev_file} (the whole file)"
    data = members[0].run_cfg.data
    limits = {(str(m.run_cfg.data.dev_file), m.run_cfg.data.get("limit_dev")) for m in members}
    examples = read_examples(str(data.dev_file)).examples
    limit = data.get("limit_dev")
    examples = examples[: int(limit)] if limit else examples
    label = f"{data.dev_file}" + (f" (first {limit} questions" if limit else " (all questions")
    same = len(limits) == 1
    label += ": the dev set the runs were scored on)" if same else ": the first member's dev set; members differ)"
    return examples, label


def _output_path(cfg: DictConfig, sources: list[tuple[str, Path]]) -> Path:
    if cfg.output:
        out = Path(str(cfg.output))
        return out / "submission.csv" if out.is_dir() else out
    if len(sources) == 1 and not cfg.model_uri:
        return sources[0][1] / "submission.csv"
    return Path(cfg.paths.output_dir) / "ensembles" / time.strftime("%Y-%m-%d_%H-%M-%S") / "submission.csv"


def run_predict(cfg: DictConfig) -> dict:
    """Predict the test file (and score the dev file) with the configured members; a summary."""
    from .core.data import read_examples
    from .core.metrics import score_answers
    from .core.outputs import nbest_json, write_json, write_submission
    from .engine.ensemble import combination, load_member, predict_members
    from .engine.setup import make_accelerator

    sources = member_sources(cfg)
    accelerator = make_accelerator(OmegaConf.create({"precision": {"mixed_precision": cfg.mixed_precision or "auto"}}))
    overrides = {"answer_cleanup": cfg.get("answer_cleanup")}
    members = []
    for name, folder in sources:
        run_cfg = OmegaConf.load(folder / "config_resolved.yaml")
        members.append(load_member(name, folder / "best_model" if (folder / "best_model").is_dir() else folder, run_cfg,
                                   accelerator, overrides))
    first = members[0].run_cfg
    batch_tokens = cfg.eval_batch_tokens or first.get("eval_batch_tokens") or "auto"
    summary: dict = {"members": [m.name for m in members], "combine": None, "dev": {}}
    scored = dev_set(cfg, members)
    if scored is not None:
        dev, label = scored
        summary["dev_set"] = label
        per_member, combined, _ = predict_members(members, dev, str(cfg.combine), batch_tokens, accelerator, "dev")
        for m, preds in zip(members, per_member, strict=True):
            summary["dev"][m.name] = score_answers({p.id: p.text for p in preds}, dev)[0]
            print(json.dumps({"member": m.name, **summary["dev"][m.name], "dev": label}, ensure_ascii=False),
                  flush=True)
        if len(members) > 1:
            summary["dev"]["ensemble"] = score_answers({p.id: p.text for p in combined}, dev)[0]
            print(json.dumps({"ensemble": len(members), **summary["dev"]["ensemble"], "dev": label},
                             ensure_ascii=False), flush=True)
    test = read_examples(str(cfg.test_file or first.data.test_file))
    _, preds, _ = predict_members(members, test.examples, str(cfg.combine), batch_tokens, accelerator, "test")
    summary["combine"] = combination(members, str(cfg.combine)) if len(members) > 1 else None
    out = _output_path(cfg, sources)
    strip = first.csv_strip_commas if cfg.csv_strip_commas is None else cfg.csv_strip_commas
    write_submission(out, test.examples, preds, bool(strip))
    if len(members) > 1:
        write_json(out.parent / "ensemble.json", {**summary, "sources": [str(f) for _, f in sources],
                                                  "test_file": test.path})
        write_json(out.parent / "test_nbest.json", nbest_json(preds))
    summary["output"] = str(out)
    return summary


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from .core.config import to_plain
    from .core.data import DataFormatError
    from .core.errors import SetupError
    from .core.schema import ConfigError, check_predict_config

    try:
        check_predict_config(to_plain(cfg))
    except ConfigError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    from .tracking.base import end_killed_runs_in_stores

    end_killed_runs_in_stores()  # a dead run this finds ends KILLED in MLflow too, not only in run.json
    try:
        summary = run_predict(cfg)
    except (FileNotFoundError, DataFormatError, SetupError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except PermissionError as err:
        print(f"error: cannot write {err.filename}: {err.strerror}. Fix: output=/a/writable/path.csv", file=sys.stderr)
        sys.exit(2)
    print(f"submission: {summary['output']}")


if __name__ == "__main__":
    run_cli(main)
