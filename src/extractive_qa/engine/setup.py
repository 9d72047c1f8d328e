"""Run set-up shared by the entry points: the Accelerator, data + tokenizer, the run dir, the optimizer.

Training, the predictor and the benchmark all start here, so a precision rule or a data-loading
message is written once.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from ..core.data import DataFormatError, ExampleSet
from ..core.datafiles import load_split
from ..core.errors import SetupError, setup_message
from .hardware import allow_tf32, resolve_precision
from .modeling import Source, load_tokenizer, resolve_source

log = logging.getLogger(__name__)


def resolve_run_precision(cfg: DictConfig) -> str:
    """Turn ``precision.mixed_precision`` (``auto`` or explicit) into this machine's choice, in place, and
    record what was asked for and why (``precision.requested``, ``precision.reason``): the run's
    ``config_resolved.yaml`` and MLflow params then say which precision it really ran in."""
    requested = str(cfg.precision.get("requested") or cfg.precision.mixed_precision)
    try:
        choice = resolve_precision(requested)
    except ValueError as err:
        raise SetupError(str(err)) from err
    with open_dict(cfg):
        cfg.precision.mixed_precision = choice.mixed_precision
        cfg.precision.requested = choice.requested
        cfg.precision.reason = choice.reason
    return choice.mixed_precision


def make_accelerator(cfg: DictConfig):
    """A fresh Accelerator per job, in the precision this hardware should use (:func:`resolve_run_precision`).

    Fresh because Hydra runs ``-m`` jobs in one process and Accelerate keeps one global state per
    process (a second job with another mixed_precision would raise)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    mixed = resolve_run_precision(cfg)
    # Several processes and no GPU (torchrun, or `accelerate launch --multi_gpu` on a CPU machine):
    # Accelerate only forms a gloo process group over CPUs when told to use the CPU.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    cuda = torch.cuda.is_available() and not multi_cpu
    if cuda:
        allow_tf32(bool(cfg.get("tf32", True)))
    # A seedable sampler makes each epoch's order a function of (seed, epoch): resuming mid-epoch
    # replays exactly the batches the interrupted run would have seen. Gradient accumulation is the recipe's
    # own (each loader batch is one optimizer step, split into micro-batches): Accelerate's stays at 1.
    # On a GPU, batches come from pinned memory (train_loader) and are copied without blocking the host.
    accelerator = Accelerator(cpu=multi_cpu, mixed_precision=mixed,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=cuda))
    if multi_cpu:
        _destroy_process_group_at_exit()
    return accelerator


@functools.cache
def _destroy_process_group_at_exit() -> None:
    """Destroy the gloo process group when the process exits, while the interpreter is still whole.

    Why: left to interpreter shutdown, gloo's worker threads can be torn down joinable and the rank dies with
    SIGABRT ("terminate called without an active exception") after the run finished -- seen here once in a
    two-process CPU run that had written every file (pytorch/pytorch#190489). Once per process, not per job:
    Hydra's ``-m`` jobs in one process share the group. Gloo's destroy is local (no collective), so a rank
    leaving after an error cannot hang on it."""
    import atexit

    def destroy() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(destroy)


def load_data_and_tokenizer(cfg: DictConfig, split_names: tuple[str, ...],
                            with_model: bool = False) -> tuple[dict[str, ExampleSet], object, Source | None]:
    """The splits, the tokenizer and (``with_model``) where the model's weights come from and their commit,
    resolved before any weight is downloaded -- or one SetupError listing everything that could not be fetched."""
    errors, splits, tokenizer, model = [], {}, None, None
    for name in split_names:
        try:
            splits[name] = load_split(cfg.data, name)
        except SetupError as err:
            errors.append(err)
        except DataFormatError as err:  # names the file, the record and the fix already
            errors.append(SetupError(str(err)))
    try:
        tokenizer = load_tokenizer(cfg.model)
        if with_model:
            model = resolve_source(str(cfg.model.name_or_path), cfg.model.get("revision"))
    except SetupError as err:
        errors.append(err)
    if errors:
        raise SetupError(setup_message(errors))
    return splits, tokenizer, model


def agree_on_run_dir(accelerator, run_dir: Path) -> Path:
    """Under ``accelerate launch`` every rank composes its own config and its own timestamped run dir;
    all ranks take the main process's, and the others' empty Hydra dirs are removed."""
    if accelerator.num_processes == 1:
        return run_dir
    from accelerate.utils import broadcast_object_list

    shared = Path(broadcast_object_list([str(run_dir)])[0])
    if shared != run_dir and not accelerator.is_main_process and run_dir.is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
    return shared


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (BERT's recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def move_job_log(job_dir: Path, run_dir: Path) -> None:
    """Log on in ``run_dir``'s log file instead of ``job_dir``'s (Hydra's file handler of this job),
    carrying over what was logged so far: a resumed run keeps one ``train.log``."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        if Path(handler.baseFilename).parent.resolve() != job_dir.resolve():
            continue
        handler.close()
        root.removeHandler(handler)
        moved = logging.FileHandler(run_dir / Path(handler.baseFilename).name, mode="a", encoding="utf-8")
        moved.setFormatter(handler.formatter)
        moved.setLevel(handler.level)
        with open(moved.baseFilename, "a", encoding="utf-8") as log_file:
            log_file.write(Path(handler.baseFilename).read_text(encoding="utf-8", errors="replace"))
        root.addHandler(moved)


def remove_if_only_logs(job_dir: Path) -> None:
    """Remove Hydra's job folder when it holds nothing but its config copy and log."""
    if job_dir.is_dir() and {p.name for p in job_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(job_dir, ignore_errors=True)
