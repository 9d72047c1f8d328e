"""Shared fixtures: paths to ../shared (skipping when absent) and a tokenizer built offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EXTRACTIVE_QA_SHARED", ROOT.parent / "shared")).resolve()
OFFLINE_MODEL = SHARED / "models" / "bert-base-chinese-offline"
HW7_DIR = SHARED / "data" / "hw7-drcd"
SQUAD_DIR = SHARED / "data" / "squad-format"

needs_shared = pytest.mark.skipif(
    not (OFFLINE_MODEL / "vocab.txt").is_file() or not HW7_DIR.is_dir(),
    reason=f"needs ../shared (real data + offline tokenizer) at {SHARED}",
)

@pytest.fixture(scope="session")
def char_tokenizer(tmp_path_factory):
    from extractive_qa.core.synthetic import build_char_tokenizer

    return build_char_tokenizer(tmp_path_factory.mktemp("char_tokenizer"))


@pytest.fixture(scope="session")
def bert_tokenizer():
    if not (OFFLINE_MODEL / "vocab.txt").is_file():
        pytest.skip(f"needs the offline bert-base-chinese tokenizer at {OFFLINE_MODEL}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(OFFLINE_MODEL))


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


def run_module(module: str, *overrides: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    out = subprocess.run([sys.executable, "-m", module, *overrides], capture_output=True, text=True, cwd=ROOT,
                         env=full_env, timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(f"{module} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def run_with_faults(faults: list[str], *overrides: str, env: dict | None = None, check: bool = False,
                    module: str = "extractive_qa.train") -> subprocess.CompletedProcess:
    """``module``'s CLI with faults injected at exact points of the recipe (see fault_runner.py)."""
    args = [a for f in faults for a in ("--fault", f)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "fault_runner.py"), "--module", module, *args, "--", *overrides],
                         capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=900)
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


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    """A synthetic hw7-format data dir and an offline tiny-model dir (see synthetic.py)."""
    from extractive_qa.core.synthetic import write_synthetic_hw7, write_tiny_model_dir

    def build(tmp: Path) -> dict:
        return {"data": write_synthetic_hw7(tmp / "data", n_train=1000), "model": write_tiny_model_dir(tmp / "model"),
                "tmp": tmp}

    return {k: Path(v) for k, v in shared_once(tmp_path_factory, "synthetic", build).items()}


@pytest.fixture(scope="session")
def seed_sweep(synthetic, tmp_path_factory) -> dict:
    """A real 3-seed sweep of the tiny model on the synthetic set, tracked in a fresh sqlite store, each
    job's model logged and registered (versions 1-3 of ``seeds-qa``): the runs the sweep, report,
    ensemble and registry tests look at."""

    def build(tmp: Path) -> dict:
        uri = f"sqlite:///{tmp}/mlflow.db"
        sweep_dir = tmp / "outputs" / "sweeps" / "seeds"
        args = ["-m", "seed=1,2,3", f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache",
                f"tracking.uri={uri}", "experiment_name=seeds", "model=tiny", f"model.name_or_path={synthetic['model']}",
                f"data.dir={synthetic['data']}", "data.limit_train=1500", "data.limit_test=40", "epochs=4",
                "batch_size=32", "lr=1e-3", "warmup_ratio=0.1", "logging_steps=5", "tracking.log_model=true",
                "tracking.register_model=seeds-qa", f"hydra.sweep.dir={sweep_dir}"]
        run_module("extractive_qa.train", *args)
        return {"tmp": tmp, "uri": uri, "sweep_dir": sweep_dir, "runs": [sweep_dir / str(j) for j in range(3)], "args": args}

    info = shared_once(tmp_path_factory, "seed_sweep", build)
    return {**info, "tmp": Path(info["tmp"]), "sweep_dir": Path(info["sweep_dir"]), "runs": [Path(r) for r in info["runs"]]}


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory) -> dict:
    """One real `mlflow server` on 127.0.0.1 for the session (tests that stop it start it again)."""
    import mlflow_server

    settings = mlflow_server.start(tmp_path_factory.mktemp("tracking_server"))
    yield settings
    mlflow_server.stop(settings)
