"""One redaction for everything the project records, and passwords lifted out of command-line URLs into libpq's
password file or MLflow's credential variables (core/secrets.py)."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from extractive_qa.core.secrets import lift_passwords, redact, redact_log_records, redact_tree


@pytest.mark.parametrize(("text", "expected"), [
    ("postgresql://eqa:s3cr:et@lab-box:5433/optuna", "postgresql://eqa:***@lab-box:5433/optuna"),
    ("storage=postgresql+psycopg://u:p@ss@h/db rest", "storage=postgresql+psycopg://u:***@h/db rest"),
    ("http://alice:pw@host:5000/api", "http://alice:***@host:5000/api"),
    ("host=h password=abc dbname=x", "host=h password=*** dbname=x"),
    ("MLFLOW_TRACKING_PASSWORD=zz", "MLFLOW_TRACKING_PASSWORD=***"),
    ("postgresql://eqa@h:5433/o", "postgresql://eqa@h:5433/o"),  # nothing to hide
    ("http://h:5000/x", "http://h:5000/x"),
    ("the admin user's password, used at the first start", "the admin user's password, used at the first start"),
])
def test_redact(text, expected):
    assert redact(text) == expected
    assert redact(redact(text)) == expected


def test_redact_tree_reaches_every_string():
    tree = {"a": ["postgresql://u:pw@h/db", {"b": "x password=pw"}], "postgresql://u:pw@k/": 3}
    assert "pw@" not in str(redact_tree(tree)) and "password=pw" not in str(redact_tree(tree))


def test_passwords_are_lifted_into_a_private_password_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".pgpass").write_text("other:5432:db:me:theirs\n")
    monkeypatch.delenv("PGPASSFILE", raising=False)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    argv = ["-m", "hydra.sweeper.storage=postgresql://eqa_optuna:p%40ss:w@10.0.0.1:5433/optuna",
            "tracking.uri=http://alice:pw@h:5000", "seed=1"]
    lifted = lift_passwords(argv)
    assert lifted == ["-m", "hydra.sweeper.storage=postgresql://eqa_optuna@10.0.0.1:5433/optuna",
                      "tracking.uri=http://h:5000", "seed=1"]
    path = os.environ["PGPASSFILE"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    lines = open(path).read().splitlines()
    assert lines[0] == "10.0.0.1:5433:optuna:eqa_optuna:p@ss\\:w"  # libpq's escaping of ':'
    assert "other:5432:db:me:theirs" in lines  # the user's own entries still apply
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "pw")


def test_log_records_are_redacted_whatever_handler_prints_them(caplog):
    redact_log_records()
    with caplog.at_level(logging.INFO):
        logging.getLogger("x").info("storage %s", "postgresql://u:hunter2@h/db")
    assert "hunter2" not in caplog.text and "u:***@h" in caplog.text
