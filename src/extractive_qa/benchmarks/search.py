"""What pruning saves: one Optuna search run twice -- without a pruner and with the median pruner -- on a search
where half the learning rates cannot learn (the tiny model on the synthetic set: lr 2e-3 learns, 1e-9 does not;
4 seeds each, a grid of 8 trials; the median pruner from the 3rd trial on,
after a trial's 5th step). Prints the optimizer steps each spent in all and the best configuration each
found. ``make bench ARGS="bench.parts=[pruning]"`` (a few minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf


def _steps(run_dir: Path) -> int:
    """Optimizer steps a job trained: its last logged step (a pruned job has no metrics.json)."""
    path = run_dir / "metrics.jsonl"
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()] \
        if path.is_file() else [0]
    return max(steps)


def pruning_savings(cfg: dict) -> dict:
    from ..core.synthetic import write_synthetic_hw7, write_tiny_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, model = write_synthetic_hw7(tmp / "data", n_train=1000), write_tiny_model_dir(tmp / "model")
        out = {"bench": "pruning", "search": "grid over lr choice(2e-3, 1e-9) x seed choice(1,2,3,4), tiny model, "
                                            "synthetic set, 4 epochs of 400 questions, an evaluation every 5 steps"}
        for pruner in ("none", "median"):
            sweep = tmp / pruner
            subprocess.run([sys.executable, "-m", "extractive_qa.train", "-m", "hparams_search=optuna",
                            f"hydra.sweeper.storage=sqlite:///{tmp}/{pruner}.db", f"hydra.sweeper.study_name={pruner}",
                            f"hydra.sweeper.pruner={pruner}", "hydra.sweeper.pruner_warmup_steps=5",
                            "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=8",
                            "hydra.sweeper.seed=0", "~hydra.sweeper.params", "lr=choice(2e-3,1e-9)",
                            "seed=choice(1,2,3,4)", "model=tiny", f"model.name_or_path={model}", f"data.dir={data}",
                            "data.limit_train=400", "data.limit_dev=60", "epochs=4", "eval_steps=5", "batch_size=16",
                            "predict_test=false", "tracking=none", f"paths.output_dir={tmp}/outputs",
                            f"hydra.sweep.dir={sweep}"], check=False, capture_output=True, text=True)
            results = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
            out[pruner] = {"steps": sum(_steps(d) for d in sweep.iterdir() if d.is_dir() and d.name.isdigit()),
                           "trials": results["trials"], "best_params": results.get("best_params"),
                           "best_value": results.get("best_value")}
        out["steps_share_with_pruning"] = round(out["median"]["steps"] / max(out["none"]["steps"], 1), 3)
        out["same_best_configuration"] = out["median"]["best_params"]["lr"] == out["none"]["best_params"]["lr"]
        return out
