"""What ending a process costs once a training run's libraries are loaded (core/shutdown.py): a fresh interpreter
imports what ``python -m extractive_qa.train`` imports, prints the time, and exits -- through CPython's own
shutdown, or after :func:`~extractive_qa.core.shutdown.collect_then_freeze` as every entry point now does. The
parent times from that line to the process's end (the median of ``bench.exit_repeats``).
``make bench ARGS="bench.parts=[exit]"`` (a minute with the GEMM peak every bench run measures)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

# What a tiny training run on sqlite has imported by its last line.
RUN_MODULES = ("torch", "transformers", "transformers.models.bert.modeling_bert", "accelerate", "hydra",
               "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store", "nltk.tokenize", "extractive_qa.recipe")

_CHILD = """
import gc, json, sys, time
for name in sys.argv[2:]:
    __import__(name)
print(json.dumps({"objects": len(gc.get_objects()), "modules": len(sys.modules), "t": time.time()}), flush=True)
if sys.argv[1] == "freeze":
    from extractive_qa.core.shutdown import collect_then_freeze
    collect_then_freeze()
"""


def exit_time(mode: str) -> dict:
    """One fresh interpreter: seconds from its last line to its end."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, mode, *RUN_MODULES], stdout=subprocess.PIPE, text=True)
    line = json.loads(proc.stdout.readline())
    proc.wait()
    ended = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"the {mode} child exited {proc.returncode}")
    return {"exit_s": ended - line["t"], "objects": line["objects"], "modules": line["modules"]}


def shutdown_costs(cfg: dict) -> dict:
    repeats = int(cfg["bench"]["exit_repeats"])
    out: dict = {"bench": "exit", "repeats": repeats}
    for mode, label in (("plain", "cpython_shutdown"), ("freeze", "collect_then_freeze")):
        runs = [exit_time(mode) for _ in range(repeats)]
        out[label] = {"exit_s_median": round(statistics.median(r["exit_s"] for r in runs), 3),
                      "exit_s": [round(r["exit_s"], 3) for r in runs]}
        out["objects"], out["modules"] = runs[-1]["objects"], runs[-1]["modules"]
    out["saved_s"] = round(out["cpython_shutdown"]["exit_s_median"] - out["collect_then_freeze"]["exit_s_median"], 3)
    return out
