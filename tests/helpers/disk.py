"""A small real disk (tmpfs) that a test can fill at an exact point of a run: ENOSPC for real, no clock."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

FILL_ENV = "EXTRACTIVE_QA_TEST_FILL"  # the folder fill_disk fills (set by the test for the run's process)
LEAVE_ENV = "EXTRACTIVE_QA_TEST_FILL_LEAVE_KB"  # what fill_disk leaves free (default 64 KB)


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int):
    """Mount a ``size_mb`` tmpfs at ``path`` (root only); ``None`` when this machine does not allow it."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                                                    str(path)], capture_output=True).returncode == 0
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk() -> None:
    """Fill the disk of ``$EXTRACTIVE_QA_TEST_FILL`` up to its last ``$EXTRACTIVE_QA_TEST_FILL_LEAVE_KB`` (64 KB;
    what a run meets when other jobs filled the disk): a fault_runner ``call:helpers.disk:fill_disk`` action."""
    folder = Path(os.environ[FILL_ENV])
    free = shutil.disk_usage(folder).free
    with open(folder / "filler.bin", "wb") as f:
        f.write(b"\0" * max(0, free - int(os.environ.get(LEAVE_ENV, "64")) * 1024))
