"""Resumable checkpoints, verified before use, and clean interrupts.

A checkpoint is ``<run_dir>/checkpoints/step_<N>/``: Accelerate's ``save_state`` (model, optimizer,
scheduler, RNG states of every process), ``trainer_state.json`` (where training stands, the MLflow
run id, the run's identity) and, written last, ``manifest.json`` (every file's size and SHA-256). It
is written into a temporary folder and renamed into place, so a kill at any moment leaves either the
old set or the new one; only the newest ``keep`` are kept. :func:`verify_checkpoint` checks a
checkpoint against its manifest, so a truncated or emptied file is found before it is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
from pathlib import Path

from ..core.outputs import share_files

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"


def _step_of(path: Path) -> int:
    return int(path.name.split("_", 1)[1])


def checkpoints_of(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run (whether or not they verify), oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("step_*") if p.is_dir() and p.name[5:].isdigit()), key=_step_of)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps({"files": manifest}, indent=1))


def verify_checkpoint(folder: Path) -> str | None:
    """``None`` if every file the manifest lists is there with its size and checksum, else what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (the checkpoint was never finished)"
    except (ValueError, KeyError, TypeError) as err:
        return f"unreadable {MANIFEST} ({err})"
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected['size']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def newest_good_checkpoint(run_dir: Path, at_most_step: int | None = None) -> Path | None:
    """The newest checkpoint of ``run_dir`` (up to ``at_most_step``) that verifies; each damaged one on the
    way is named in a warning."""
    for checkpoint in reversed(checkpoints_of(run_dir)):
        if at_most_step is not None and _step_of(checkpoint) > at_most_step:
            continue
        problem = verify_checkpoint(checkpoint)
        if problem is None:
            return checkpoint
        log.warning("skipping damaged checkpoint %s: %s; trying the previous one", checkpoint, problem)
    return None


@contextlib.contextmanager
def removed_on_failure(tmp: Path):
    """Remove the half-written ``tmp`` folder first when writing it fails: on a full disk it holds the last free
    space, and the run's status (``run.json``, a few hundred bytes) must still be written after it."""
    try:
        yield
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(accelerator, run_dir: Path, state: dict, keep: int) -> Path:
    """Write a checkpoint atomically (every process takes part; the main process renames and prunes)."""
    folder = run_dir / "checkpoints"
    final = folder / f"step_{state['step']}"
    tmp = folder / f".tmp_step_{state['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    with removed_on_failure(tmp):
        accelerator.save_state(str(tmp), safe_serialization=True)
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            share_files(tmp)
            write_manifest(tmp)  # last: a checkpoint without a manifest is unfinished
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoints_of(run_dir)[: -max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    log.info("checkpoint %s", final)
    return final


def save_model_folder(model, tokenizer, folder: Path, info: dict) -> Path:
    """Write a model folder (``best_model/``: safetensors weights, config, tokenizer) the way checkpoints are
    written: into ``.tmp_<name>/``, with ``saved.json`` (``info``: the step and scores it was kept for) and,
    last, ``manifest.json``; then swapped in for the previous one. A kill at any moment leaves a complete
    folder -- the new one or the previous one -- that :func:`recover_model_folder` puts back in place."""
    tmp, previous = folder.with_name(f".tmp_{folder.name}"), folder.with_name(f".previous_{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    with removed_on_failure(tmp):
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "saved.json").write_text(json.dumps(info, indent=1, default=str))
        share_files(tmp)
        write_manifest(tmp)  # last: a folder without a manifest is unfinished
    if folder.exists():
        shutil.rmtree(previous, ignore_errors=True)
        _set_aside(folder, previous)  # killed here: no folder, two complete ones beside it
    os.replace(tmp, folder)
    shutil.rmtree(previous, ignore_errors=True)
    return folder


def _set_aside(folder: Path, previous: Path) -> None:
    """The first of a swap's two renames, as a step of its own: tests kill -9 right after it."""
    os.replace(folder, previous)


def recover_model_folder(folder: Path) -> None:
    """Finish a :func:`save_model_folder` a kill interrupted between its two renames: the newest complete
    folder (the new one, else the previous) becomes ``folder`` again; whatever is left over -- a complete copy
    no longer needed, or an unfinished one (``.tmp_best_model`` half written when the kill came) -- is removed.
    Never while the run is alive (its own save may be in the middle of those renames)."""
    from ..core.runs import RUNNING, read_run_record

    record = read_run_record(folder.parent) or {}
    if record.get("status") == RUNNING:  # read_run_record says KILLED when its process is gone
        return
    tmp, previous = folder.with_name(f".tmp_{folder.name}"), folder.with_name(f".previous_{folder.name}")
    if not folder.exists():
        for candidate in (tmp, previous):
            if candidate.is_dir() and verify_checkpoint(candidate) is None:
                os.replace(candidate, folder)
                log.warning("restored %s from %s (a save was interrupted)", folder, candidate.name)
                break
    for leftover in (tmp, previous):
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)
            log.info("removed %s, left by an interrupted save", leftover)


def model_folder_problem(folder: Path) -> str | None:
    """``None`` when ``folder`` holds every file its manifest lists, unchanged; else what is wrong. A folder
    saved before manifests existed has none: that is said (``unverified``), but it is usable."""
    recover_model_folder(folder)
    if not (folder / "config.json").is_file():
        return "no config.json (no model was saved there)"
    if not (folder / MANIFEST).is_file():
        return "unverified: saved without a manifest (by an older version), its weights cannot be checked"
    return verify_checkpoint(folder)


def load_trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())


class StopRequest:
    """SIGINT / SIGTERM set a flag instead of killing the process mid-step: the loop saves a
    checkpoint at the next step boundary and stops. A second signal interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: stopping at the next safe point, with a checkpoint once training has begun "
                    "(send it again to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a launcher's worker thread): no handler
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def check(self, where: str, step: int = 0) -> None:
        """Raise :class:`Interrupted` if a stop was asked for (one process: no collective call)."""
        if self.requested:
            raise Interrupted(None, step, where)

    def agreed(self, accelerator, step: int | None = None, every: int = 1) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step). One process answers
        from its flag; several exchange theirs only at steps that are multiples of ``every`` (a collective and a host
        read per step would cost a GPU as much as the step), or whenever ``step`` is ``None`` (an epoch's end)."""
        if accelerator.num_processes == 1:
            return self.requested
        if step is not None and step % every:
            return False
        import torch

        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving ``checkpoint`` (``None``: stopped during start-up,
    before there was anything to save)."""

    def __init__(self, checkpoint: Path | None, step: int, where: str = "training"):
        what = f"checkpoint {checkpoint}" if checkpoint else "nothing to resume"
        super().__init__(f"interrupted during {where} at step {step}; {what}")
        self.checkpoint, self.step, self.where = checkpoint, step, where
