"""Connecting to the MLflow store, in-process: the default URI, retries while sqlite is locked, an
experiment created once with an absolute artifact location and opened on its runs."""

from pathlib import Path

import pytest

from extractive_qa.tracking.store import EXPERIMENT_KIND, MODEL_TRAINING, connect, resolve_uri, with_retry


def test_the_uri_comes_from_the_config_then_the_environment_then_the_project(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5")
    assert resolve_uri(None, tmp_path) == "http://127.0.0.1:5" and resolve_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_retries_only_while_the_store_is_locked(monkeypatch):
    monkeypatch.setattr("extractive_qa.tracking.store.time.sleep", lambda s: None)
    calls = []

    def locked_twice():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert with_retry(locked_twice, "x") == "ok" and len(calls) == 3
    with pytest.raises(ValueError, match="refused"):
        with_retry(lambda: (_ for _ in ()).throw(ValueError("refused")), "y")


def test_an_experiment_is_created_once_with_an_absolute_artifact_root(tmp_path):
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    client, first = connect(uri, "exp")
    _, again = connect(uri, "exp")
    exp = client.get_experiment(first)
    assert first == again and exp.tags[EXPERIMENT_KIND] == MODEL_TRAINING
    assert exp.artifact_location == (Path(tmp_path) / "fresh" / "mlartifacts" / "exp").resolve().as_uri()


def test_a_configurations_group_label_shows_sampled_floats_short_and_keeps_the_rest():
    """The UI groups a sweep's runs by this label: an Optuna learning rate in 6 significant digits, values typed
    by a user exactly as typed, the seed never (its runs are the group)."""
    from extractive_qa.tracking.naming import configuration_label

    keys = ["lr", "warmup_ratio", "model", "seed"]
    assert configuration_label({"lr": "0.0004007191214345614", "warmup_ratio": "0.1", "model": "tiny", "seed": "3"},
                               keys, "abc") == "lr=0.000400719 wr=0.1 model=tiny · abc"
    assert configuration_label({"lr": "2e-5", "warmup_ratio": "0.10", "seed": "1"}, keys, "x") == "lr=2e-5 wr=0.10 · x"
    assert configuration_label({"seed": "1"}, keys, "x") == "all runs · x"


def test_a_sweep_is_found_by_any_folder_it_ran_in_old_list_or_one_tag_each(tmp_path):
    """Parents written before each folder had its own tag hold them as a ``sweep.dirs`` list: both are found."""
    from mlflow.tracking import MlflowClient

    from extractive_qa.tracking.naming import PARENT_TAG
    from extractive_qa.tracking.parents import dir_tag, find_sweep

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("sweeps")
    ab, b, c = (str(tmp_path / name) for name in ("ab", "b", "c"))
    old = client.create_run(experiment, tags={PARENT_TAG: "true", "sweep.id": "old", "sweep.dirs": f"{ab}\n{b}"})
    new = client.create_run(experiment, tags={PARENT_TAG: "true", "sweep.id": "new", dir_tag(c): c})
    assert find_sweep(client, b).info.run_id == old.info.run_id
    assert find_sweep(client, c).info.run_id == new.info.run_id
    with pytest.raises(SystemExit, match="no sweep"):
        find_sweep(client, str(tmp_path / "a"))  # the start of a folder's name is not that folder
