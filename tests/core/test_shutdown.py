"""Entry points end when their work ends (core/shutdown.py) without losing what the run left behind: a
finaliser of an object the run left in a reference cycle still runs -- however ``main`` ended -- and what is
still alive is frozen out of shutdown's collections. The time saved is measured by ``make bench
ARGS="bench.parts=[exit]"``, not here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import child_env

LEFT_IN_A_CYCLE = """
from pathlib import Path

class LeftInACycle:  # only the garbage collector can free it: what an unclosed writer in a cycle looks like
    def __init__(self, path):
        self.path, self.me = path, self
    def __del__(self):
        Path(self.path).write_text("finalised")
"""

SCRIPT = LEFT_IN_A_CYCLE + """
import gc, sys
from extractive_qa.core.errors import run_cli

def main():
    LeftInACycle(sys.argv[1])
    if sys.argv[2] == "exit":
        sys.exit(3)
    if sys.argv[2] == "raise":
        raise RuntimeError("boom")

try:
    run_cli(main)
finally:
    print("frozen", gc.get_freeze_count(), flush=True)
"""


@pytest.mark.parametrize("ending, code", [("return", 0), ("exit", 3), ("raise", 1)])
def test_what_a_run_left_in_a_cycle_is_finalised_and_the_rest_frozen(tmp_path, ending, code):
    marker = tmp_path / "finalised.txt"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(marker), ending], capture_output=True, text=True,
                         env=child_env(), timeout=120)
    assert out.returncode == code, out.stderr[-2000:]
    assert marker.read_text() == "finalised"  # collected before the freeze, not frozen with the survivors
    frozen = int(out.stdout.split("frozen", 1)[1].split()[0])
    assert frozen > 1000, out.stdout  # the modules' objects: shutdown's collections skip them
    if ending == "raise":
        assert "RuntimeError: boom" in out.stderr  # the traceback still reaches the user


WORKER = LEFT_IN_A_CYCLE + """
import atexit, gc, sys
atexit.register(lambda: print("frozen at the end", gc.get_freeze_count(), flush=True))  # runs after ours
from extractive_qa.core.shutdown import collect_then_freeze_at_exit

for job in range(2):  # a worker running two jobs: each asks, once per process is what happens
    collect_then_freeze_at_exit()
    print("frozen during the jobs", gc.get_freeze_count(), flush=True)
LeftInACycle(sys.argv[1])
"""


def test_a_launchers_worker_freezes_only_as_it_exits(tmp_path):
    """A joblib or submitit worker runs jobs (train.main) and is ended by its launcher: nothing is frozen while it
    works, what its last job left in a cycle is finalised, the rest frozen once its interpreter shuts down."""
    marker = tmp_path / "finalised.txt"
    out = subprocess.run([sys.executable, "-c", WORKER, str(marker)], capture_output=True, text=True, env=child_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[:2] == ["frozen during the jobs 0"] * 2, lines
    assert marker.read_text() == "finalised"
    assert int(lines[2].split()[-1]) > 1000, lines
