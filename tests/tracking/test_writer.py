"""MLflow's calls leave the training loop (a background writer: tracking/mlflow_tracker.py) and nothing is lost to it:
flushed before every checkpoint and sent in order at the end; a store that is down keeps the queue for later."""

from __future__ import annotations

import threading

from extractive_qa.tracking.mlflow_tracker import MlflowTracker

from helpers import empty_store


def _tracker(compose_train, tmp_path) -> MlflowTracker:
    cfg = compose_train(f"tracking.uri={empty_store(tmp_path)}", "tracking.system_metrics=false")
    (tmp_path / "run").mkdir()
    return MlflowTracker(cfg.tracking.uri, cfg, tmp_path / "run", "writer")


def test_logging_does_not_wait_and_flush_waits_for_everything(compose_train, tmp_path, monkeypatch):
    tracker = _tracker(compose_train, tmp_path)
    sent, release = [], threading.Event()
    original = tracker.client.log_batch

    def slow_store(run_id, metrics=(), **kwargs):  # a store that answers only once released
        release.wait()
        if metrics:  # (the params went first, through the same queue)
            sent.append([m.step for m in metrics])
        return original(run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(tracker.client, "log_batch", slow_store)
    for step in range(1, 6):
        tracker.log_metrics({"train/loss": 1.0 / step}, step)  # returns at once: the store has not answered
    assert sent == []
    release.set()
    assert tracker.flush() is True  # waits until everything queued is sent, in order
    assert sent == [[1], [2], [3], [4], [5]]
    tracker.finish("FINISHED")
    history = tracker.client.get_metric_history(tracker.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert tracker.client.get_run(tracker.run_id).info.status == "FINISHED"


def test_a_store_that_is_down_keeps_the_queue_and_flush_does_not_hang(compose_train, tmp_path, monkeypatch):
    tracker = _tracker(compose_train, tmp_path)
    down = threading.Event()
    down.set()
    original = tracker.client.log_batch

    def store(run_id, **kwargs):
        if down.is_set():
            raise ConnectionError("Connection refused")
        return original(run_id, **kwargs)

    monkeypatch.setattr(tracker.client, "log_batch", store)
    tracker.log_metrics({"train/loss": 1.0}, 1)
    assert tracker.flush() is False  # the store is down: the checkpoint is not held up, the call stays queued
    down.clear()
    monkeypatch.setattr("extractive_qa.tracking.mlflow_tracker.RETRY_AFTER_S", 0.0)
    tracker.finish("FINISHED")  # the end sends what is queued, once more whatever the retry time
    assert [m.step for m in tracker.client.get_metric_history(tracker.run_id, "train/loss")] == [1]
