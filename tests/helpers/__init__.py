"""What tests share besides fixtures: paths to ../shared (and the skip when it is absent), small data
files, and running the project's CLIs in a subprocess -- plainly or with faults injected at exact points
(``fault_runner.py``). Fixtures live in ``tests/conftest.py``."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("EXTRACTIVE_QA_SHARED", ROOT.parent / "shared")).resolve()
OFFLINE_MODEL = SHARED / "models" / "bert-base-chinese-offline"
HW7_DIR = SHARED / "data" / "hw7-drcd"
SQUAD_DIR = SHARED / "data" / "squad-format"
HELPERS = Path(__file__).resolve().parent

needs_shared = pytest.mark.skipif(
    not (OFFLINE_MODEL / "vocab.txt").is_file() or not HW7_DIR.is_dir(),
    reason=f"needs ../shared (real data + offline tokenizer) at {SHARED}",
)


# The learning fixtures train without dropout: a quarter less time per step on 2 cores (dropout's random numbers
# are ~30% of the tiny model's forward pass) and steadier learning over seeds. Tests of dropout's RNG (resume,
# evaluation cadence, out-of-memory retries) keep the models' own 0.1.
NO_DROPOUT = ("+model.config_overrides.hidden_dropout_prob=0.0",
              "+model.config_overrides.attention_probs_dropout_prob=0.0")


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def hw7_file(path: Path, paragraphs: list[str], questions: list[dict]) -> Path:
    return write_json(path, {"questions": questions, "paragraphs": paragraphs})


def hw7_question(qid, pid, question, answer=None, start=None, end=None) -> dict:
    if answer is not None and end is None and start is not None:
        end = start + len(answer) - 1
    return {"id": qid, "paragraph_id": pid, "question_text": question, "answer_text": answer,
            "answer_start": start, "answer_end": end}


def _env(extra: dict | None) -> dict:
    # tests/ on the path of every child, so faults can call helpers.mlflow_server and friends.
    path = os.pathsep.join(p for p in (str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(extra or {})}


def child_env(extra: dict | None = None) -> dict:
    """The environment the project's CLIs run in under test (for a child the test starts itself)."""
    return _env(extra)


class _ForkedServer:
    """The ``hf`` warm server, forked from ``base`` (warm.py): its channel is a Unix socket, and it is not this
    process's child. What ``_WarmInterpreter`` uses of a ``Popen``: ``stdin``, ``stdout``, ``poll`` and ``kill``."""

    def __init__(self, base: subprocess.Popen):
        import shutil
        import socket
        import tempfile

        folder = tempfile.mkdtemp(prefix="eqa-warm-")
        path = os.path.join(folder, "socket")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
                listener.bind(path)
                listener.listen(1)
                listener.settimeout(300)  # turns a server that never connects into a failure
                self.pid = _ask(base, {"serve": path})
                self._channel, _ = listener.accept()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self._channel.settimeout(None)
        self.stdin = self._channel.makefile("w", encoding="utf-8")
        self.stdout = self._channel.makefile("r", encoding="utf-8")
        if json.loads(self.stdout.readline() or "{}") != {"ready": True}:
            raise RuntimeError("the forked warm interpreter died while starting (tests/helpers/warm.py)")

    def poll(self) -> int | None:
        """None while the server lives (a zombie, not yet collected by ``base``, has ended; without /proc, as on
        macOS, only a process gone is seen as ended)."""
        if not os.path.isdir("/proc"):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return -1
            return None
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return -1
        return -1 if state in ("Z", "X") else None

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        self._channel.close()


class _WarmInterpreter:
    """The test process's ``warm.py`` servers, each started on first use (see warm.py for why and how): ``hf``
    (transformers and accelerate imported too) for runs whose import-time variables are the tests' own, forked from
    ``base``, which serves the others."""

    procs: dict[str, subprocess.Popen | _ForkedServer] = {}

    @classmethod
    def _server(cls, env: dict) -> subprocess.Popen | _ForkedServer:
        from helpers.warm import import_env

        return cls._server_of("hf" if import_env(env) == import_env(_env(None)) else "base")

    @classmethod
    def _server_of(cls, kind: str) -> subprocess.Popen | _ForkedServer:
        proc = cls.procs.get(kind)
        if proc is None or proc.poll() is not None:
            if kind == "hf":
                proc = _ForkedServer(cls._server_of("base"))
            else:
                proc = subprocess.Popen([sys.executable, str(HELPERS / "warm.py")], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=_env(None))
            cls.procs[kind] = proc
        return proc

    @classmethod
    def run(cls, argv: list[str], env: dict, timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        import tempfile
        import threading

        proc = cls._server(env)
        with tempfile.TemporaryDirectory(prefix="eqa-run-") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            pid = _ask(proc, {"argv": argv, "env": env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)})
            timed_out: list[bool] = []

            def kill() -> None:
                timed_out.append(True)
                os.kill(pid, 9)

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                answer = proc.stdout.readline()
            except BaseException:  # the test was interrupted mid-run: a fresh server for the next one
                os.kill(pid, 9)
                proc.kill()
                raise
            finally:
                timer.cancel()
            if not answer:
                raise RuntimeError("the warm interpreter died (tests/helpers/warm.py)")
            code = json.loads(answer)["returncode"]
            if timed_out:
                raise subprocess.TimeoutExpired([sys.executable, *argv], timeout, out.read_text(), err.read_text())
            result = _completed(argv, code, Path(folder))
        return result

    @classmethod
    def start(cls, argv: list[str], env: dict, folder: Path) -> StartedRun:
        """Start ``python *argv`` beside other runs, its output and exit status going to ``folder``."""
        pid = _ask(cls._server(env), {"argv": argv, "env": env, "cwd": str(ROOT), "stdout": str(folder / "stdout"),
                                      "stderr": str(folder / "stderr"), "status": str(folder / "status")})
        return StartedRun(argv, folder, pid)


def _ask(server, request: dict) -> int:
    """Send a warm server (warm.py) one request; the pid of the process it forked for it."""
    server.stdin.write(json.dumps(request) + "\n")
    server.stdin.flush()
    return json.loads(server.stdout.readline())["pid"]


def _completed(argv: list[str], code: int, folder: Path) -> subprocess.CompletedProcess:
    """What ``subprocess.run`` returns for ``python *argv``, ended with ``code``, its output in ``folder``."""
    return subprocess.CompletedProcess([sys.executable, *argv], code,
                                       (folder / "stdout").read_text(encoding="utf-8", errors="replace"),
                                       (folder / "stderr").read_text(encoding="utf-8", errors="replace"))


class StartedRun:
    """A run started beside others (:func:`start_module`): ``wait()`` gives its result as ``subprocess.run`` would."""

    def __init__(self, argv: list[str], folder: Path, pid: int, popen: subprocess.Popen | None = None):
        self.argv, self.folder, self.pid, self.popen = argv, folder, pid, popen

    def _returncode(self, timeout: float) -> int:
        import time

        if self.popen is not None:
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()  # as the warm runs below and subprocess.run do
                raise
        status = self.folder / "status"
        deadline = time.monotonic() + timeout  # turns a hang into a failure; the wait is on the status file
        while not status.is_file():
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                raise subprocess.TimeoutExpired([sys.executable, *self.argv], timeout)
            time.sleep(0.05)
        return json.loads(status.read_text())["returncode"]

    def wait(self, timeout: float = 900) -> subprocess.CompletedProcess:
        import shutil

        result = _completed(self.argv, self._returncode(timeout), self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)
        return result


def _run(argv: list[str], env: dict | None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python *argv`` in ``cwd`` (the repository root unless said): forked from the warm interpreter, or with
    EQA_TESTS_COLD=1 a fresh one."""
    if os.environ.get("EQA_TESTS_COLD") == "1":
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd, env=_env(env),
                              timeout=900)
    return _WarmInterpreter.run(argv, _env(env), timeout=900, cwd=cwd)


def run_module(module: str, *overrides: str, env: dict | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    out = _run(["-m", module, *overrides], env)
    if check and out.returncode != 0:
        raise AssertionError(f"{module} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def start_module(module: str, *overrides: str, env: dict | None = None) -> StartedRun:
    """``python -m module *overrides`` started beside the test and other runs (forked from the warm interpreter, or
    with EQA_TESTS_COLD=1 a fresh one); ``.wait()`` for its result."""
    import tempfile

    argv = ["-m", module, *overrides]
    folder = Path(tempfile.mkdtemp(prefix="eqa-run-"))
    if os.environ.get("EQA_TESTS_COLD") == "1":
        with open(folder / "stdout", "w") as out, open(folder / "stderr", "w") as err:
            popen = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=err, cwd=ROOT, env=_env(env))
        return StartedRun(argv, folder, popen.pid, popen)
    return _WarmInterpreter.start(argv, _env(env), folder)


def run_script(script: Path, *args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python SCRIPT *args`` in ``cwd`` (the repository root unless said), forked from the warm interpreter as
    ``run_module``."""
    return _run([str(script), *args], env, cwd)


def run_with_faults(faults: list[str], *overrides: str, env: dict | None = None, check: bool = False,
                    module: str = "extractive_qa.train") -> subprocess.CompletedProcess:
    """``module``'s CLI with faults injected at exact points of the recipe (see fault_runner.py)."""
    args = [a for f in faults for a in ("--fault", f)]
    out = _run([str(HELPERS / "fault_runner.py"), "--module", module, *args, "--", *overrides], env)
    if "fault_runner: these faults never fired" in out.stderr:  # the test did not test what it says
        raise AssertionError(out.stderr[-3000:])
    if check and out.returncode != 0:
        raise AssertionError(f"{module} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def shared_once(tmp_path_factory, name: str, build) -> dict:
    """``build(folder)`` once per test session, even when pytest-xdist runs several workers: the first
    worker builds it under a file lock, the others read what it recorded (JSON)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    record = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not record.is_file():
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(build(folder), default=str))
    return json.loads(record.read_text())


@functools.cache
def _empty_store_template() -> Path:
    """An empty MLflow sqlite store with its schema made, once per process (removed at exit)."""
    import atexit
    import shutil
    import tempfile

    from mlflow.tracking import MlflowClient

    template = Path(tempfile.mkdtemp(prefix="eqa-empty-store-")) / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()  # makes the schema and the Default experiment
    atexit.register(shutil.rmtree, template.parent, True)
    return template


def empty_store(folder: Path) -> str:
    """``sqlite:///<folder>/mlflow.db``, a copy of an empty MLflow store with its schema made: for tests whose subject
    is not how a store comes to be. MLflow runs about sixty schema migrations on a new sqlite store (0.7-0.8
    CPU-seconds, in the first process that opens it); the tests of new stores (tests/tracking/test_store.py, the
    parallel jobs racing on a fresh one, the seed sweep) still start from none."""
    import shutil

    Path(folder).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_empty_store_template(), Path(folder) / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"


def read_metrics(run_dir: Path) -> list[dict]:
    """The lines of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def few_questions(source: Path, target: Path, n: int) -> Path:
    """The first ``n`` questions of an hw7 file (with every paragraph), for tests where the file's size is not
    the point."""
    data = json.loads(Path(source).read_text(encoding="utf-8"))
    data["questions"] = data["questions"][:n]
    Path(target).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return Path(target)
