"""The training loop around the step (issue 41): no host read of a device value between log points -- on a GPU each
one waits for the device and costs as much as a step -- and few padded shapes an epoch. On a CPU the reads are
counted (``Tensor.item``, ``.cpu``, ``.tolist``, ``.numpy`` and the conversions ``int()``, ``float()``, ``bool()``)
at the GPU's cadence (``_check_every_step`` off, as on CUDA), with ``checkpoint_minutes`` set, as the notebook runs."""

from __future__ import annotations

import torch

from helpers import NO_DROPOUT


def _recipe(compose_train, synthetic, tmp_path, *overrides: str):
    from extractive_qa.recipe import TrainingRecipe

    cfg = compose_train("model=tiny", f"model.name_or_path={synthetic['model']}", f"data.dir={synthetic['data']}",
                        "data.limit_train=200", "data.limit_dev=8", "epochs=1", "batch_size=8", "predict_test=false",
                        "save_model=false", "tracking.system_metrics=false", *NO_DROPOUT, *overrides)
    return TrainingRecipe(cfg, tmp_path / "run")


def test_no_host_read_between_log_points(compose_train, synthetic, tmp_path, monkeypatch):
    recipe = _recipe(compose_train, synthetic, tmp_path, "logging_steps=10", "checkpoint_minutes=10",
                     "attention=sdpa")
    reads: list[tuple[int, str]] = []
    with recipe:
        recipe.setup()
        recipe._check_every_step = False  # the GPU's cadence: the non-finite check waits for a log point
        monkeypatch.setattr(recipe, "evaluate", lambda *a, **k: {})  # evaluation reads the device by design
        for name in ("item", "cpu", "tolist", "numpy", "__int__", "__float__", "__bool__", "__index__"):
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, _name=name, **kwargs):
                reads.append((recipe.progress.step, _name))
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        recipe.train()
        monkeypatch.undo()
        total = recipe.total_steps
    log_points = {s for s in range(total + 1) if s % 10 == 0} | {total}
    # A read "at step s" happens while step s+1 is computed (the step counter moves after the optimizer step).
    between = sorted({(s + 1, n) for s, n in reads if s + 1 not in log_points and s not in log_points})
    assert total >= 20 and not between, between[:20]
    assert any(s + 1 in log_points or s in log_points for s, _ in reads)  # the log points do read: the count works


def test_an_epoch_has_at_most_eight_padded_shapes(compose_train, synthetic, tmp_path):
    recipe = _recipe(compose_train, synthetic, tmp_path, "data.limit_train=600")
    with recipe:
        recipe.setup()
        shapes = {tuple(b["input_ids"].shape) for b in recipe.loader}
        lengths = {s[1] for s in shapes}
    assert len(recipe.padded_lengths) <= 7 and lengths <= set(recipe.padded_lengths)
    assert len(shapes) <= 8, shapes
