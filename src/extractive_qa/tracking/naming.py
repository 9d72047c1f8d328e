"""What a run is called and where it came from: its name from the overrides, the swept values, the
command line, the git state."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from ..core.roles import role_of_override
from ..core.secrets import redact


def git_state(root: Path) -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return {"git.commit": commit or "unknown", "git.dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}


def hydra_overrides() -> list[str]:
    """The running Hydra job's overrides (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return []


def short_key(key: str) -> str:
    """``warmup_ratio`` -> ``wr``, ``window.doc_overlap`` -> ``do``, ``scheduler`` -> ``sched``; keys of up to
    6 characters stay as they are."""
    if len(key) <= 6:
        return key
    last = key.rsplit(".", 1)[-1]
    words = [w for w in last.split("_") if w]
    return "".join(w[0] for w in words) if len(words) > 1 else last[:5]


def short_keys(keys: list[str]) -> dict[str, str]:
    """How a sweep's job names spell its keys (:func:`short_key`), so what differs fits the MLflow UI's
    run-name column (about 18 characters). Keys whose short forms would collide, with each other or with
    another swept key, keep their full names. The sweep's parent run lists the short forms."""
    short = {k: short_key(k) for k in keys}
    taken = [*short.values(), *keys]
    return {k: s if s == k or taken.count(s) == 1 else k for k, s in short.items()}


def run_name_from_overrides(overrides: list[str], sweep: dict | None = None, limit: int = 200) -> str:
    """A run name that leads with what differs, so runs can be told apart at the UI's default column width.

    In a sweep: the swept values, long keys short (:func:`short_keys`), then the sweep's short id
    (``wr=0.1 seed=2 · vbaxpx``). A single run: the overrides that change what it trains or keeps (roles
    ``trajectory`` and ``setting`` in :mod:`extractive_qa.core.roles`, group choices such as
    ``experiment=``), never tracking, paths, logging or checkpoint keys; a path value is named by its last
    component."""
    if sweep:
        values = swept_values(overrides, sweep)
        keys = [k for k in sweep.get("swept_keys") or [] if k in values]
        short = short_keys(list(sweep.get("swept_keys") or []))
        shown = " ".join(short_value(f"{short.get(k, k)}={values[k]}") for k in keys) or "defaults"
        return f"{shown} · {sweep['id']}"[:limit]
    chosen = [short_value(o) for o in overrides if _names_the_run(o)]
    return (" ".join(chosen) or "defaults")[:limit]


SEED_KEYS = ("seed",)  # swept keys that make another draw of one configuration, not another configuration
PARENT_TAG = "sweep.parent"  # a sweep's parent run
CONFIGURATION_TAG = "sweep.configuration"  # a configuration's run: its mean and std over seeds
GROUP_TAG = "configuration"  # the configuration a run belongs to: the MLflow UI groups runs by it


def configuration_label(values: dict[str, str], swept_keys: list[str], sweep_id: str) -> str:
    """What a sweep job's configuration is called -- its swept values without the seed, keys spelled as in
    run names -- and its sweep: ``wr=0.1 · vbaxpx``. Every seed of a configuration and its configuration run
    carry it as the tag :data:`GROUP_TAG`, by which the UI's runs view groups them."""
    short = short_keys(list(swept_keys or values))
    shown = " ".join(short_value(f"{short.get(k, k)}={_readable(v)}") for k, v in values.items()
                     if k not in SEED_KEYS)
    return f"{shown or 'all runs'} · {sweep_id}"


def _readable(value: str) -> str:
    """A sampled float as 6 significant digits (``0.00040071912143458`` -> ``0.000400719``): what a group row of
    the UI can show. Two configurations an Optuna search tells apart differ long before the 7th digit."""
    try:
        number = float(value)
    except ValueError:
        return value
    short = f"{number:.6g}"
    return short if float(short) != number else value  # only what has more than 6 digits; 0.10 stays 0.10


def _names_the_run(override: str) -> bool:
    role = role_of_override(override)
    return role.kind in ("trajectory", "setting") and "=" in override


def swept_values(overrides: list[str], sweep: dict) -> dict[str, str]:
    """``{key: value}`` of the job's overrides for the keys its sweep varies."""
    swept = set(sweep.get("swept_keys") or [])
    pairs = (o.split("=", 1) for o in overrides if "=" in o)
    return {k.lstrip("+~"): v for k, v in pairs if k.lstrip("+~") in swept}


def short_value(override: str) -> str:
    """``data.dev_file=/a/b/dev.json`` -> ``data.dev_file=dev.json``: a path, named by its last component."""
    key, _, value = override.partition("=")
    return f"{key.lstrip('+~')}={Path(value.rstrip('/')).name}" if "/" in value else override.lstrip("+~")


def command_line() -> str:
    prog = Path(sys.argv[0])
    head = ["python", "-m", f"extractive_qa.{prog.stem}"] if prog.parent.name == "extractive_qa" else [prog.name]
    return redact(shlex.join([*head, *sys.argv[1:]]))[:5000]
