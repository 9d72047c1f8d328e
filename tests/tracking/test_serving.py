"""The scoring server's bounds (tracking/serving.py) without a server: the nesting scan, and the request's deadline
reaching the thread MLflow predicts in, where the prediction loop stops on it."""

from __future__ import annotations

import asyncio
import time

import pytest

from extractive_qa.tracking.serving import BoundedRequests, RequestDeadline, current_deadline, nesting_depth


def test_nesting_depth_counts_brackets_outside_strings():
    assert nesting_depth(b'{"dataframe_split": {"columns": ["q", "c"], "data": [["a", "b"]]}}') == 4
    assert nesting_depth(b'{"data": [["[[[[{{{{", "]]"]]}') == 3
    assert nesting_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000
    assert nesting_depth(b"") == 0


def _call(app, body: bytes) -> tuple[int, bytes]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/invocations",
             "headers": [(b"content-length", str(len(body)).encode())]}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_the_deadline_travels_into_the_worker_thread_and_limits_are_answered_first():
    seen = []

    async def inner(scope, receive, send):  # as MLflow's app: the body, then the model in a thread
        body = (await receive())["body"]
        deadline = await asyncio.to_thread(current_deadline)
        seen.append((body, deadline))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = BoundedRequests(inner, max_bytes=1000, max_depth=8, timeout_s=60)
    assert _call(app, b'{"a": [1]}') == (200, b"ok")
    (body, deadline), = seen
    assert body == b'{"a": [1]}' and 59 < deadline.deadline - time.monotonic() <= 60
    assert current_deadline() is None  # only inside the request
    assert _call(app, b"x" * 1001)[0] == 413 and _call(app, b"[" * 9 + b"]" * 9)[0] == 400
    assert len(seen) == 1  # neither reached the model


def test_a_passed_deadline_stops_the_prediction_between_batches(synthetic):
    """The loop the pyfunc model predicts with stops at its first batch once the request's deadline has passed (the
    server has answered 504 by then), and runs through while it has not."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

    from extractive_qa.core.data import read_examples
    from extractive_qa.core.windowing import WindowConfig, encode_examples, eval_windows
    from extractive_qa.engine.evaluation import EvaluationStopped, window_logits

    tok = AutoTokenizer.from_pretrained(synthetic["model"])
    model = AutoModelForQuestionAnswering.from_config(AutoConfig.from_pretrained(synthetic["model"]))
    examples = read_examples(synthetic["data"] / "hw7_dev.json", limit=4).examples
    enc = encode_examples(examples, tok, WindowConfig())
    windows = eval_windows(enc, WindowConfig())
    with pytest.raises(EvaluationStopped):
        window_logits(model, enc, windows, 512, stop=RequestDeadline(time.monotonic() - 1))
    starts, _ = window_logits(model, enc, windows, 512, stop=RequestDeadline(time.monotonic() + 600))
    assert len(starts) == len(windows)
