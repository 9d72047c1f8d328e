"""Run the training CLI with faults injected at exact points of the recipe: no clock, no race.

    python tests/helpers/fault_runner.py --fault after:_save:30=SIGKILL -- experiment=... hydra.run.dir=...

A fault is ``WHEN:METHOD[:STEP][#N]=ACTION``: ``before`` or ``after`` a call of ``TrainingRecipe.METHOD``
(or of ``module.function`` when METHOD holds a dot), the N-th time (default: the first) it runs while
the recipe's optimizer step equals STEP (any step when left out); in a sweep, the N-th call may fall
in a later job. ACTION is a signal name sent to this process
(``SIGINT``, ``SIGTERM``, ``SIGKILL``: exactly what a user's Ctrl-C, a scheduler or the OOM killer
does), ``raise`` (a RuntimeError from inside the recipe), ``call:module:function`` (a test's
helper, e.g. stopping a tracking server), ``enospc`` (the ``OSError`` of a write on a full disk),
``set:ATTR=VALUE`` (sets the recipe's attribute to a Python
literal, e.g. ``set:_check_every_step=False``: the GPU's cadence of host reads on a CPU), or
``oom_rows>N`` / ``oom_tokens>N``: a CUDA-style
``torch.OutOfMemoryError`` whenever the call's batch (its first dict argument with ``input_ids``) has
more than N rows / padded tokens -- at every such call, not only the N-th, as a GPU that is too small
would. Several ``--fault`` options may be given.

A fault that never fired is a failed test, not a passed one: when the program ends, every ``--fault`` that
did not act is named on stderr and the exit status becomes 97 (whatever the program returned).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import sys

_recipe = {"step": lambda: None}
_fired: dict[str, bool] = {}  # --fault spec -> whether it acted
NOT_FIRED = 97


def _batch_of(args) -> dict | None:
    return next((a for a in args if isinstance(a, dict) and "input_ids" in a), None)


def _out_of_memory(action: str, args) -> bool:
    """``oom_rows>N`` / ``oom_tokens>N``: raise if this call's batch is bigger; ``False`` for other actions."""
    if not action.startswith("oom_"):
        return False
    kind, limit = action[len("oom_"):].split(">")
    batch = _batch_of(args)
    if batch is None:
        return True
    size = batch["input_ids"].shape[0] if kind == "rows" else batch["input_ids"].numel()
    if size > int(limit):
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory (injected by fault_runner: {size} {kind} > {limit})")
    return True


def _act(action: str, args: tuple = ()) -> None:
    if action.startswith("set:"):
        import ast

        name, value = action[len("set:"):].split("=", 1)
        setattr(args[0], name, ast.literal_eval(value))
        return
    if action.startswith("SIG"):
        os.kill(os.getpid(), getattr(signal, action))
        return
    if action == "raise":
        raise RuntimeError("fault injected by tests/helpers/fault_runner.py")
    if action == "enospc":  # what a write on a full disk raises
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "injected by fault_runner")
    if action.startswith("call:"):
        module, function = action[len("call:"):].rsplit(":", 1)
        getattr(importlib.import_module(module), function)()
        return
    raise SystemExit(f"fault_runner: unknown action {action!r}")


def _inject(spec: str) -> None:
    _fired[spec] = False
    where, action = spec.split("=", 1)
    where, _, nth = where.partition("#")
    when, target, *step = where.split(":")
    step_at, nth = (int(step[0]) if step else None), int(nth or 1)
    if "." in target:
        module_name, name = target.rsplit(".", 1)
        owner = importlib.import_module(module_name)
    else:
        from extractive_qa.recipe import TrainingRecipe

        owner, name = TrainingRecipe, target
    original = getattr(owner, name)
    seen = []

    def due() -> bool:
        if len(seen) >= nth or (step_at is not None and _recipe["step"]() != step_at):
            return False
        seen.append(True)
        return len(seen) == nth

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if args and hasattr(args[0], "progress"):
            recipe = args[0]
            _recipe["step"] = lambda: recipe.progress.step
        if when == "before" and (step_at is None or _recipe["step"]() == step_at):
            try:
                if _out_of_memory(action, args):
                    return original(*args, **kwargs)  # the batch fits: it runs
            except BaseException:
                _fired[spec] = True  # an injected out-of-memory error
                raise
        if when == "before" and due():
            _fired[spec] = True
            _act(action, args)
        result = original(*args, **kwargs)
        if when == "after" and due():
            _fired[spec] = True
            _act(action, args)
        return result

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fault", action="append", default=[])
    parser.add_argument("--module", default="extractive_qa.train")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    for spec in args.fault:
        _inject(spec)
    sys.argv = [args.module.replace(".", "/") + ".py", *args.overrides]
    from extractive_qa.core.errors import run_cli

    try:  # as the module's own `__main__` runs it: one-line errors, passwords lifted, a prompt end
        run_cli(importlib.import_module(args.module).main)
    finally:
        missed = [spec for spec, fired in _fired.items() if not fired]
        if missed:
            sys.stdout.flush()
            print(f"fault_runner: these faults never fired: {', '.join(missed)}", file=sys.stderr, flush=True)
            os._exit(NOT_FIRED)


if __name__ == "__main__":
    main()
