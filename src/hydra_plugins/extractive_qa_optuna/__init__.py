"""Hydra finds sweepers only under ``hydra_plugins``: this names the project's sweepers there -- the Optuna search
(:mod:`extractive_qa.tracking.optuna_sweeper`) and the race over seeds (:mod:`extractive_qa.tracking.race_sweeper`)."""

from extractive_qa.tracking.optuna_sweeper import OptunaSweeper as _Impl
from extractive_qa.tracking.race_sweeper import RaceSweeper as _Race


class OptunaStudySweeper(_Impl):
    """``hydra/sweeper: study`` (conf/hydra/sweeper/study.yaml)."""


class SeedRaceSweeper(_Race):
    """``hydra/sweeper: race`` (conf/hydra/sweeper/race.yaml): configurations raced over seeds."""
