"""What a run is called and where it came from: its name from the overrides, the swept values, the
command line, the git state."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path


def git_state(root: Path) -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
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


def run_name_from_overrides(overrides: list[str], sweep: dict | None = None, limit: int = 200) -> str:
    """A readable run name: in a sweep its short id and the swept values (``a1b2c3 warmup_ratio=0.1``),
    else every override a person chose; never paths (long, and the same across a sweep) or Hydra's keys."""
    keep = [o for o in overrides if not o.startswith(("hydra.", "paths.", "+hydra"))]
    if sweep:
        swept = set(sweep.get("swept_keys") or [])
        chosen = [short_value(o) for o in keep if o.split("=", 1)[0].lstrip("+~") in swept] or \
            [o for o in keep if "/" not in o.split("=", 1)[-1]]
        return f"{sweep['id']} {','.join(chosen) or 'defaults'}"[:limit]
    return (",".join(o for o in keep if "/" not in o.split("=", 1)[-1]) or "defaults")[:limit]


def swept_values(overrides: list[str], sweep: dict) -> dict[str, str]:
    """``{key: value}`` of the job's overrides for the keys its sweep varies."""
    swept = set(sweep.get("swept_keys") or [])
    pairs = (o.split("=", 1) for o in overrides if "=" in o)
    return {k.lstrip("+~"): v for k, v in pairs if k.lstrip("+~") in swept}


def short_value(override: str) -> str:
    """``data.dev_file=/a/b/dev.json`` -> ``data.dev_file=dev.json``: a swept path, named by its file."""
    key, _, value = override.partition("=")
    return f"{key}={Path(value).name}" if "/" in value else override


def command_line() -> str:
    prog = Path(sys.argv[0])
    head = ["python", "-m", f"extractive_qa.{prog.stem}"] if prog.parent.name == "extractive_qa" else [prog.name]
    return shlex.join([*head, *sys.argv[1:]])[:5000]
