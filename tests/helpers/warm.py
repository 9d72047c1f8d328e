"""A warm interpreter for the tests' CLI runs: torch, MLflow's SQL store and Hydra imported once, then one
``fork`` per run.

Why: a tiny training run takes about 10 s on 2 cores and 4 s of it is importing torch, MLflow (SQLAlchemy, alembic)
and Hydra; the suite starts about a hundred such runs. The project's own modules are imported too
(:func:`import_project`: a tiny run 2.3-2.4 s -> 2.1-2.2 s warm), and all of it is frozen out of the garbage
collector before the first fork (:func:`_warm_up`: test_integrity.py's tiny run, forked, 3.0 s -> 1.6-1.7 s). A forked
child is still a process of its own -- its own environment, working directory, argv, exit status, signals (a SIGKILL
fault kills it alone), atexit handlers and interpreter shutdown -- and runs ``python -m MODULE`` / ``python SCRIPT``
exactly as ``runpy`` does for the command line. What it shares with its siblings is what those imports did, so a
module that reads the environment when imported is warmed only for children whose environment agrees: transformers,
huggingface_hub and accelerate read HF_HOME, HF_ENDPOINT, proxies and friends at import, so they are imported by a
second server (``hf``, forked from the first, ``base``) that serves only runs whose every such variable
(``import_env``) equals its own -- the tests that point HF_ENDPOINT at a mirror or HF_HOME at a folder of their own go
to ``base`` and import them fresh. Importing them costs a child about 2 s.

``EQA_TESTS_COLD=1`` runs every CLI in a fresh interpreter instead (``tests/helpers/__init__.py``).

Protocol (JSON lines on stdin/stdout): the test side sends ``{"argv", "env", "cwd", "stdout", "stderr"}`` -- argv
as after ``python``: ``["-m", module, ...]`` or ``[script, ...]`` -- and reads ``{"pid"}`` then ``{"returncode"}``
(negative: killed by that signal, as ``subprocess`` reports it): one run at a time. A request with ``"status": PATH``
starts a run beside others instead: the server answers ``{"pid"}`` at once and serves the next request, while a
process of its own waits on the run and writes ``{"returncode"}`` to PATH. A request ``{"serve": SOCKET}`` to the
``base`` server forks the ``hf`` server from it: the child connects to the test side's Unix socket SOCKET, imports
HF_MODULES and serves the same protocol there. It starts from what ``base`` imported (torch, MLflow, Hydra, most of
the project: 2.5-2.7 CPU-s, against 7.5-7.8 s for an ``hf`` server of its own), the environment being the same.
"""

from __future__ import annotations

import json
import os
import re
import sys

WARM_MODULES = ("numpy", "scipy.stats", "pandas", "pyarrow", "psutil", "torch", "hydra", "omegaconf", "mlflow",
                "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store", "sqlalchemy", "alembic", "fastapi",
                "nltk.tokenize")
# Imported only by the ``hf`` server: they read these variables when imported (``import_env``).
HF_MODULES = ("transformers", "accelerate", "transformers.models.bert.modeling_bert",
              "transformers.models.bert.tokenization_bert")
# Never imported by the ``base`` server, not even through a project module (they, or what they import, read the
# HF variables): a project module that needs one at import is left to each child there.
HF_FAMILY = ("transformers", "accelerate", "huggingface_hub", "tokenizers", "safetensors", "datasets", "peft")
_IMPORT_ENV = re.compile(r"^(HF_|HUGGINGFACE|TRANSFORMERS|ACCELERATE|TOKENIZERS|SAFETENSORS|USE_|XDG_|HOME$)|PROXY",
                         re.IGNORECASE)


def import_env(env: dict) -> dict:
    """The variables HF_MODULES may read when imported: a child may fork from the ``hf`` server only when its
    own are these exactly."""
    return {k: v for k, v in env.items() if _IMPORT_ENV.search(k)}


def _status(wait_status: int) -> int:
    return -os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else os.WEXITSTATUS(wait_status)


def serve(channel_in=None, channel_out=None, channel=None) -> dict | None:
    """Fork a child per request; return the request in the child, None in the server when its channel closes (stdin
    and stdout, or the socket ``channel`` of a forked server, which its children close)."""
    channel_in, channel_out = channel_in or sys.stdin, channel_out or sys.stdout
    for line in channel_in:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        _reap_finished()
        if "serve" in request:
            pid = os.fork()
            if pid == 0:
                return _serve_hf(request["serve"])
            _send(channel_out, {"pid": pid})
            continue
        if "status" in request:
            pid = _start_beside(request, channel)
            if pid == 0:
                return request
            _send(channel_out, {"pid": pid})
            continue
        pid = os.fork()
        if pid == 0:
            _close(channel)
            return request
        _send(channel_out, {"pid": pid})
        _, wait_status = os.waitpid(pid, 0)
        _send(channel_out, {"returncode": _status(wait_status)})
    return None


def _send(channel_out, answer: dict) -> None:
    channel_out.write(json.dumps(answer) + "\n")
    channel_out.flush()


def _to_devnull(*fds: int) -> None:
    """Point each of ``fds`` at /dev/null: what it named is let go of here, and a later close closes only that."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        os.dup2(null, fd)
    os.close(null)


def _close(channel) -> None:
    """In a child of a forked server: let go of the server's socket, so that only the server holds it -- the test side
    sees the server's end when it ends. (Its number then names /dev/null: the socket's file objects, never used here,
    close that.)"""
    if channel is not None:
        _to_devnull(channel.fileno())


def _serve_hf(socket_path: str) -> dict | None:
    """The ``hf`` server, in a child of ``base``: what ``serve`` returns there."""
    import socket

    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.connect(socket_path)
    _to_devnull(0, 1)  # none of base's channel held open here
    _warm_up(HF_MODULES, hf=True)
    channel_in, channel_out = channel.makefile("r", encoding="utf-8"), channel.makefile("w", encoding="utf-8")
    _send(channel_out, {"ready": True})
    return serve(channel_in, channel_out, channel)


def _start_beside(request: dict, channel=None) -> int:
    """The run's pid in the server; 0 in the run itself. Between them a waiter (the server's child, the run's
    parent) tells the server the run's pid, writes the run's exit status to ``request["status"]`` (whole, by a
    rename) and ends."""
    pid_in, pid_out = os.pipe()
    if os.fork():  # the server
        os.close(pid_out)
        with os.fdopen(pid_in) as answer:
            return int(answer.read())
    os.close(pid_in)
    _close(channel)
    run = os.fork()
    if run == 0:
        os.close(pid_out)
        return 0
    _to_devnull(0, 1)  # the waiter holds none of the server's channel open
    os.write(pid_out, str(run).encode())
    os.close(pid_out)
    _, wait_status = os.waitpid(run, 0)
    partial = f"{request['status']}.partial"
    with open(partial, "w") as out:
        json.dump({"returncode": _status(wait_status)}, out)
    os.replace(partial, request["status"])
    os._exit(0)


def _reap_finished() -> None:
    """Collect the waiters that have ended (no zombies left behind)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def become(request: dict) -> None:
    """Turn this forked child into ``python *argv`` run with the request's environment and folder."""
    import io
    import runpy

    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    os.close(null)
    # The server's sys.stdout was its channel: new streams on the redirected descriptors, unbuffered as the
    # tests' PYTHONUNBUFFERED=1 makes them.
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  write_through=True)
    sys.__stdout__, sys.__stderr__, sys.__stdin__ = sys.stdout, sys.stderr, sys.stdin
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    # What the interpreter would have put on sys.path at start: the script's folder or the working folder
    # for -m, then PYTHONPATH.
    argv = list(request["argv"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    first = request["cwd"] if argv[0] == "-m" else os.path.dirname(os.path.abspath(argv[0]))
    sys.path[:] = [first, *extra, *[p for p in sys.path[1:] if p not in extra]]
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        # As in a fresh interpreter, the module run as __main__ is not also imported under its name (import_project
        # imported it: runpy would warn, and the module would exist twice).
        sys.modules.pop(argv[1], None)
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")


class _RefuseHF:
    """A meta-path finder that refuses HF_FAMILY imports while the ``base`` server imports the project."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HF_FAMILY:
            raise ImportError(f"{name}: not in the base warm interpreter")
        return None


def import_project(hf: bool) -> None:
    """Every module of the ``extractive_qa`` package, so a child imports none of them (a tiny run 2.3-2.4 s ->
    2.1-2.2 s): none reads the environment when imported (their library imports are inside functions). The
    ``base`` server skips any module that would import one of HF_FAMILY."""
    import importlib
    import pkgutil

    import extractive_qa

    refuse = _RefuseHF()
    if not hf:
        sys.meta_path.insert(0, refuse)
    try:
        for info in pkgutil.walk_packages(extractive_qa.__path__, "extractive_qa."):
            try:
                importlib.import_module(info.name)
            except ImportError:
                pass  # it imports the hub libraries: each child of this server imports it with its own settings
    finally:
        if refuse in sys.meta_path:
            sys.meta_path.remove(refuse)


def _warm_up(modules: tuple[str, ...], hf: bool) -> None:
    """Import ``modules`` and the project (:func:`import_project`), then collect and freeze: what was imported stays
    for good, so a child's collections -- and its shutdown's -- neither walk these ~680,000 objects again nor copy
    their pages on write (gc.freeze's documented use: a server about to fork; what it saves a child: the module
    docstring)."""
    import gc
    import importlib

    for name in modules:
        importlib.import_module(name)
    import_project(hf)
    gc.collect()
    gc.freeze()


def main() -> None:
    _warm_up(WARM_MODULES, hf=False)
    request = serve()
    if request is not None:
        become(request)  # SystemExit and uncaught exceptions end this child as they end `python -m ...`


if __name__ == "__main__":
    main()
