"""notebooks/quickstart.ipynb, executed headless top to bottom (nbclient) on the CPU, with its parameters cell
replaced by a tiny offline model: a finished run, a race of two settings over seeds and its report with one verdict,
a submission with every test id once -- everything on the "durable" folder the notebook's first cell chose -- and
outputs that read as a Colab user reads them (each log once, no progress bars, no echoed log, one submission line).
Plus the lost-runtime path it relies on."""

from __future__ import annotations

import csv
import json
import signal

import nbformat
from nbclient import NotebookClient

from extractive_qa.core.data import read_examples

from helpers import ROOT, read_metrics, run_module, run_with_faults

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def test_the_quickstart_notebook_runs_top_to_bottom(synthetic, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    durable = tmp_path / "durable"
    # Enough training that seeds answer differently (at 4 steps every run scored 0: a report gives no verdict then).
    preset = (f"model=tiny model.name_or_path={synthetic['model']} data.dir={synthetic['data']} "
              "data.limit_train=200 data.limit_dev=40 data.limit_test=20 epochs=2 batch_size=16 lr=3e-3 "
              "logging_steps=4 tracking.system_metrics=false")
    params.source = (f'REPO = "unused"\nPRESET = "{preset}"\nEXTRA = "checkpoint_minutes=10"\n'
                     f'SWEEP = "-m hparams_search=race warmup_ratio=0.1,0.2 hydra.sweeper.max_seeds=2"\n'
                     f'DURABLE = "{durable}"\nOPEN_UI = False\n')
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    echoed = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "execute_result"]
    assert not echoed, echoed[0].get("data", {}).get("text/plain", "")[:300]  # no log printed a second time as Out[]
    assert "it/s" not in outputs and "s/it" not in outputs  # progress bars left out, those with a postfix too
    assert outputs.count("submission: ") == 1
    assert len([line for line in outputs.splitlines() if " vs " in line and (": real:" in line or
                                                                         ": not established:" in line)]) == 1
    runs = sorted((durable / "outputs" / "runs").glob("*/run.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["status"] == "FINISHED"
    jobs = sorted((durable / "outputs" / "sweeps").glob("*/*/run.json"))
    assert len(jobs) == 4 and {json.loads(j.read_text())["status"] for j in jobs} == {"FINISHED"}  # 2 seeds each
    assert "race over 2 configurations" in outputs  # the report's race history
    assert "Is the difference real?" in outputs  # the report, shown in the notebook
    assert (durable / "mlflow.db").is_file()
    submission = next(line.split("submission: ", 1)[1] for line in outputs.splitlines()
                      if line.startswith("submission: "))
    with open(submission, newline="", encoding="utf-8") as f:
        ids = [row["ID"] for row in csv.DictReader(f)]
    assert ids == [ex.id for ex in read_examples(synthetic["data"] / "hw7_test.json")]  # every test id, once
    assert "predicting with" in outputs and "best of sweep" in outputs


def test_a_lost_runtime_continues_from_durable_storage_with_the_same_losses(synthetic, tmp_path):
    """The notebook's training cell, killed (kill -9: a closed tab) after its first time-based checkpoint
    (checkpoint_minutes) and run again as it is (resume=auto): the same losses, step for step, as a run never
    interrupted. Where the checkpoint falls depends on the clock; what is compared does not."""
    def cell(durable) -> list[str]:
        return [f"paths.output_dir={durable}/outputs", f"paths.cache_dir={tmp_path}/cache", "tracking=none",
                "model=tiny", f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}",
                "data.limit_train=96", "data.limit_dev=12", "data.limit_test=8", "epochs=2", "batch_size=8",
                "logging_steps=1", "checkpoint_minutes=0.0001", "resume=auto", "group_by_length=false"]

    run_module("extractive_qa.train", *cell(tmp_path / "whole"), f"hydra.run.dir={tmp_path}/whole/run")
    lost = run_with_faults(["after:_save#2=SIGKILL"], *cell(tmp_path / "drive"),
                           f"hydra.run.dir={tmp_path}/drive/outputs/runs/first")
    assert lost.returncode == -signal.SIGKILL
    again = run_module("extractive_qa.train", *cell(tmp_path / "drive"),
                       f"hydra.run.dir={tmp_path}/drive/outputs/runs/second")
    assert "resuming" in again.stdout + again.stderr
    def losses(run_dir):
        return [(m["step"], m["train/loss"]) for m in read_metrics(run_dir) if "train/loss" in m]

    continued = losses(tmp_path / "drive" / "outputs" / "runs" / "first")
    assert continued == losses(tmp_path / "whole" / "run") and len(continued) == 24
