"""A Hydra sweeper that races configurations over seeds: ``-m hparams_search=race lr=1e-5,3e-5,1e-4``.

The configurations are the grid of the swept overrides (``lr=1e-5,3e-5,1e-4``, ``choice(...)``, ``range(...)``, as
Hydra's basic sweeper reads them, or ``hydra.sweeper.params``); the race sets ``seed``. Round 1 trains every
configuration on ``first_seeds`` seeds; after each round the survivors are compared with the best of them, question
by question (:mod:`extractive_qa.core.racing`: paragraphs as clusters, the seed spread pooled when the spreads
agree, simultaneous intervals, alpha spent over the looks); the configurations the best is ahead of beyond noise are
dropped; the best and the survivor it is least sure to beat get one more seed each, until the best is established,
the last look is taken (``max_seeds``) or ``max_runs`` is reached. Jobs go through the configured launcher (basic,
joblib, submitit/SLURM): each round is one batch.

A killed race continues: the same command again replays the rounds; every job whose run already FINISHED is reported,
not retrained (the sweep's usual resume), so the same decisions follow and the race goes on where it stopped. What
each look decided is in ``<sweep dir>/race.json``, printed as it happens, as an MLflow table ``race/rounds.json`` of
the sweep's parent run (with its verdict as tags), and as the tag ``race.dropped`` (why) on every run of a dropped
configuration; ``make report`` prints the race's history.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ..core.outputs import write_json
from ..core.racing import Look, RaceSettings, configuration_rows, look, next_seeds
from ..core.significance import Scores, scores
from .comparison import PREDICTIONS, read_score_files
from .sweep import SWEEP_FILE, job_outcomes

log = logging.getLogger(__name__)

RACE_FILE = "race.json"


def configurations(params: dict | None, arguments: list[str]) -> tuple[list[dict[str, str]], list[str]]:
    """The grid of the swept overrides (as ``{key: value}`` dicts, in the order given) and the fixed overrides."""
    parser = OverridesParser.create()
    lines = [f"{k}={v}" for k, v in (params or {}).items()]
    typed = parser.parse_overrides(list(arguments))
    typed_keys = {o.get_key_element() for o in typed}
    overrides = [o for o in parser.parse_overrides(lines) if o.get_key_element() not in typed_keys] + typed
    swept, fixed = {}, []
    for o in overrides:
        if o.is_sweep_override():
            swept[o.get_key_element()] = list(o.sweep_string_iterator())
        else:
            fixed.append(o.input_line)
    grid = [dict(zip(swept, values, strict=True)) for values in itertools.product(*swept.values())]
    return grid or [{}], fixed


def label_of(values: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items()) or "defaults"


class RaceSweeper(Sweeper):
    """See the module docstring. Configured by ``conf/hydra/sweeper/race.yaml``."""

    def __init__(self, first_seeds: int = 2, max_seeds: int = 10, max_runs: int | None = None, alpha: float = 0.05,
                 seed_key: str = "seed", params: dict | None = None):
        self.settings = RaceSettings(int(first_seeds), int(max_seeds), None if max_runs is None else int(max_runs),
                                     float(alpha))
        self.seed_key, self.params = seed_key, dict(params or {})
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    # ---------------------------------------------------------------- the race
    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None
        grid, fixed = configurations(self.params, arguments)
        if any(self.seed_key in values for values in grid):
            raise ValueError(f"a race sets {self.seed_key} itself: sweep the other keys (lr=1e-5,3e-5 ...), not "
                             f"{self.seed_key}")
        labels = [label_of(v) for v in grid]
        by_label = dict(zip(labels, grid, strict=True))
        self._note_race(labels)
        seeds = {label: 0 for label in labels}
        jobs: dict[str, list[int]] = {label: [] for label in labels}  # job numbers per configuration, seed order
        alive, looks, next_job, runs = list(labels), [], 0, 0
        wanted = {label: self.settings.first_seeds for label in labels}
        for number in range(1, self.settings.looks + 1):
            batch, owners = [], []
            for label in labels:
                for seed in range(seeds[label] + 1, wanted.get(label, seeds[label]) + 1):
                    batch.append((*fixed, *(f"{k}={v}" for k, v in by_label[label].items()), f"{self.seed_key}={seed}"))
                    owners.append(label)
            if batch:
                self.launcher.launch(batch, initial_job_idx=next_job)
                for offset, label in enumerate(owners):
                    jobs[label].append(next_job + offset)
                    seeds[label] += 1
                next_job, runs = next_job + len(batch), runs + len(batch)
            measured = self._scores(jobs)
            seen = look(measured, [a for a in alive if a in measured], number, self.settings, self._metric_label())
            looks.append(seen)
            alive = [a for a in alive if a not in seen.dropped]
            wanted = next_seeds(seen, alive, seeds, self.settings, runs)
            self._record(looks, labels, jobs, alive)
            log.info("race look %d (alpha %.4f): %d alive %s; best %s%s%s", number, seen.alpha, len(alive),
                     {a: seeds[a] for a in alive}, seen.best,
                     "".join(f"\n  dropped {k}: {v}" for k, v in seen.dropped.items()),
                     f"\n  next: one more seed of {', '.join(seen.trains)}" if seen.trains else "")
            if not wanted:
                break
        self._finish(looks, labels, jobs, alive, runs)

    def _metric(self) -> str:
        return str(OmegaConf.select(self.config, "optimize_metric") or "em")

    def _metric_label(self) -> str:
        from ..core.metrics import METRIC_LABELS

        return METRIC_LABELS.get(self._metric(), self._metric())

    def _scores(self, jobs: dict[str, list[int]]) -> dict[str, Scores]:
        """Each configuration's seeds x dev questions (its optimize_metric) from its finished jobs' run folders, with
        each question's paragraph -- read as ``compare`` reads runs (:func:`.comparison.read_score_files`: the
        questions every run shares, a score that is not a finite number refused); configurations with no finished
        job are left out."""
        outcomes = {o.get("job"): o for o in job_outcomes(self.sweep_dir)}
        paths: dict[str, Path] = {}
        owners: dict[str, list[str]] = {}
        for label, numbers in jobs.items():
            for job in numbers:
                record = outcomes.get(job, {})
                if record.get("status") != "FINISHED" or not record.get("run_dir"):
                    continue
                path = Path(record["run_dir"]) / PREDICTIONS
                if path.is_file():
                    paths[f"job {job}"] = path
                    owners.setdefault(label, []).append(f"job {job}")
        if not paths:
            return {}
        read = read_score_files(paths)
        return {label: scores(read.matrix(keys, keys, self._metric()), label, read.paragraphs)
                for label, keys in owners.items()}

    # ---------------------------------------------------------------- what it records
    def _note_race(self, labels: list[str]) -> None:
        """``sweep.json``: the race's seeds are swept too (run names show them; configurations group by the rest)."""
        path = self.sweep_dir / SWEEP_FILE
        if path.is_file():
            info = json.loads(path.read_text())
            keys = list(dict.fromkeys([*info.get("swept_keys", []), self.seed_key]))
            info.update(swept_keys=keys, race={"configurations": labels, **self.settings.__dict__})
            write_json(path, info)

    def _record(self, looks: list[Look], labels: list[str], jobs: dict[str, list[int]], alive: list[str]) -> None:
        dropped = {k: v for seen in looks for k, v in seen.dropped.items()}
        write_json(self.sweep_dir / RACE_FILE, {
            "settings": self.settings.__dict__, "configurations": labels, "looks": [s.row() for s in looks],
            "dropped": dropped, "alive": alive, "jobs": jobs, "established": bool(looks and looks[-1].established),
            "best": looks[-1].best if looks else None})

    def _finish(self, looks: list[Look], labels: list[str], jobs: dict[str, list[int]], alive: list[str],
                runs: int) -> None:
        last = looks[-1]
        if last.established:
            verdict = f"best established: {last.best} (look {last.look}, {runs} runs)"
        else:
            verdict = (f"no best established within the budget ({runs} runs, up to {self.settings.max_seeds} seeds): "
                       f"still open between {', '.join(alive)}; the leader is {last.best}")
        print(f"race: {verdict}", flush=True)
        dropped = {k: v for seen in looks for k, v in seen.dropped.items()}
        for label, why in dropped.items():
            print(f"  dropped {label}: {why}", flush=True)
        self._tell_store(looks, jobs, dropped, verdict)

    def _tell_store(self, looks: list[Look], jobs: dict[str, list[int]], dropped: dict[str, str],
                    verdict: str) -> None:
        """The rounds table and the verdict on the sweep's parent run; ``race.dropped`` on the dropped runs."""
        from .base import backend_for

        try:
            info = json.loads((self.sweep_dir / SWEEP_FILE).read_text())
            outcomes = {o.get("job"): o for o in job_outcomes(self.sweep_dir)}
            run_ids: dict[str, list[str]] = {}
            for label, numbers in jobs.items():
                for job in numbers:
                    record = outcomes.get(job, {})
                    run_json = Path(record.get("run_dir") or "") / "run.json"
                    if run_json.is_file() and (run_id := json.loads(run_json.read_text()).get("mlflow_run_id")):
                        run_ids.setdefault(label, []).append(run_id)
            backend = backend_for(self.config.tracking, self.config.paths.root)
            tables = {"rounds": [s.row() for s in looks],
                      "configurations": configuration_rows(looks, list(jobs), {k: len(v) for k, v in jobs.items()})}
            backend.record_race(info, tables, verdict,
                                {run_id: {"race.dropped": why} for label, why in dropped.items()
                                 for run_id in run_ids.get(label, [])})
        except Exception as err:  # noqa: BLE001 - the race's own files hold it all; the store is a view
            log.warning("the race's rounds could not be recorded in the tracking store: %s", str(err)[:300])
