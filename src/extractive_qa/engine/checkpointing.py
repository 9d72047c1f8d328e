"""Resumable checkpoints and clean interrupts.

A checkpoint is ``<run_dir>/checkpoints/step_<N>/``: Accelerate's ``save_state`` (model, optimizer,
scheduler, RNG states of every process) plus ``trainer_state.json`` (step, epoch, batches done in the
epoch, best dev metrics, MLflow run id). It is written into a temporary folder and renamed into place,
so a kill at any moment leaves either the old set or the new one, never half a checkpoint; only the
newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


def _step_of(path: Path) -> int:
    return int(path.name.split("_", 1)[1])


def checkpoints_of(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step_*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=_step_of)


def find_checkpoint(resume: str | None, output_dir: Path, experiment_name: str) -> Path | None:
    """The checkpoint ``resume`` names: ``null`` none; ``auto`` the newest checkpoint of any run of this
    experiment under ``output_dir``; a checkpoint folder; or a run dir (its newest checkpoint)."""
    if not resume:
        return None
    if str(resume) == "auto":
        candidates = []
        for state in output_dir.glob(f"**/checkpoints/step_*/{STATE_FILE}"):
            if json.loads(state.read_text()).get("experiment_name") == experiment_name:
                candidates.append(state.parent)
        if not candidates:
            log.info("resume=auto: no checkpoint of experiment %r under %s; starting fresh", experiment_name, output_dir)
            return None
        return max(candidates, key=lambda p: (p / STATE_FILE).stat().st_mtime)
    path = Path(str(resume)).expanduser().resolve()
    if (path / STATE_FILE).is_file():
        return path
    found = checkpoints_of(path)
    if not found:
        raise FileNotFoundError(f"resume={resume}: neither a checkpoint nor a run dir with checkpoints/")
    return found[-1]


def save_checkpoint(accelerator, run_dir: Path, state: dict, keep: int) -> Path:
    """Write a checkpoint atomically (every process takes part; the main process renames and prunes)."""
    folder = run_dir / "checkpoints"
    final = folder / f"step_{state['step']}"
    tmp = folder / f".tmp_step_{state['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoints_of(run_dir)[: -max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    log.info("checkpoint %s", final)
    return final


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
        log.warning("%s received: saving a checkpoint after this step (again to stop at once)",
                    signal.Signals(signum).name)

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

    def agreed(self, accelerator) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step)."""
        if accelerator.num_processes == 1:
            return self.requested
        import torch

        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving ``checkpoint``."""

    def __init__(self, checkpoint: Path, step: int):
        super().__init__(f"interrupted at step {step}; checkpoint {checkpoint}")
        self.checkpoint, self.step = checkpoint, step
