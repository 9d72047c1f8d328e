"""The training recipe: ``python -m extractive_qa.train [overrides]`` (Hydra; ``-m`` for sweeps).

Read top to bottom: data -> tokenizer and windows -> model, optimizer, scheduler -> the Accelerate
loop (logging train loss / accuracy / lr, evaluating dev EM / F1) -> the best model predicts dev and
test -> files in the run dir. Returns the best dev EM (what an Optuna sweep maximises).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batching import PadCollator, TrainWindowDataset
from .checkpointing import Interrupted, StopRequest, find_checkpoint, load_trainer_state, save_checkpoint
from .config import CONF_DIR, to_plain
from .datafiles import load_split
from .evaluation import MODEL_INPUTS, PostprocessSettings, predict, score
from .features import encode_cached, window_config
from .modeling import SetupError, keep_head_fp32, load_model, load_tokenizer, setup_message
from .outputs import nbest_json, write_json, write_jsonl, write_submission
from .report import data_report
from .tracking import start_tracking
from .windowing import eval_windows

log = logging.getLogger(__name__)


def make_accelerator(cfg: DictConfig):
    """A fresh Accelerator per job: Hydra runs ``-m`` jobs in one process, and Accelerate keeps one
    global state per process (a second job with another mixed_precision would raise)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    mixed = str(cfg.precision.mixed_precision)
    if mixed == "fp16" and not torch.cuda.is_available():
        raise SetupError("precision=fp16 needs a CUDA GPU (none found); on a CPU use precision=bf16 or precision=fp32")
    # Several processes and no GPU (torchrun, or `accelerate launch --multi_gpu` on a CPU machine):
    # Accelerate only forms a gloo process group over CPUs when told to use the CPU.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    from accelerate.utils import DataLoaderConfiguration

    # A seedable sampler makes each epoch's order a function of (seed, epoch): resuming mid-epoch
    # replays exactly the batches the interrupted run would have seen.
    return Accelerator(cpu=multi_cpu, mixed_precision=mixed,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
                       gradient_accumulation_steps=int(cfg.grad_accum_steps))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (BERT's recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def load_data_and_tokenizer(cfg: DictConfig, split_names: tuple[str, ...]):
    """The splits and the tokenizer, or one SetupError listing everything that could not be fetched."""
    errors, splits, tokenizer = [], {}, None
    for name in split_names:
        try:
            splits[name] = load_split(cfg.data, name)
        except SetupError as err:
            errors.append(err)
    try:
        tokenizer = load_tokenizer(cfg.model)
    except SetupError as err:
        errors.append(err)
    if errors:
        raise SetupError(setup_message(errors))
    return splits, tokenizer


def agree_on_run_dir(accelerator, run_dir: Path) -> Path:
    """Under ``accelerate launch`` every rank composes its own config and its own timestamped run dir;
    all ranks take the main process's, and the others' empty Hydra dirs are removed."""
    if accelerator.num_processes == 1:
        return run_dir
    from accelerate.utils import broadcast_object_list

    shared = Path(broadcast_object_list([str(run_dir)])[0])
    if shared != run_dir and not accelerator.is_main_process and run_dir.is_dir():
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    return shared


def run_dir_of_job() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def train(cfg: DictConfig, run_dir: Path) -> float:
    from accelerate.utils import set_seed
    from hydra.utils import instantiate

    started = time.time()
    set_seed(int(cfg.seed))
    accelerator = make_accelerator(cfg)
    is_main = accelerator.is_main_process
    run_dir = agree_on_run_dir(accelerator, run_dir)
    checkpoint = find_checkpoint(cfg.get("resume"), Path(cfg.paths.output_dir), str(cfg.experiment_name))
    resume_state = load_trainer_state(checkpoint) if checkpoint else None
    if resume_state:
        # Continue in the interrupted run's folder and MLflow run.
        run_dir = checkpoint.parent.parent
        if resume_state.get("mlflow_run_id") and "run_id" in cfg.tracking:
            cfg.tracking.run_id = resume_state["mlflow_run_id"]
        log.info("resuming from %s (step %d)", checkpoint, resume_state["step"])
    elif is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(to_plain(cfg)), run_dir / "config_resolved.yaml")

    # Data and tokenizer first: they fail fast (before any model download), all problems at once.
    splits, tokenizer = load_data_and_tokenizer(cfg, ("train", "dev", "test") if cfg.predict_test else ("train", "dev"))
    window = window_config(cfg.window)
    cache = Path(cfg.paths.cache_dir) if cfg.feature_cache else None
    enc = {s: encode_cached(ex, tokenizer, window, cache) for s, ex in splits.items()}
    dev_windows = eval_windows(enc["dev"], window)
    post = PostprocessSettings.from_cfg(cfg)
    report = data_report(splits["dev"], enc["dev"], dev_windows, window, tokenizer.unk_token_id,
                         post.max_answer_len, post.span_score)
    report["train_repairs"] = dict(splits["train"].repairs)

    tracker = start_tracking(cfg, run_dir, splits, is_main)
    with tracker, contextlib.ExitStack() as stack:
        tracker.log_dict(report, "data_report.json")
        train_set = TrainWindowDataset(enc["train"], window, int(cfg.seed))
        loader = DataLoader(train_set, batch_size=int(cfg.batch_size), shuffle=True, num_workers=int(cfg.num_workers),
                            collate_fn=PadCollator(tokenizer.pad_token_id or 0),
                            generator=torch.Generator().manual_seed(int(cfg.seed)))
        model = load_model(cfg.model)
        if cfg.get("compile"):
            model = torch.compile(model)
        optimizer = instantiate(cfg.optimizer)(parameter_groups(model, float(cfg.optimizer.weight_decay)))
        steps_per_epoch = math.ceil(len(loader) / int(cfg.grad_accum_steps))
        total_steps = steps_per_epoch * int(cfg.epochs)
        if cfg.max_steps:
            total_steps = min(total_steps, int(cfg.max_steps))
        scheduler = instantiate(cfg.scheduler)(optimizer=optimizer, num_warmup_steps=int(float(cfg.warmup_ratio) * total_steps),
                                               num_training_steps=total_steps)
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        log.info("%d training windows, %d optimizer steps (%d per epoch), %d dev windows, %d process(es)",
                 len(train_set), total_steps, steps_per_epoch, len(dev_windows), accelerator.num_processes)

        best = {"em": -1.0}
        best_dir = run_dir / "best_model"

        def evaluate_dev(step: int, epoch: float) -> None:
            preds = predict(model, enc["dev"], dev_windows, post, int(cfg.eval_batch_size), accelerator, "dev")
            metrics, rows = score(preds, enc["dev"])
            tracker.log_metrics({f"dev/{k}": v for k, v in metrics.items()} | {"epoch": epoch}, step)
            log.info("step %d (epoch %.2f): dev EM %.4f F1 %.4f", step, epoch, metrics["em"], metrics["f1"])
            if metrics["em"] > best["em"]:
                best.update(metrics, step=step, epoch=epoch)
                if is_main:
                    write_jsonl(run_dir / "dev_predictions.jsonl", rows)
                    write_json(run_dir / "dev_nbest.json", nbest_json(preds))
                    if cfg.save_model or cfg.predict_test:
                        unwrapped = accelerator.unwrap_model(model)
                        unwrapped.save_pretrained(best_dir, safe_serialization=True)
                        tokenizer.save_pretrained(best_dir)
                accelerator.wait_for_everyone()

        step, start_epoch, skip = 0, 0, 0
        if resume_state:
            accelerator.load_state(str(checkpoint))
            step, start_epoch, skip = resume_state["step"], resume_state["epoch"], resume_state["batches_done"]
            best.update(resume_state["best"])

        def save(epoch: int, batches_done: int) -> Path:
            state = {"step": step, "epoch": epoch, "batches_done": batches_done, "best": best,
                     "mlflow_run_id": getattr(tracker, "run_id", None), "experiment_name": str(cfg.experiment_name)}
            return save_checkpoint(accelerator, run_dir, state, int(cfg.keep_checkpoints))

        window_loss, window_acc, window_n = 0.0, 0.0, 0
        tokens_seen, t_log = 0, time.time()
        model.train()
        stop = stack.enter_context(StopRequest())
        for epoch in range(start_epoch, int(cfg.epochs)):
            train_set.set_epoch(epoch)
            loader.set_epoch(epoch)
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not accelerator.is_local_main_process,
                       mininterval=2, initial=skip, total=len(loader))
            for batch_no, batch in enumerate(bar, start=skip + 1):
                with accelerator.accumulate(model):
                    out = model(**{k: batch[k] for k in MODEL_INPUTS}, start_positions=batch["start_positions"],
                                end_positions=batch["end_positions"])
                    loss = out.loss
                    if not torch.isfinite(loss):
                        hint = " (fp16 overflow? try precision=bf16 or precision=fp32)" if cfg.precision.mixed_precision == "fp16" else ""
                        raise FloatingPointError(f"non-finite training loss {loss.item()} at step {step}{hint}; "
                                                 "no checkpoint was written from this state")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), float(cfg.max_grad_norm))
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                right = (out.start_logits.argmax(-1) == batch["start_positions"]) & (out.end_logits.argmax(-1) == batch["end_positions"])
                window_loss += loss.item()
                window_acc += right.float().mean().item()
                window_n += 1
                tokens_seen += int(batch["attention_mask"].sum())
                if not accelerator.sync_gradients:
                    continue
                step += 1
                if step % int(cfg.logging_steps) == 0 or step == total_steps:
                    elapsed = max(time.time() - t_log, 1e-9)
                    tracker.log_metrics({"train/loss": window_loss / window_n, "train/acc": window_acc / window_n,
                                         "train/lr": scheduler.get_last_lr()[0], "train/tokens_per_s": tokens_seen / elapsed,
                                         "epoch": epoch + batch_no / len(loader)}, step)
                    bar.set_postfix(loss=f"{window_loss / window_n:.3f}", acc=f"{window_acc / window_n:.3f}")
                    window_loss, window_acc, window_n, tokens_seen, t_log = 0.0, 0.0, 0, 0, time.time()
                if cfg.eval_steps and step % int(cfg.eval_steps) == 0:
                    evaluate_dev(step, epoch + batch_no / len(loader))
                if cfg.checkpoint_steps and step % int(cfg.checkpoint_steps) == 0 and step < total_steps:
                    save(epoch, batch_no)
                if stop.agreed(accelerator):
                    raise Interrupted(save(epoch, batch_no), step)
                if step >= total_steps:
                    break
            skip = 0
            if not cfg.eval_steps or step % int(cfg.eval_steps) != 0:
                evaluate_dev(step, epoch + 1.0)
            if cfg.checkpoint_steps:
                save(epoch + 1, 0)
            if step >= total_steps:
                break

        summary = {"best_dev_em": best["em"], "best_dev_f1": best.get("f1"), "best_dev_em_cmrc": best.get("em_cmrc"),
                   "best_dev_f1_cmrc": best.get("f1_cmrc"), "best_step": best.get("step"), "best_epoch": best.get("epoch"),
                   "steps": step, "train_windows": len(train_set), "wall_time_s": None}
        if cfg.predict_test:
            # Every process predicts its shard with the best model (as saved, so exactly what
            # `make predict` loads); the main process writes the files.
            from transformers import AutoModelForQuestionAnswering

            best_model = keep_head_fp32(AutoModelForQuestionAnswering.from_pretrained(best_dir)).to(accelerator.device)
            test_windows = eval_windows(enc["test"], window)
            preds = predict(best_model, enc["test"], test_windows, post, int(cfg.eval_batch_size), accelerator, "test")
            if is_main:
                write_submission(run_dir / "test_predictions.csv", enc["test"].examples, preds, bool(cfg.csv_strip_commas))
                write_json(run_dir / "test_nbest.json", nbest_json(preds))
            summary["test_questions"] = len(preds)
        if not cfg.save_model and is_main and best_dir.exists():
            import shutil

            shutil.rmtree(best_dir)
        summary["wall_time_s"] = time.time() - started
        if is_main:
            write_json(run_dir / "metrics.json", summary)
            tracker.log_metrics({"best/dev_em": best["em"], "best/dev_f1": best.get("f1", 0.0),
                                 "wall_time_s": summary["wall_time_s"]}, step)
            tracker.log_run_files(run_dir)
        log.info("done in %.0fs: best dev EM %.4f (step %s); outputs in %s", summary["wall_time_s"], best["em"],
                 best.get("step"), run_dir)
    return float(best["em"])


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    run_dir = run_dir_of_job()
    try:
        return train(cfg, run_dir)
    except SetupError as err:
        msg = str(err)
        print(msg if msg.startswith("error: ") else setup_message([err]), file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)
    except Interrupted as stopped:
        print(f"stopped: {stopped}. The MLflow run is marked KILLED. Resume with the same command plus "
              f"resume={stopped.checkpoint.parent.parent}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
