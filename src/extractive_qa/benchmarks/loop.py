"""The whole training loop against a bare one, over the same batches (``bench.parts=[loop]``).

``make train``'s loop is :meth:`~extractive_qa.recipe.TrainingRecipe.train` as the entry point runs it: the config
composed as ``python -m extractive_qa.train`` composes it, tracking on (a real MLflow sqlite store), logging, the
progress bar, the run record, the checks due per step and the loader -- evaluation is timed apart and left out.
The bare loop is forward, backward, clipping, optimizer and schedule steps over the same loader's batches, nothing
else. With the tiny model (``bench.loop_model``) a step takes a few milliseconds on a CPU, as bert-base's does on a
large GPU: what the loop adds per step shows there. Both run twice, interleaved, after an untimed warm-up; the best
of each counts. Also reported: where the loop's time went (the step itself, waiting for the loader, the rest) and how
many distinct padded batch shapes an epoch has (each new one costs kernel choice, and a compiled graph a recompile).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .common import set_threads


class _TimedLoader:
    """The recipe's loader, with the time spent waiting for its batches summed (what ``make train`` iterates)."""

    def __init__(self, loader):
        self.loader, self.seconds, self.shapes = loader, 0.0, set()

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.seconds += time.perf_counter() - start
            self.shapes.add(tuple(batch["input_ids"].shape))
            yield batch


def _compose(cfg: dict, folder: Path):
    from hydra import compose, initialize_config_dir

    from ..core.config import CONF_DIR

    b = cfg["bench"]
    precision = {"no": "fp32"}.get(cfg["precision"]["mixed_precision"], cfg["precision"]["mixed_precision"])
    # The bench's own tokenizer (gpu-check's synthetic one on a machine without ../shared), the loop model's shape.
    overrides = [f"model={b['loop_model']}", f"model.name_or_path={cfg['model']['name_or_path']}",
                 f"data.dir={cfg['data']['dir']}",
                 f"data.limit_train={b['loop_questions']}", "data.limit_dev=8", "epochs=1", "predict_test=false",
                 "save_model=false", f"precision={precision}",
                 f"paths.output_dir={folder}/outputs", f"paths.cache_dir={cfg['paths']['cache_dir']}",
                 f"tracking.uri=sqlite:///{folder}/mlflow.db", "experiment_name=loop-bench",
                 "tracking.system_metrics=false",
                 *(f"++model.config_overrides.{k}={v}" for k, v in (b.get("loop_shape") or {}).items()),
                 *b.get("loop_overrides", [])]
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # in the bench's own process (bench.isolate=false): its Hydra
        return compose("train", overrides=overrides)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def _bare_epoch(recipe) -> float:
    """Forward, backward, clipping, optimizer and schedule steps over an epoch of the recipe's own batches."""
    from ..engine.evaluation import model_inputs

    model, optimizer, scheduler, accelerator = recipe.model, recipe.optimizer, recipe.scheduler, recipe.accelerator
    recipe.train_set.set_epoch(0)
    recipe.loader.set_epoch(0)
    norm = float(recipe.cfg.max_grad_norm or 0)
    start = time.perf_counter()
    for batch in recipe.loader:
        out = model(**model_inputs(batch), start_positions=batch["start_positions"],
                    end_positions=batch["end_positions"])
        accelerator.backward(out.loss)
        if norm:
            accelerator.clip_grad_norm_(model.parameters(), norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    if recipe.accelerator.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - start


def _loop_epoch(recipe) -> dict:
    """One epoch of ``make train``'s loop (evaluation timed apart); its parts' seconds."""
    from ..recipe import Progress

    timed = {"evaluation": 0.0, "step": 0.0}
    evaluate, step = recipe.evaluate, recipe._optimizer_step

    def timing(fn, part: str):
        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timed[part] += time.perf_counter() - start
        return timed_call

    loader = _TimedLoader(recipe.loader)
    recipe.evaluate, recipe._optimizer_step = timing(evaluate, "evaluation"), timing(step, "step")
    recipe.loader = loader
    recipe.progress = Progress()
    try:
        start = time.perf_counter()
        recipe.train()
        total = time.perf_counter() - start
    finally:
        recipe.evaluate, recipe._optimizer_step, recipe.loader = evaluate, step, loader.loader
    loop = total - timed["evaluation"]
    return {"loop": loop, "step": timed["step"], "loader": loader.seconds,
            "rest": loop - timed["step"] - loader.seconds, "evaluation": timed["evaluation"],
            "shapes": sorted(loader.shapes)}


def loop_bench(cfg: dict) -> dict:
    """See the module docstring."""
    import shutil

    from ..recipe import TrainingRecipe

    set_threads(cfg)
    folder = Path(tempfile.mkdtemp(prefix="eqa-loop-bench-"))
    try:
        c = _compose(cfg, folder)
        with TrainingRecipe(c, folder / "run") as recipe:
            recipe.setup()
            steps = recipe.total_steps
            _bare_epoch(recipe)  # warm-up: first-touch allocations, oneDNN / cuBLAS choices
            bare, loops = [], []
            for _ in range(int(cfg["bench"]["loop_rounds"])):
                loops.append(_loop_epoch(recipe))
                bare.append(_bare_epoch(recipe))
        best = min(loops, key=lambda r: r["loop"])
        bare_s = min(bare)
        per_step = {k: 1000 * best[k] / steps for k in ("loop", "step", "loader", "rest")}
        return {"bench": "loop", "model": str(c.model.name_or_path if c.model.init != "random" else
                                                  f"{cfg['bench']['loop_model']} (random init)"),
                "precision": str(c.precision.mixed_precision), "steps": steps, "batch_size": int(c.batch_size),
                "logging_steps": int(c.logging_steps), "tracking": "mlflow (sqlite)",
                "bare_steps_per_s": steps / bare_s, "loop_steps_per_s": steps / best["loop"],
                "loop_vs_bare": bare_s / best["loop"], "bare_ms_per_step": 1000 * bare_s / steps,
                "loop_ms_per_step": per_step, "evaluation_s_apart": best["evaluation"],
                "distinct_shapes_per_epoch": len(best["shapes"]),
                "padded_lengths": sorted({s[1] for s in best["shapes"]}),
                "rounds": {"loop_s": [r["loop"] for r in loops], "bare_s": bare}}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
