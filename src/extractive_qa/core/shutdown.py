"""A command line that ends when its work ends, not 1.5 s later.

When the interpreter shuts down, CPython tears its modules down in stages and runs a full garbage collection
after each stage. With what a training or prediction run loads (torch, transformers, MLflow, nltk: about 5,500
modules and 660,000 objects the collector tracks) those passes cost 1.4-1.5 s after the last line was printed,
on every run (2 cores, Xeon; ``make bench ARGS="bench.parts=[exit]"`` measures it on yours). Entry points end
through :func:`exits_promptly`; a launcher's worker process, whose end no entry point sees, through
:func:`collect_then_freeze_at_exit`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager


def collect_then_freeze() -> None:
    """Finalise what the run left in reference cycles (files, connections: one collection, as shutdown's first
    pass would), then move every object still alive into the collector's permanent generation
    (:func:`gc.freeze`), so shutdown's later passes skip them.

    What still happens at exit: atexit handlers (MLflow's queue, logging, distributed groups) and objects made
    by them are collected as always; module teardown still releases every object by reference counting. What
    no longer does: a collection finding cycles that only became unreachable during module teardown itself --
    finalisers CPython never promised to run at exit (``object.__del__``'s documentation)."""
    import gc

    gc.collect()
    gc.freeze()


@contextmanager
def exits_promptly() -> Iterator[None]:
    """``with exits_promptly(): main()`` in an entry point: :func:`collect_then_freeze` once the work has ended,
    however it ended (a return, ``sys.exit``, an exception on its way to the traceback)."""
    try:
        yield
    finally:
        collect_then_freeze()


@functools.cache
def collect_then_freeze_at_exit() -> None:
    """For a process whose end no entry point sees -- a launcher's worker (joblib's loky, submitit) that runs jobs
    and is ended by its launcher: :func:`collect_then_freeze` as its interpreter starts to shut down (an atexit
    handler, once per process), so jobs a worker runs meanwhile are collected as usual."""
    import atexit

    atexit.register(collect_then_freeze)
