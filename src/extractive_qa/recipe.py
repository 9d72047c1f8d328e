"""The training recipe: everything ``python -m extractive_qa.train`` runs for one job, as a library that the
entry point (``train.py``), the bench (``benchmarks/``) and the tests share.

Read it top to bottom. :meth:`TrainingRecipe.setup` builds everything in a fixed order -- the
Accelerator, the checkpoint to resume, data and tokenizer, windows, tracking, model, optimizer and
schedule; :meth:`~TrainingRecipe.train` is the loop (a loss step, then logging, evaluation and
checkpointing when due); :meth:`~TrainingRecipe.finish` predicts the test split with the best model
and writes the run's files. What the phases share is the recipe's attributes, and where training
stands is one :class:`Progress`, saved whole in every checkpoint. :func:`train` returns the best dev
score by ``optimize_metric`` (what an Optuna sweep maximises).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .core.analysis import data_report
from .core.config import save_resolved
from .core.errors import SetupError
from .core.features import encode_cached, window_config
from .core.metrics import METRIC_LABELS, METRICS, check_metric
from .core.outputs import nbest_json, write_json, write_jsonl, write_submission
from .core.postprocess import PostprocessSettings
from .core.runs import RunPruned, read_run_record, this_process, update_run_record
from .core.windowing import eval_windows
from .engine.attention import attention_kernel, use_attention
from .engine.batching import TrainWindowDataset, pad_multiple, train_buckets, train_loader
from .engine.checkpointing import (
    Interrupted,
    StopRequest,
    recover_model_folder,
    save_checkpoint,
    save_model_folder,
)
from .engine.evaluation import OOM_ERRORS, EvaluationStopped, TokenBudget, model_inputs, predict, score
from .engine.modeling import load_model, load_qa_model
from .engine.resume import (
    AlreadyFinished,
    ResumeError,
    ResumePoint,
    check_rng_state,
    find_resume_point,
    run_identity,
)
from .engine.setup import (
    agree_on_run_dir,
    load_data_and_tokenizer,
    make_accelerator,
    move_job_log,
    parameter_groups,
    remove_if_only_logs,
)
from .tracking.base import Tracker
from .tracking.start import start_tracking
from .tracking.store import TrackingUnavailable
from .tracking.study import TrialLink
from .tracking.summary import comparison_metrics
from .tracking.sweep import sweep_of_job

log = logging.getLogger(__name__)

# Several processes agree on "stop now?" and "checkpoint now?" every this many steps, not at every step: each
# agreement is a collective and a host read, which on a GPU costs as much as the step itself. One process decides
# at every step without either (engine/checkpointing.py: StopRequest.agreed).
AGREE_EVERY = 10


def _rng_state() -> tuple:
    return torch.random.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_state(state: tuple) -> None:
    """Undo the draws of a step that ran out of memory (dropout), so its retry draws exactly what a run
    started with the smaller micro-batch would."""
    torch.random.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


@dataclass
class Progress:
    """Where training stands: saved whole in every checkpoint, restored whole on resume."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch in progress
    batches_done: int = 0  # batches of that epoch already trained on
    best: dict = field(default_factory=dict)  # dev metrics of the best evaluation (by optimize_metric), step, epoch
    wall_time_s: float = 0.0  # seconds trained before the last checkpoint, over every resumed part
    micro_batch: int | None = None  # windows per forward pass after out-of-memory halving (None: batch_size)
    evals_since_best: int = 0  # evaluations in a row without an improvement of early_stopping.min_delta
    stopped_early_at: int | None = None  # the step early stopping ended training at

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        return cls(step=state["step"], epoch=state["epoch"], batches_done=state["batches_done"],
                   best=dict(state["best"]), wall_time_s=float(state.get("wall_time_s", 0.0)),
                   evals_since_best=int(state.get("evals_since_best", 0)),
                   stopped_early_at=state.get("stopped_early_at"),
                   micro_batch=state.get("micro_batch"))


@dataclass
class LogWindow:
    """Running sums between two ``train/*`` log points, weighted by windows (a small last batch of an
    epoch counts for what it holds, not as much as a full one)."""

    first_step: int = 0  # the optimizer step this window starts after
    loss: float = 0.0
    acc: float = 0.0
    windows: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.time)

    def add(self, loss: float, acc: float, windows: int, tokens: int) -> None:
        """A batch's mean loss and accuracy over its ``windows``."""
        self.add_sums(loss * windows, acc * windows, windows, tokens)

    def add_sums(self, loss_sum, acc_sum, windows: int, tokens) -> None:
        """Window-weighted sums -- numbers, or tensors left on the device until :meth:`metrics` reads them."""
        self.loss, self.acc = self.loss + loss_sum, self.acc + acc_sum
        self.windows, self.tokens = self.windows + windows, self.tokens + tokens

    def metrics(self) -> dict[str, float]:
        elapsed = max(time.time() - self.started, 1e-9)
        return {"train/loss": float(self.loss) / self.windows, "train/acc": float(self.acc) / self.windows,
                "train/tokens_per_s": float(self.tokens) / elapsed}


class TrainingRecipe:
    """One training job. Use as a context manager: leaving it ends the tracker's run with a true status
    (FINISHED, FAILED on an exception, KILLED on an interrupt) and restores signal handlers."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self.epochs, self.batch_size, self.grad_accum = int(cfg.epochs), int(cfg.batch_size), int(cfg.grad_accum_steps)
        self.logging_steps, self.eval_steps = int(cfg.logging_steps), int(cfg.eval_steps or 0)
        self.checkpoint_steps = int(cfg.checkpoint_steps or 0)
        self.optimize_metric = check_metric(str(cfg.get("optimize_metric") or "em"))
        self.progress = Progress()
        self.is_main = True  # this process writes the run's files (set from the Accelerator in setup())
        self.sweep = sweep_of_job()  # the sweep this job belongs to (None for a single run)
        self.hydra_dir: Path | None = None  # Hydra's own job dir when the job continues another run's dir
        self.tracker: Tracker = Tracker()
        self._first_bad_step: torch.Tensor | None = None  # the first step with a non-finite loss, on the device
        # Padded tokens per evaluation batch: halved for good if evaluation runs out of memory.
        self.eval_budget = TokenBudget(cfg.get("eval_batch_tokens", "auto"))
        self._eval_halvings_recorded = 0
        self.attention = str(cfg.get("attention") or "auto")  # the kernel setting (engine/attention.py)
        self.pad_multiple = pad_multiple(cfg.get("pad_to_multiple_of", "auto"), bool(cfg.get("compile")))
        self._started, self._wall_before = time.time(), 0.0
        self._last_checkpoint_time = time.monotonic()
        self._last_eval: dict[str, float] = {}
        self.trial = TrialLink.from_cfg(cfg.get("search"))  # an Optuna trial this job reports to (sweeper)
        self._exit = ExitStack()

    def __enter__(self) -> TrainingRecipe:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and self.tracker.run_id is None and self.sweep is not None:
            self._record_failed_start(exc_type, exc)
        return self._exit.__exit__(exc_type, exc, tb)

    def _record_failed_start(self, exc_type, exc) -> None:
        """A sweep job that fails before its tracking started (missing data, a refused precision) still
        gets its MLflow run, FAILED with the cause, so the sweep's parent shows every job."""
        if issubclass(exc_type, (AlreadyFinished, ResumeError, TrackingUnavailable, KeyboardInterrupt)):
            return
        if not getattr(self, "is_main", True):
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.tracker = self._exit.enter_context(start_tracking(self.cfg, self.run_dir, True, sweep=self.sweep))
        except Exception as err:  # noqa: BLE001 - the job's own error is what gets reported
            log.warning("could not record the failed job in MLflow: %s", err)

    def continue_log_in(self, run_dir: Path) -> None:
        """This job continues (or reports) ``run_dir``: its log goes on in that run's ``train.log``, and
        Hydra's new job folder, which then holds nothing else, is removed when the job ends."""
        job_dir = self.hydra_dir or self.run_dir
        if self.is_main and job_dir.resolve() != run_dir.resolve():
            move_job_log(job_dir, run_dir)
            self._exit.callback(remove_if_only_logs, job_dir)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        """Build everything, in this order: signal handling -> seed -> Accelerator (precision from the
        hardware) -> data and tokenizer (fail fast, every problem at once, before any model download) ->
        the run to continue, if any -> tracking -> windows, loader, model, optimizer, schedule -> the
        resumed state. A stop request during all this ends the run KILLED at the next boundary."""
        from accelerate.utils import set_seed

        self._stop = self._exit.enter_context(StopRequest())
        set_seed(int(self.cfg.seed))
        self.accelerator = make_accelerator(self.cfg)
        self.is_main = self.accelerator.is_main_process
        # The auto budget depends on the precision the Accelerator settled on (engine/hardware.py).
        self.eval_budget = TokenBudget(self.cfg.get("eval_batch_tokens", "auto"), self.accelerator.mixed_precision)
        # Reading a loss on the host waits for the device; on a CPU there is nothing to wait for.
        self._check_every_step = self.accelerator.device.type == "cpu"
        self.run_dir = agree_on_run_dir(self.accelerator, self.run_dir)
        split_names = ("train", "dev", "test") if self.cfg.predict_test else ("train", "dev")
        self.splits, self.tokenizer, self.model_source = load_data_and_tokenizer(self.cfg, split_names, with_model=True)
        with open_dict(self.cfg):  # which weights, recorded with the run (config_resolved.yaml, params, run.json)
            self.cfg.model.commit = self.model_source.commit
        resume = self._setup_resume()
        self.tracker = self._exit.enter_context(self._setup_tracking(resume))
        self._stop.check("start-up")
        self._setup_features()
        self._setup_training()
        if resume is not None:
            self._restore(resume)
        self.tracker.log_inputs(self.splits)
        self.tracker.log_dict(self.data_report, "data_report.json")
        self._record_runtime()
        self._stop.check("start-up")
        log.info("%d training windows, %d optimizer steps (%d per epoch), %d dev windows, %d process(es)",
                 len(self.train_set), self.total_steps, self.steps_per_epoch, len(self.dev_windows),
                 self.accelerator.num_processes)

    def _setup_training(self) -> None:
        """The loader, model, optimizer and schedule, prepared by Accelerate (also what ``make bench`` times)."""
        self.train_set, loader = self._setup_train_loader()
        model = self._setup_model()
        optimizer = instantiate(self.cfg.optimizer)(parameter_groups(model, float(self.cfg.optimizer.weight_decay)))
        scheduler = self._setup_scheduler(optimizer, len(loader))
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(model, optimizer, loader,
                                                                                           scheduler)

    def _record_runtime(self) -> None:
        """What this run chose on this machine for its speed -- kernels, padded lengths, batch budget, loader,
        compile -- as MLflow tags ``runtime.*`` and ``runtime`` in ``run.json``: what a timing is read against."""
        device = self.accelerator.device.type
        base = self.accelerator.unwrap_model(self.model)
        runtime = {"device": str(self.accelerator.device), "precision": str(self.accelerator.mixed_precision),
                   "attention_train": str(getattr(base.config, "_attn_implementation", "?")),
                   "attention_eval": attention_kernel(self.attention, device, training=False),
                   "compile": bool(self.cfg.get("compile")), "pad_multiple": self.pad_multiple,
                   "padded_lengths": self.padded_lengths, "eval_batch_tokens": self.eval_budget.tokens,
                   "num_workers": int(self.cfg.num_workers), "pin_memory": device == "cuda",
                   "threads": torch.get_num_threads()}
        self.tracker.set_tags({f"runtime.{k}": str(v) for k, v in runtime.items()})
        if self.is_main:
            update_run_record(self.run_dir, runtime=runtime)

    def _setup_resume(self) -> ResumePoint | None:
        """The run this job continues (its run dir, checkpoint and MLflow run), else a fresh run dir with
        its ``config_resolved.yaml`` and ``run.json``. Raises :class:`AlreadyFinished` for a finished run."""
        cfg = self.cfg
        digests = {s: self.splits[s].digest for s in ("train", "dev")}
        self.identity = run_identity(cfg, digests, self.accelerator.num_processes, self.sweep)
        point = find_resume_point(cfg.get("resume"), Path(cfg.paths.output_dir), self.identity, self.run_dir,
                                  in_sweep=self.sweep is not None, allow_changes=bool(cfg.get("resume_allow_changes")))
        if point is not None:
            self.hydra_dir, self.run_dir = self.run_dir, point.run_dir
            log.info("resuming %s from %s (step %d)", point.run_dir, point.checkpoint.name, point.state["step"])
            self.continue_log_in(point.run_dir)
        elif self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_resolved(cfg, self.run_dir / "config_resolved.yaml")
            update_run_record(self.run_dir, identity=self.identity, experiment=str(cfg.experiment_name),
                              status="RUNNING", sweep=self.sweep, process=this_process(), heartbeat=None,
                              model={"name_or_path": str(cfg.model.name_or_path), "commit": self.model_source.commit})
        return point

    def _setup_tracking(self, resume: ResumePoint | None) -> Tracker:
        run_id = resume.state.get("mlflow_run_id") if resume else None
        tracker = start_tracking(self.cfg, self.run_dir, self.is_main, run_id, resumed=resume is not None,
                                 sweep=self.sweep)
        if self.is_main and resume is None:
            update_run_record(self.run_dir, mlflow_run_id=tracker.run_id, run_name=tracker.run_name)
        return tracker

    def _restore(self, resume: ResumePoint) -> None:
        """Model, optimizer, schedule and RNG states from the checkpoint, then the progress; only now is
        the run marked RUNNING again (a resume that fails before this leaves its status alone)."""
        if self.is_main:
            recover_model_folder(self.best_dir)  # a kill while the best model was swapped in
        check_rng_state(resume.checkpoint, self.accelerator.process_index)
        self.accelerator.load_state(str(resume.checkpoint))
        self.progress = Progress.from_state(resume.state)
        self._wall_before = self.progress.wall_time_s
        self.tracker.reopen()
        self.tracker.rewind(self.progress.step)
        if resume.changes:
            log.warning("continuing %s with a changed config (resume_allow_changes=true):\n  %s", resume.run_dir,
                        "\n  ".join(resume.changes))
            self.tracker.set_tags({f"resume.changed_at_step_{self.progress.step}": "; ".join(resume.changes)})
            if self.is_main:
                save_resolved(self.cfg, self.run_dir / "config_resolved.yaml")

    def _setup_features(self) -> None:
        """Tokenized features (cached), dev windows, post-processing settings and the dev data report."""
        cfg = self.cfg
        self.window = window_config(cfg.window)
        cache = Path(cfg.paths.cache_dir) if cfg.feature_cache else None
        # Training needs its labels' token spans, not character offsets: they are kept for dev and test only.
        self.encoded = {s: encode_cached(ex, self.tokenizer, self.window, cache, offsets=s != "train")
                        for s, ex in self.splits.items()}
        self.dev_windows = eval_windows(self.encoded["dev"], self.window)
        self.post = PostprocessSettings.from_cfg(cfg)
        self.data_report = data_report(self.splits["dev"], self.encoded["dev"], self.dev_windows, self.window,
                                       self.tokenizer.unk_token_id, self.post)
        self.data_report["train_repairs"] = dict(self.splits["train"].repairs)

    def _setup_train_loader(self) -> tuple[TrainWindowDataset, DataLoader]:
        """Batches of one optimizer step each (``batch_size x grad_accum_steps`` windows, split by the step into
        micro-batches): the data order then depends on the windows per step alone, not on how a step is
        split -- which out-of-memory halving changes."""
        train_set = TrainWindowDataset(self.encoded["train"], self.window, int(self.cfg.seed))
        step_windows = self.batch_size * self.grad_accum
        setting = self.cfg.get("length_buckets", "auto")
        k = 7 if setting in (None, "auto") else int(setting)  # 7 lengths: 8 shapes with the epoch's last, smaller batch
        # A few padded lengths, chosen from the data: each new shape costs a GPU a kernel choice and a compiled model a
        # recompile (engine/batching.py: length_buckets says what it costs in padding).
        self.padded_lengths = train_buckets(train_set, step_windows, k, self.pad_multiple) if \
            self.cfg.group_by_length else None
        if self.padded_lengths:
            log.info("training batches pad to %d lengths: %s", len(self.padded_lengths), self.padded_lengths)
        return train_set, train_loader(train_set, step_windows, self.tokenizer.pad_token_id or 0,
                                       group_by_length=bool(self.cfg.group_by_length),
                                       num_workers=int(self.cfg.num_workers), multiple_of=self.pad_multiple,
                                       pin_memory=self.accelerator.device.type == "cuda", buckets=self.padded_lengths)

    def _setup_model(self) -> torch.nn.Module:
        """The model, running the attention kernel measured fastest for training on this device (evaluation
        switches to its own: :mod:`~extractive_qa.engine.attention`), compiled when ``compile`` says so."""
        model = load_model(self.cfg.model, self.model_source)
        compiled = bool(self.cfg.get("compile"))
        setting = str(self.cfg.get("attention") or "auto")
        # A compiled graph is traced for one kernel: switching it at each evaluation would compile it again.
        self.attention = "sdpa" if compiled and setting == "auto" else setting
        device = self.accelerator.device.type
        use_attention(model, attention_kernel(self.attention, device, training=True))
        log.info("attention: %s for training, %s for evaluation (attention=%s on %s)",
                 model.config._attn_implementation, attention_kernel(self.attention, device, training=False),
                 self.attention, device)
        return torch.compile(model) if compiled else model

    def _setup_scheduler(self, optimizer, batches_per_epoch: int):
        """The learning-rate schedule over the run's optimizer steps (``max_steps`` caps them)."""
        self.steps_per_epoch = batches_per_epoch  # a loader batch is one optimizer step
        self.total_steps = self.steps_per_epoch * self.epochs
        if self.cfg.max_steps:
            self.total_steps = min(self.total_steps, int(self.cfg.max_steps))
        warmup = int(float(self.cfg.warmup_ratio) * self.total_steps)
        return instantiate(self.cfg.scheduler)(optimizer=optimizer, num_warmup_steps=warmup,
                                                       num_training_steps=self.total_steps)

    # ---------------------------------------------------------------- the loop
    def train(self) -> None:
        """Epochs from where :attr:`progress` stands to the end (``max_steps`` may stop earlier).
        SIGINT / SIGTERM stop after the current optimizer step or evaluation batch, with a checkpoint."""
        self._log_window = LogWindow(first_step=self.progress.step)
        self.model.train()
        self._last_checkpoint_time = time.monotonic()
        try:
            for epoch in range(self.progress.epoch, self.epochs):
                self._train_epoch(epoch)
                if self.progress.step >= self.total_steps:
                    break
        except StopEarly:
            self._stopped_early()

    def _train_epoch(self, epoch: int) -> None:
        p, skip = self.progress, self.progress.batches_done
        self.train_set.set_epoch(epoch)
        self.loader.set_epoch(epoch)
        batches = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{self.epochs}", disable=not self.accelerator.is_local_main_process,
                   mininterval=2, initial=skip, total=len(self.loader))
        for batch_no, batch in enumerate(bar, start=skip + 1):
            self._optimizer_step(batch)
            p.step, p.epoch, p.batches_done = p.step + 1, epoch, batch_no
            if self._check_every_step:
                self._check_finite()
            epoch_fraction = epoch + batch_no / len(self.loader)
            self._maybe_log(epoch_fraction, bar)
            if self.eval_steps and p.step % self.eval_steps == 0:
                self.evaluate(epoch_fraction)
                self._maybe_stop(epoch_fraction)
            if p.step < self.total_steps and ((self.checkpoint_steps and p.step % self.checkpoint_steps == 0)
                                              or self._checkpoint_time_due()):
                self._save()
            if self._stop.agreed(self.accelerator, p.step, AGREE_EVERY):
                raise Interrupted(self._save(), p.step)
            if p.step >= self.total_steps:
                break
        # Every epoch ends with a dev evaluation (unless one just ran) and, when checkpointing, a checkpoint.
        p.batches_done = len(self.loader)  # resuming from here re-runs only this evaluation
        if not self.eval_steps or p.step % self.eval_steps != 0:
            self.evaluate(epoch + 1.0)
            self._maybe_stop(epoch + 1.0)
        p.epoch, p.batches_done = epoch + 1, 0
        if self.checkpoint_steps:
            self._save()
        if self._stop.agreed(self.accelerator):
            raise Interrupted(self._save(), p.step)

    def _checkpoint_time_due(self) -> bool:
        """``checkpoint_minutes``: a checkpoint when that much training time passed since the last one (on the
        step boundary, as every checkpoint). One process reads its clock; several agree on it every
        :data:`AGREE_EVERY` steps -- a collective and a host read at every step cost as much as a GPU step."""
        minutes = self.cfg.get("checkpoint_minutes")
        if not minutes:
            return False
        due = time.monotonic() - self._last_checkpoint_time >= 60 * float(minutes)
        if self.accelerator.num_processes == 1:
            return due
        if self.progress.step % AGREE_EVERY:
            return False
        flag = torch.tensor(float(due), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="max").item())

    def _maybe_stop(self, epoch_fraction: float) -> None:
        """After an evaluation: an Optuna trial reports it and may be pruned (:class:`RunPruned`); early stopping
        ends training when ``patience`` evaluations in a row brought less than ``min_delta``."""
        p = self.progress
        value = float(self._last_eval.get(self.optimize_metric, 0.0))
        if self.trial is not None and self.trial.report(value, p.step):
            raise RunPruned(p.step, value)
        patience = (self.cfg.get("early_stopping") or {}).get("patience")
        if patience and p.evals_since_best >= int(patience) and p.step < self.total_steps:
            raise StopEarly()

    def _stopped_early(self) -> None:
        p = self.progress
        p.stopped_early_at = p.step
        rule = self.cfg.early_stopping
        stop = {"step": p.step, "evaluations_without_improvement": p.evals_since_best,
                "patience": int(rule.patience), "min_delta": float(rule.min_delta)}
        log.info("early stopping at step %d: %d evaluations without an improvement of %g in %s", p.step,
                 p.evals_since_best, stop["min_delta"], self.optimize_metric)
        if self.is_main:
            update_run_record(self.run_dir, early_stopped=stop)
        self.tracker.set_tags({"early_stopped_at_step": str(p.step),
                               "early_stopping": f"patience {stop['patience']}, min_delta {stop['min_delta']}"})
        if self.checkpoint_steps or self.cfg.get("checkpoint_minutes"):
            self._save()  # the usual checkpoint: a resume finds the run stopped where it stopped

    def _optimizer_step(self, batch: dict) -> None:
        """One optimizer step over ``batch`` (``batch_size x grad_accum_steps`` windows): forward and backward in
        micro-batches of :attr:`Progress.micro_batch` windows, their losses weighted by their windows, then
        clipping, the optimizer and the schedule. Out of GPU memory, the micro-batch is halved and the step
        redone from the same state (same RNG draws): see :meth:`_halve_micro_batch`."""
        rng = _rng_state()
        while True:
            try:
                sums = self._forward_backward(batch)
                break
            except OOM_ERRORS:
                self.optimizer.zero_grad(set_to_none=True)
                self._halve_micro_batch()
                _set_rng_state(rng)
        self._log_window.add_sums(*sums)
        if self.cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), float(self.cfg.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()

    def _forward_backward(self, batch: dict) -> tuple:
        """Gradients of ``batch``'s mean loss, accumulated over micro-batches; the window-weighted sums of loss
        and span accuracy, the windows and the tokens, left on the device (read at log points, not per step)."""
        total = len(batch["input_ids"])
        size = self.progress.micro_batch or self.batch_size
        chunks = [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, total, size)]
        loss_sum = acc_sum = tokens = 0
        for n, chunk in enumerate(chunks):
            last = n == len(chunks) - 1
            # Gradients are exchanged between processes once, after the last micro-batch.
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
                loss, right = self._micro_step(chunk, len(chunk["input_ids"]) / total)
            windows = len(right)
            loss_sum = loss_sum + loss * windows
            acc_sum = acc_sum + right.float().sum()
            tokens = tokens + chunk["attention_mask"].sum()
        return loss_sum, acc_sum, total, tokens

    def _micro_step(self, chunk: dict, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of one micro-batch, its loss weighted by its share of the step's windows; the
        (detached) mean loss and which windows had both span ends right. A non-finite loss is recorded on the
        device at the step that made it (:meth:`_check_finite` reads it)."""
        out = self.model(**model_inputs(chunk), start_positions=chunk["start_positions"],
                         end_positions=chunk["end_positions"])
        loss = out.loss
        self._note_finite(loss)
        self.accelerator.backward(loss * weight)
        right = (out.start_logits.argmax(-1) == chunk["start_positions"]) & (out.end_logits.argmax(-1) ==
                                                                              chunk["end_positions"])
        return loss.detach(), right

    def _note_finite(self, loss: torch.Tensor) -> None:
        """Record, without a host sync, the first step whose loss was not finite."""
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = torch.full((), self.progress.step + 1, dtype=torch.long, device=loss.device)
        unseen = (~torch.isfinite(loss)) & (self._first_bad_step < 0)
        self._first_bad_step = torch.where(unseen, step, self._first_bad_step)

    def _check_finite(self) -> None:
        """Stop with a clear error when a step's loss was not finite (read from the device: a host sync). Called
        after every step where that costs nothing (CPU), else at log points and before every evaluation and
        checkpoint -- so nothing is ever evaluated, kept or saved from a non-finite state."""
        if self._first_bad_step is None or int(self._first_bad_step) < 0:
            return
        hint = (" (fp16 overflow? try precision=bf16 or precision=fp32)"
                if self.cfg.precision.mixed_precision == "fp16" else "")
        raise FloatingPointError(f"non-finite training loss at step {int(self._first_bad_step)}{hint}; "
                                 "no checkpoint was written from this state")

    def _halve_micro_batch(self) -> None:
        """Out of GPU memory: half the windows per micro-batch, twice the micro-batches per step -- the same
        windows per optimizer step, so the same schedule and trajectory -- recorded with the run and saved
        in checkpoints. At one window per micro-batch there is nothing smaller: one error says what to do."""
        import gc

        old = self.progress.micro_batch or self.batch_size
        if old <= 1:
            raise SetupError(f"out of GPU memory at step {self.progress.step + 1} even with one window per micro-batch "
                             f"({self.window.max_total_len()} tokens). Fix: shorter windows (window.max_seq_len=256), "
                             "precision=bf16 or fp16, a smaller model, or a larger GPU.")
        new = max(1, old // 2)
        self.progress.micro_batch = new
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        change = f"{old} -> {new} windows per micro-batch at step {self.progress.step + 1}"
        log.warning("out of GPU memory: %s (%d micro-batches per optimizer step: the same %d windows per step, so "
                    "the same training); recorded in the run", change, -(-self.batch_size * self.grad_accum // new),
                    self.batch_size * self.grad_accum)
        self._record_fallback("micro_batch", change)

    def _record_fallback(self, what: str, change: str) -> None:
        """An out-of-memory fallback, as a tag of the tracker's run and in ``run.json`` (``oom_fallback``)."""
        self.tracker.set_tags({f"oom.{what}": change})
        if self.is_main:
            record = read_run_record(self.run_dir) or {}
            update_run_record(self.run_dir, oom_fallback=[*record.get("oom_fallback", []), f"{what}: {change}"])

    def _maybe_log(self, epoch_fraction: float, bar) -> None:
        """``train/*`` every ``logging_steps`` steps: means over the windows of those steps. The last, partial
        window is logged at the final step when it spans at least half of ``logging_steps``; a shorter
        tail is not a point of its own (a mean over a step or two is noise that reads like divergence)."""
        step, window = self.progress.step, self._log_window
        if step % self.logging_steps != 0 and step != self.total_steps:
            return
        self._check_finite()
        if step % self.logging_steps != 0 and 2 * (step - window.first_step) < self.logging_steps:
            return
        metrics = window.metrics()
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # a host-side counter: no device sync
            metrics["train/gpu_peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        self.tracker.log_metrics({**metrics, "train/lr": self.scheduler.get_last_lr()[0], "epoch": epoch_fraction},
                                 step)
        bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", acc=f"{metrics['train/acc']:.3f}")
        self._log_window = LogWindow(first_step=step)
        if self.is_main:  # alive at this step: what a reader of a run whose process vanished is told
            update_run_record(self.run_dir, heartbeat=f"{time.strftime('%Y-%m-%dT%H:%M:%S')} (step {step})")

    def _save(self) -> Path:
        """A checkpoint of where :attr:`progress` stands, with the run's identity and MLflow run."""
        self._check_finite()
        self.tracker.flush()  # the background writer's queue: what the checkpoint covers is in the store
        self.progress.wall_time_s = self._wall_time()
        state = {**asdict(self.progress), "mlflow_run_id": self.tracker.run_id,
                 "experiment_name": str(self.cfg.experiment_name), "identity": self.identity}
        saved = save_checkpoint(self.accelerator, self.run_dir, state, int(self.cfg.keep_checkpoints))
        self._last_checkpoint_time = time.monotonic()
        return saved

    def _wall_time(self) -> float:
        """Seconds this run has trained, over every resumed part."""
        return self._wall_before + time.time() - self._started

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, epoch_fraction: float) -> dict[str, float]:
        """Dev scores now; a new best (by ``optimize_metric``) keeps its predictions and the model (``best_model/``)."""
        self._check_finite()
        p = self.progress
        try:
            preds = predict(self.model, self.encoded["dev"], self.dev_windows, self.post, self.eval_budget,
                            self.accelerator, "dev", stop=self._stop, attention=self.attention,
                            pad_multiple=self.pad_multiple)
        except EvaluationStopped:
            raise Interrupted(self._save(), p.step, "evaluation") from None
        halvings = len(self.eval_budget.halvings)
        if halvings > self._eval_halvings_recorded:
            self._record_fallback("eval_batch_tokens", ", ".join(self.eval_budget.halvings) + f" at step {p.step}")
            self._eval_halvings_recorded = halvings
        metrics, rows = score(preds, self.encoded["dev"])
        self.tracker.log_metrics({f"dev/{k}": v for k, v in metrics.items()} | {"epoch": epoch_fraction}, p.step)
        log.info("step %d (epoch %.2f): dev EM %.4f F1 %.4f", p.step, epoch_fraction, metrics["em"], metrics["f1"])
        self._last_eval = metrics
        before = p.best.get(self.optimize_metric)
        min_delta = float((self.cfg.get("early_stopping") or {}).get("min_delta") or 0.0)
        improved = before is None or metrics[self.optimize_metric] >= before + min_delta and \
            metrics[self.optimize_metric] > before
        p.evals_since_best = 0 if improved else p.evals_since_best + 1
        if metrics[self.optimize_metric] > p.best.get(self.optimize_metric, -1.0):
            p.best.update(metrics, step=p.step, epoch=epoch_fraction)
            if self.is_main:
                write_jsonl(self.run_dir / "dev_predictions.jsonl", rows)
                write_json(self.run_dir / "dev_nbest.json", nbest_json(preds))
                if self.cfg.save_model or self.cfg.predict_test:
                    save_model_folder(self.accelerator.unwrap_model(self.model), self.tokenizer, self.best_dir,
                                      {"step": p.step, "epoch": epoch_fraction, "dev": metrics})
            self.accelerator.wait_for_everyone()
        return metrics

    @property
    def best_dir(self) -> Path:
        return self.run_dir / "best_model"

    # ---------------------------------------------------------------- finishing
    def finish(self) -> float:
        """Test predictions from the best model, ``metrics.json``, the run's files to the tracker; the best dev
        score by ``optimize_metric``."""
        best = self.progress.best
        summary = {**{f"best_dev_{m}": best.get(m) for m in METRICS}, "optimize_metric": self.optimize_metric,
                   "best_step": best.get("step"), "best_epoch": best.get("epoch"), "steps": self.progress.step,
                   "train_windows": len(self.train_set), "wall_time_s": None}
        if self.cfg.predict_test:
            summary["test_questions"] = self._predict_test()
        if not self.cfg.save_model and self.is_main and self.best_dir.exists():
            shutil.rmtree(self.best_dir)
        summary["wall_time_s"] = self._wall_time()
        if self.is_main:
            write_json(self.run_dir / "metrics.json", summary)
            update_run_record(self.run_dir, best_dev_em=best.get("em"), optimize_metric=self.optimize_metric,
                              best={m: best.get(m) for m in METRICS})
            best_metrics = comparison_metrics({m: best.get(m, 0.0) for m in METRICS})
            # At step 0, not the last step: MLflow's chart view then draws one bar per run to compare.
            self.tracker.log_metrics({**best_metrics, "wall_time_s": summary["wall_time_s"]}, 0)
            self.tracker.log_run_files(self.run_dir)
            if self.cfg.tracking.get("log_model") and self.best_dir.is_dir():
                first = self.splits["dev"].examples[0]
                self.tracker.log_model(self.run_dir, {"question": first.question, "context": first.context},
                                       self.cfg.tracking.get("register_model"))
        metric = self.optimize_metric
        log.info("done in %.0fs: best dev %s %.4f (step %s); outputs in %s", summary["wall_time_s"],
                 METRIC_LABELS[metric], best.get(metric, 0.0), best.get("step"), self.run_dir)
        return float(best.get(self.optimize_metric, 0.0))

    def _predict_test(self) -> int:
        """Every process predicts its shard with the best model as saved (exactly what ``make predict``
        loads); the main process writes the submission and the n-best lists."""
        best_model = load_qa_model(self.best_dir).to(self.accelerator.device)
        enc = self.encoded["test"]
        try:
            preds = predict(best_model, enc, eval_windows(enc, self.window), self.post, self.eval_budget,
                            self.accelerator, "test", stop=self._stop, attention=self.attention,
                            pad_multiple=self.pad_multiple)
        except EvaluationStopped:
            raise Interrupted(self._save(), self.progress.step, "test prediction") from None
        if self.is_main:
            write_submission(self.run_dir / "test_predictions.csv", enc.examples, preds,
                             bool(self.cfg.csv_strip_commas))
            write_json(self.run_dir / "test_nbest.json", nbest_json(preds))
        return len(preds)


class StopEarly(Exception):
    """Early stopping: training ends here and the run finishes as usual."""


def recorded_best(record: dict, metric: str) -> float:
    """A finished run's best dev score by ``metric``, from its ``run.json``."""
    best = record.get("best") or {"em": record.get("best_dev_em")}
    return float(best.get(metric) or 0.0)


def train(cfg: DictConfig, job_dir: Path) -> tuple[float, Path]:
    """Set up, train, finish: ``(best dev score by optimize_metric, run dir)``. A run that already finished is
    reported, not retrained (its recorded best is returned, so sweep reports and Optuna still see it)."""
    with TrainingRecipe(cfg, job_dir) as recipe:
        try:
            recipe.setup()
        except AlreadyFinished as done:
            print(f"already finished: {done.run_dir} (best dev EM {done.record.get('best_dev_em')})", flush=True)
            recipe.continue_log_in(done.run_dir)
            return recorded_best(done.record, recipe.optimize_metric), done.run_dir
        recipe.train()
        return recipe.finish(), recipe.run_dir
