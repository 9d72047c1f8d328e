"""`make install` on a machine whose Python already has a supported torch (Colab, Kaggle, a lab's CUDA build):
the new virtualenv uses that torch -- pip's own log shows no torch collected, downloaded or installed -- and
trains. (A fresh machine without torch keeps installing the pinned one: that is how this suite's .venv was made.)"""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import ROOT


def test_an_installed_torch_is_reused_not_downloaded(synthetic, tmp_path):
    venv = tmp_path / "venv"
    log = tmp_path / "pip.log"
    env = {**os.environ, "PIP_LOG": str(log)}
    env.pop("VIRTUAL_ENV", None)
    out = subprocess.run(["make", "-s", "install", f"PYTHON={sys.executable}", f"VENV={venv}", "EXTRAS=dev"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "reusing torch" in out.stdout and "no torch is downloaded" in out.stdout
    pip_lines = log.read_text(errors="replace").splitlines()
    fetched = [line for line in pip_lines if any(w in line for w in ("Collecting torch", "Downloading torch",
                                                                      "Installing collected packages: torch"))
               or ("Successfully installed" in line and " torch-" in line)]
    assert not fetched, fetched
    python = venv / "bin" / "python"
    trained = subprocess.run([str(python), "-m", "extractive_qa.train", "model=tiny",
                              f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}",
                              "tracking=none", "max_steps=2", "data.limit_train=16", "data.limit_dev=4",
                              "data.limit_test=4", f"paths.output_dir={tmp_path}/out",
                              f"hydra.run.dir={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "test_predictions.csv").is_file()
