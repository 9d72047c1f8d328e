"""Used by ``make install``: let a new virtualenv use the torch of the Python that creates it, when that torch
is one this project supports -- Colab's and Kaggle's CUDA torch, a lab's build -- instead of downloading a
second one (~3 GB with its CUDA wheels, at every new runtime).

    python3 scripts/reuse_torch.py VENV      # run by the Python that made VENV

Prints one line saying what it did. Exit 0: VENV now sees that torch (a ``.pth`` file naming the folder it is
installed in, so pip counts it -- and whatever else is installed beside it -- as installed); exit 1: there is
no torch to reuse, or it is outside the supported range (the line says what to do), and ``make install``
installs its pinned torch as before. ``REUSE_TORCH=no make install`` never reuses.
"""

from __future__ import annotations

import sys
from pathlib import Path

SUPPORTED = ((2, 4), (3, 0))  # >= 2.4 (what the code needs, pyproject.toml), < 3


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def main(venv: str) -> int:
    try:
        import torch
    except ImportError:
        print("no torch in this Python: installing the pinned one")
        return 1
    version = torch.__version__
    if not SUPPORTED[0] <= _version(version) < SUPPORTED[1]:
        print(f"torch {version} here is outside this project's range (>=2.4,<3): installing the pinned one into "
              f"{venv} instead. To use yours, upgrade it (pip install -U 'torch>=2.4') and run make install again")
        return 1
    site = Path(torch.__file__).resolve().parent.parent
    packages = sorted(Path(venv).glob("lib/python*/site-packages"))
    if not packages:
        print(f"{venv} has no site-packages folder")
        return 1
    (packages[0] / "_reuse_base_torch.pth").write_text(f"{site}\n")
    cuda = f", CUDA {torch.version.cuda}" if torch.version.cuda else ", CPU build"
    print(f"reusing torch {version}{cuda} from {site}: no torch is downloaded")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
