"""A sweep job's line to its Optuna trial: each evaluation is reported, and the study's pruner says whether the
trial goes on (:mod:`extractive_qa.tracking.optuna_sweeper` sets ``search.*`` in the job's config).

The study is reached through its storage (``sqlite:///...``, ``postgresql://...``), from any process or
machine; an in-memory study only from the process that runs the sweep (the basic launcher runs its jobs
there), through :data:`LIVE_STUDIES`.
"""

from __future__ import annotations

import logging
import time

from ..core.secrets import redact

log = logging.getLogger(__name__)

PRUNERS = ("none", "median", "successive_halving", "hyperband")
LIVE_STUDIES: dict[str, object] = {}  # study name -> the optuna.Study of an in-memory sweep in this process


def optuna_storage(url: str | None):
    """An Optuna storage for ``url`` (``None``: in memory). ``postgresql://`` uses psycopg 3, the driver this
    project installs (SQLAlchemy's bare ``postgresql://`` means psycopg2)."""
    if not url:
        return None
    import optuna

    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    # Several processes starting on a fresh database race to create its tables and types ("already exists"):
    # the loser tries again and finds them made.
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as err:  # noqa: BLE001 - only the creation race is retried
            if attempt == 5 or "already exists" not in str(err) and "duplicate" not in str(err).lower():
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def storage_unreachable(err: BaseException) -> bool:
    """Whether ``err`` (anywhere in its chain) says the study's database cannot be reached or went away."""
    cause: BaseException | None = err
    while cause is not None:
        name = type(cause).__name__
        if name in ("OperationalError", "InterfaceError", "StorageInternalError") and "locked" not in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def storage_error(url: str | None, err: BaseException):
    """The one line for a study's database that cannot be reached: the URL (its password redacted) and the fix."""
    from ..core.errors import SetupError

    # The driver's own words (connection refused, server closed the connection), not a wrapper's: Optuna wraps them in
    # "... e.g. exceeding max length", which sends the reader the wrong way.
    chain, cause = [], err
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    root = next((c for c in reversed(chain) if type(c).__name__ in ("OperationalError", "InterfaceError")), err)
    first = str(root).strip().splitlines()[0][:200] if str(root).strip() else type(root).__name__
    return SetupError(f"the Optuna storage {redact(url or 'memory')} cannot be reached ({redact(first)}). Fix: start "
                      "the database (`make server` on its machine) or point hydra.sweeper.storage=... at one that "
                      "answers; the same command then continues the study (finished trials are kept, a trial whose "
                      "process died is trained again)")


def make_pruner(name: str, warmup_steps: int = 0, min_resource: int | str = "auto", reduction_factor: int = 3):
    import optuna

    if name in (None, "none", "nop"):
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup_steps)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=reduction_factor)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1 if min_resource == "auto" else min_resource,
                                              reduction_factor=reduction_factor)
    raise ValueError(f"hydra.sweeper.pruner={name!r}: one of {PRUNERS}")


def load_study(name: str, storage_url: str | None, pruner: str = "none", warmup_steps: int = 0):
    """The study, with the sweep's pruner: a study loaded from storage does not keep one (Optuna's
    ``load_study`` would use its default, the median pruner, whatever the sweep said)."""
    import optuna

    if not storage_url:
        if name not in LIVE_STUDIES:
            raise RuntimeError(f"the in-memory study {name!r} lives in another process: give the sweeper a storage "
                               "(hydra.sweeper.storage=sqlite:///optuna.db) to report from a worker process")
        return LIVE_STUDIES[name]
    return optuna.load_study(study_name=name, storage=optuna_storage(storage_url),
                             pruner=make_pruner(pruner, warmup_steps))


class TrialLink:
    """``report(value, step)`` -> whether the trial should be pruned (then it is told PRUNED)."""

    def __init__(self, storage: str | None, study: str, trial_id: int, pruner: str = "none", warmup_steps: int = 0):
        self.storage, self.study_name, self.trial_id = storage, study, int(trial_id)
        self.pruner, self.warmup_steps = pruner, int(warmup_steps)
        self._trial = None

    @classmethod
    def from_cfg(cls, search) -> TrialLink | None:
        if not search or search.get("trial") is None:
            return None
        return cls(search.get("storage"), str(search.get("study")), int(search.get("trial")),
                   str(search.get("pruner") or "none"), int(search.get("pruner_warmup_steps") or 0))

    def _get(self):
        if self._trial is None:
            import optuna

            study = load_study(self.study_name, self.storage, self.pruner, self.warmup_steps)
            self._trial = optuna.Trial(study, self.trial_id)
        return self._trial

    def report(self, value: float, step: int) -> bool:
        import optuna

        try:
            trial = self._get()
            trial.report(float(value), int(step))
            if not trial.should_prune():
                return False
            trial.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except Exception as err:
            if storage_unreachable(err):  # the job ends FAILED with one line, not a page of SQLAlchemy
                raise storage_error(self.storage, err) from None
            raise
        log.info("trial %d pruned at step %d (%.4f)", trial.number, step, value)
        return True
