"""The sweeper's samplers: a seeded study is reproducible in one process and proposes each configuration once
when several processes share it (no training: asks and tells on an Optuna sqlite storage)."""
from __future__ import annotations

import pytest

from extractive_qa.tracking.optuna_sweeper import make_sampler, search_space

optuna = pytest.importorskip("optuna")


def _asks(storage: str, sampler: str, n: int, processes: int = 1) -> list[dict]:
    """``n`` trials (fewer than the grid's 12: a full grid stops the study) asked in turn by ``processes``
    study objects on one storage, each with its own sampler as separate processes have: the parameters in the
    order the trials were numbered."""
    space = search_space(None, ["lr=interval(1e-6,1e-3)", "warmup_ratio=choice(0.0,0.1,0.2)",
                                "seed=choice(1,2,3,4)"] if sampler != "grid" else
                         ["warmup_ratio=choice(0.0,0.1,0.2)", "seed=choice(1,2,3,4)"])
    studies = [optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                   sampler=make_sampler(sampler, 0, space), direction="maximize")
               for _ in range(processes)]
    asked = []
    for i in range(n):
        study = studies[i % processes]
        trial = study.ask(space.distributions)
        asked.append((trial.number, dict(trial.params)))
        # Told at once by one process, left running by the others: both ways a later ask sees it.
        if i % processes == 0:
            study.tell(trial, float(sum(hash(str(v)) % 7 for v in trial.params.values())))
    return [params for _, params in sorted(asked, key=lambda x: x[0])]


@pytest.mark.parametrize("sampler", ["random", "tpe", "grid"])
def test_a_seeded_study_is_the_same_study_twice(sampler, tmp_path):
    first = _asks(f"sqlite:///{tmp_path}/a.db", sampler, 10)
    again = _asks(f"sqlite:///{tmp_path}/b.db", sampler, 10)
    assert first == again


@pytest.mark.parametrize("sampler", ["random", "tpe", "grid"])
def test_processes_sharing_a_seeded_study_do_not_propose_the_same_trial(sampler, tmp_path):
    asked = _asks(f"sqlite:///{tmp_path}/shared.db", sampler, 10, processes=2)
    keys = [tuple(sorted(p.items())) for p in asked]
    assert len(set(keys)) == len(keys), keys
