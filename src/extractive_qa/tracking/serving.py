"""A scoring server other people can reach: MLflow's own scoring app (``mlflow.pyfunc.scoring_server.init``) wrapped
with the limits ``python -m extractive_qa.serve`` states (its docstring says which and why): a body size cap (413),
a JSON nesting cap (400), and the request's deadline carried to the model's prediction loop, which stops there."""

from __future__ import annotations

import contextvars
import json
import re
import time

DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("extractive_qa_deadline", default=None)
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


class RequestDeadline:
    """What the prediction loop checks between batches (``stop.requested``): the current request's deadline passed."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    @property
    def requested(self) -> bool:
        return time.monotonic() > self.deadline


def current_deadline() -> RequestDeadline | None:
    """The deadline of the request being served in this context (``None`` outside the server)."""
    value = DEADLINE.get()
    return None if value is None else RequestDeadline(value)


def nesting_depth(body: bytes) -> int:
    """How deep a JSON text nests ``[`` and ``{`` (strings skipped), without parsing it -- and so without recursing."""
    import numpy as np

    bare = np.frombuffer(_STRINGS.sub(b'""', body), dtype=np.uint8)
    steps = (np.isin(bare, (ord("["), ord("{"))).astype(np.int32) - np.isin(bare, (ord("]"), ord("}"))))
    return int(steps.cumsum().max(initial=0))


class BoundedRequests:
    """ASGI middleware around MLflow's scoring app: the limits of the module docstring."""

    def __init__(self, app, max_bytes: int, max_depth: int, timeout_s: float):
        self.app, self.max_bytes, self.max_depth, self.timeout_s = app, max_bytes, max_depth, timeout_s

    async def _refuse(self, send, status: int, message: str) -> None:
        body = json.dumps({"error_code": "BAD_REQUEST" if status == 400 else "REQUEST_TOO_LARGE",
                           "message": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit_mb = self.max_bytes / 2**20
        too_large = f"the request body is over {limit_mb:g} MB (serve --max-body-mb raises the limit)"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, 413, too_large)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(send, 413, too_large)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body.lstrip()[:1] in (b"{", b"["):
            depth = nesting_depth(body)
            if depth > self.max_depth:
                return await self._refuse(send, 400, f"the JSON body nests {depth} levels deep, over the limit of "
                                                     f"{self.max_depth} (a scoring request needs 4)")
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        token = DEADLINE.set(time.monotonic() + self.timeout_s)  # travels into MLflow's worker thread (to_thread)
        try:
            return await self.app(scope, replay, send)
        finally:
            DEADLINE.reset(token)


def build_app(model_uri: str, max_bytes: int, max_depth: int):
    """MLflow's scoring app for ``model_uri``, bounded (:class:`BoundedRequests`)."""
    import mlflow.pyfunc
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(model_uri)
    return BoundedRequests(scoring_server.init(model), max_bytes, max_depth,
                           float(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()))
