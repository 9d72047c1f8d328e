"""Hydra finds sweepers only under ``hydra_plugins``: this names the project's Optuna sweeper there. The
implementation is :mod:`extractive_qa.tracking.optuna_sweeper`."""

from extractive_qa.tracking.optuna_sweeper import OptunaSweeper as _Impl


class OptunaStudySweeper(_Impl):
    """``hydra/sweeper: study`` (conf/hydra/sweeper/study.yaml)."""
