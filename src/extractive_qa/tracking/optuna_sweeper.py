"""A Hydra sweeper on current Optuna (4.x/5.x), through its ask/tell API: ``-m hparams_search=optuna``.

Why not ``hydra-optuna-sweeper``: its newest release (1.3.0) pins ``optuna<3``, whose database storage
breaks under SQLAlchemy 2 (which MLflow 3 needs), so its studies lived in memory: no study shared by two
machines, none continued from a database, no pruning, no optuna-dashboard. The plugin interface is small
(``setup`` and ``sweep``); this one keeps the plugin's configuration and search-space syntax:

* ``params``: ``tag(log, interval(1e-5, 1e-3))``, ``interval(0, 0.3)``, ``choice(16, 32)``, ``range(1, 4)``, or a
  fixed value, exactly as Hydra parses them (the same overrides may be typed on the command line);
* ``sampler``: ``tpe`` (default), ``random``, ``grid`` (choices and ranges only), ``cmaes``; ``seed``;
* ``n_trials``: trials **in the study**, whoever runs them; ``n_jobs`` trials asked at a time (for a
  parallel launcher);
* ``storage``: ``null`` (in memory), ``sqlite:///optuna.db`` (one machine), ``postgresql://user@host/db``
  (many): the same command on several machines -- or a SLURM array -- joins one study, and re-running it
  continues the study. A trial whose process died without a word (host, pid and start recorded with it) is
  failed and its parameters asked again;
* ``pruner``: ``none``, ``median``, ``successive_halving``, ``hyperband``: each job reports every evaluation
  of ``optimize_metric`` to its trial (:mod:`extractive_qa.tracking.study`) and stops when pruned.

Each trial is one job (one MLflow run under the sweep's parent); its result is the job's best dev score.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ..core.runs import process_alive, this_process
from ..core.secrets import redact
from .study import LIVE_STUDIES, make_pruner, optuna_storage, storage_error, storage_unreachable

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid", "cmaes")
NOT_COUNTED = "not_counted"  # user attr of a trial that does not count towards n_trials (why)


@dataclass
class SearchSpace:
    """Optuna distributions for the swept keys, and the overrides every trial shares."""

    distributions: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    choices: dict[str, list] = field(default_factory=dict)  # for the grid sampler


def _distribution(override: Override):
    import optuna.distributions as d

    value = override.value()
    if isinstance(value, ChoiceSweep):
        choices = [x for x in override.sweep_iterator(transformer=Transformer.encode)]
        return d.CategoricalDistribution(choices), choices
    if isinstance(value, RangeSweep):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if all(isinstance(x, int) for x in (value.start, value.stop, value.step)) and "log" not in value.tags:
            return d.IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step)), choices
        return d.CategoricalDistribution(choices), choices
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(value.start, value.end, log=log_scale), None
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale), None
    raise ValueError(f"{override.input_line}: not a sweep")


def search_space(params: dict | None, arguments: Sequence[str]) -> SearchSpace:
    """The space from the config's ``params`` and the command line's overrides (the command line wins)."""
    parser = OverridesParser.create()
    lines = [f"{k}={v}" for k, v in (params or {}).items()]
    typed = parser.parse_overrides(list(arguments))
    typed_keys = {o.get_key_element() for o in typed}
    overrides = [o for o in parser.parse_overrides(lines) if o.get_key_element() not in typed_keys] + typed
    space = SearchSpace()
    for o in overrides:
        key = o.get_key_element()
        if o.is_sweep_override():
            space.distributions[key], choices = _distribution(o)
            if choices is not None:
                space.choices[key] = choices
        else:
            space.fixed.append(o.input_line)
    return space


def _sampler(name: str, seed: int | None, space: SearchSpace):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "grid":
        missing = [k for k in space.distributions if k not in space.choices]
        if missing:
            raise ValueError(f"the grid sampler needs choice(...) or range(...) for every swept key; {missing} "
                             "are intervals")
        return optuna.samplers.GridSampler(space.choices, seed=seed)
    raise ValueError(f"hydra.sweeper.sampler={name!r}: one of {SAMPLERS}")


def trial_seed(seed: int, number: int) -> int:
    """The random stream of trial ``number`` of a study seeded ``seed``: the same in every process."""
    import hashlib

    return int(hashlib.sha256(f"{seed}:{number}".encode()).hexdigest()[:8], 16)


def make_sampler(name: str, seed: int | None, space: SearchSpace):
    """Optuna's sampler ``name``; with a seed, each trial draws from the stream of its own trial number.

    Why per trial: processes sharing a study with one seeded stream propose the same parameters (the same
    trial run twice, seen with two processes and the random sampler), while a stream per process (host, pid)
    makes a seeded study depend on its pids. Trial numbers are handed out once by the storage, so a stream
    per trial number keeps ``seed=0`` reproducible in one process and apart across several. The grid sampler
    needs none of this: its shuffled grid is the same for a seed and trial k takes grid point k."""
    import optuna

    if seed is None or name == "grid":
        return _sampler(name, seed, space)

    class TrialSeededSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.inner = _sampler(name, seed, space)

        def before_trial(self, study, trial) -> None:
            # TPE, random and CMA-ES keep their state in the study, not the sampler: a fresh one per trial
            # loses nothing but the random stream, which is the point.
            self.inner = _sampler(name, trial_seed(seed, trial.number), space)
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self.inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.inner.reseed_rng()

    return TrialSeededSampler()


def _value(x):
    """A trial parameter as a Hydra override value (strings and numbers as Hydra reads them)."""
    if isinstance(x, float) and math.isfinite(x):
        return repr(x)
    return str(x)


class OptunaSweeper(Sweeper):
    """See the module docstring. Configured by ``conf/hydra/sweeper/study.yaml``."""

    def __init__(self, direction: str = "maximize", study_name: str | None = None, storage: str | None = None,
                 n_trials: int = 8, n_jobs: int = 1, sampler: str = "tpe", seed: int | None = None,
                 pruner: str = "none", pruner_warmup_steps: int = 0, params: dict | None = None):
        self.direction, self.study_name, self.storage_url = direction, study_name, storage
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.sampler_name, self.seed, self.pruner_name = sampler, seed, pruner
        self.pruner_warmup_steps = int(pruner_warmup_steps)
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    # ---------------------------------------------------------------- the study
    def open_study(self, space: SearchSpace):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        name = str(self.study_name or OmegaConf.select(self.config, "experiment_name") or "extractive-qa")
        study = optuna.create_study(study_name=name, storage=optuna_storage(self.storage_url),
                                    sampler=make_sampler(self.sampler_name, self.seed, space),
                                    pruner=make_pruner(self.pruner_name, self.pruner_warmup_steps),
                                    direction=self.direction, load_if_exists=True)
        if not self.storage_url:
            LIVE_STUDIES[name] = study  # jobs in this process report to it (tracking/study.py)
        self._fail_dead_trials(study)
        return study

    @staticmethod
    def counted(study) -> list:
        """The trials that count towards ``n_trials``: finished (complete, pruned, failed by their job) or running.
        Not those waiting to run (a dead trial's parameters, enqueued again) and not those marked not counted."""
        import optuna

        return [t for t in study.get_trials(deepcopy=False) if NOT_COUNTED not in t.user_attrs
                and t.state != optuna.trial.TrialState.WAITING]

    def _fail_dead_trials(self, study) -> None:
        """RUNNING trials whose process is gone (killed, a lost machine seen from its own host) are failed, marked not
        counted, and their parameters enqueued: the next trial asked -- by this process or any other sharing the
        study -- trains them, so the study ends with ``n_trials`` that really ran."""
        import optuna

        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if process_alive(trial.user_attrs.get("process") or {}) is False:
                study._storage.set_trial_user_attr(trial._trial_id, NOT_COUNTED, "its process died; run again")
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number}, skip_if_exists=False)
                log.warning("trial %d: its process is gone; its parameters are trained again", trial.number)

    def _ask(self, study, space: SearchSpace) -> list:
        """Up to ``n_jobs`` trials, never past ``n_trials`` in the study (trial numbers are the study's own count:
        one asked past it by a concurrent process is failed at once, marked not counted, and not run). Enqueued
        parameters (a dead trial's) are asked first: Optuna hands out waiting trials before new ones."""
        import optuna

        trials = []
        for _ in range(self.n_jobs):
            if len(self.counted(study)) >= self.n_trials:
                break
            trial = study.ask(space.distributions)
            if len([t for t in self.counted(study) if t.number <= trial.number]) > self.n_trials:
                study._storage.set_trial_user_attr(trial._trial_id, NOT_COUNTED, "asked past n_trials")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                break
            trial.set_user_attr("process", this_process())
            trials.append(trial)
        return trials

    # ---------------------------------------------------------------- the sweep
    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        try:
            self._sweep(arguments)
        except Exception as err:
            if not storage_unreachable(err):
                raise
            self._end_parent_failed(f"the Optuna storage went away: {type(err).__name__}")
            raise storage_error(self.storage_url, err) from None

    def _end_parent_failed(self, why: str) -> None:
        """The sweep cannot go on: its MLflow parent ends FAILED now (the callback that would close it never runs)."""
        import json

        from .base import backend_for

        path = self.sweep_dir / "sweep.json"
        try:
            info = json.loads(path.read_text())
            backend_for(self.config.tracking, self.config.paths.root).close_sweep(info, {"FAILED": 1})
        except Exception as err:  # noqa: BLE001 - the storage's error is the one to report
            log.warning("could not end the sweep's parent run (%s: %s); %s", type(err).__name__, err, why)

    def _sweep(self, arguments: list[str]) -> None:
        import optuna

        space = search_space(self.params, arguments)
        study = self.open_study(space)
        storage = self.storage_url or None
        log.info("study %s: %s; sampler %s, pruner %s, storage %s", study.study_name, self._count_line(study),
                 self.sampler_name, self.pruner_name, redact(storage or "memory"))
        while True:
            trials = self._ask(study, space)
            if not trials:
                break
            batch = [tuple([*space.fixed, *(f"{k}={_value(v)}" for k, v in t.params.items()),
                            f"++search.study={study.study_name}", f"++search.trial={t._trial_id}",
                            f"++search.pruner={self.pruner_name}",
                            f"++search.pruner_warmup_steps={self.pruner_warmup_steps}",
                            f"++search.storage={storage}" if storage else "++search.storage=null"])
                     for t in trials]
            returns = self.launcher.launch(batch, initial_job_idx=min(t.number for t in trials))
            for trial, ret in zip(trials, returns, strict=True):
                state = study._storage.get_trial(trial._trial_id).state
                if state.is_finished():  # the job told it (pruned)
                    continue
                value = _job_value(ret)
                if value is None:
                    _tell(study, trial, state=optuna.trial.TrialState.FAIL)
                else:
                    _tell(study, trial, value)
        self._write_results(study)
        self._note_others(study)

    def _note_others(self, study) -> None:
        """When trials of this study still run in other processes, this process is not the last: its sweep's
        parent run is left RUNNING for the last one to close (tracking/sweep.py reads ``sweep.json``)."""
        import json

        import optuna

        me = this_process()
        others = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                  if (t.user_attrs.get("process") or {}).get("pid") != me["pid"]
                  and process_alive(t.user_attrs.get("process") or {}) is not False]
        path = self.sweep_dir / "sweep.json"
        if others and path.is_file():
            info = json.loads(path.read_text())
            info["others_running"] = len(others)
            path.write_text(json.dumps(info, indent=1))

    def _write_results(self, study) -> None:
        import optuna

        counted = self.counted(study)  # one read of the storage for both
        done = [t for t in counted if t.state == optuna.trial.TrialState.COMPLETE]
        states = {s.name: sum(t.state == s for t in counted) for s in optuna.trial.TrialState}
        results = {"study": study.study_name, "storage": redact(self.storage_url or "memory"),
                   "n_trials": self.n_trials, "trials": {k: v for k, v in states.items() if v},
                   "rerun": sum("rerun_of" in t.user_attrs for t in counted)}
        log.info("study %s: %s", study.study_name, self._count_line(study))
        if done:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
            log.info("Best value %s with %s (trial %d)", best.value, best.params, best.number)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")


    def _count_line(self, study) -> str:
        """What the storage holds, in one line: ``3 of 4 trials counted (2 COMPLETE, 1 RUNNING); 1 waiting to run
        again (its process died)``."""
        import optuna

        trials = study.get_trials(deepcopy=False)
        counted = [t for t in trials if NOT_COUNTED not in t.user_attrs and t.state != optuna.trial.TrialState.WAITING]
        states = ", ".join(f"{n} {s.name}" for s in optuna.trial.TrialState
                           if (n := sum(t.state == s for t in counted)))
        waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in trials)
        line = f"{len(counted)} of {self.n_trials} trials counted" + (f" ({states})" if states else "")
        return line + (f"; {waiting} waiting to run again (its process died)" if waiting else "")


def _tell(study, trial, value=None, state=None) -> None:
    """``study.tell``; the grid sampler, told its last point, calls ``Study.stop``, which Optuna allows only inside
    ``optimize`` -- outside it (ask/tell) that raises, though the trial was told: the grid is done."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def _job_value(ret) -> float | None:
    """A job's result: its best dev score, ``None`` when it failed (or returned nothing usable)."""
    try:
        value = ret.return_value
    except Exception:  # noqa: BLE001 - a job that raised: its status says FAILED
        return None
    return float(value) if isinstance(value, int | float) and math.isfinite(float(value)) else None
