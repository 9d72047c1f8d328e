"""Errors a user fixes with an override, and the one message that lists them all."""

from __future__ import annotations


class SetupError(RuntimeError):
    """A model or data file could not be fetched or used; the message says which override fixes it."""


class InputError(ValueError):
    """A value or a file the user gave is wrong (a config value, a data record); the message names it and the fix."""


OFFLINE_HINT = (
    "Offline? Run `make train ARGS=experiment=offline_smoke` (tiny random-init model, data from ../shared), "
    "or point the config at local files: model=tiny (or model.name_or_path=/path/to/model_dir) and "
    "data.dir=/path/to/data_dir."
)


def setup_message(errors: list[SetupError]) -> str:
    """One message for every problem; the offline way out once, when something could not be fetched."""
    hint = f"\n{OFFLINE_HINT}" if any("Could not fetch" in str(e) for e in errors) else ""
    return "\n".join(f"error: {e}" for e in errors) + hint


_DISK_FULL = ("No space left on device", "Disk quota exceeded", "StorageFull", "QuotaExceeded")
# What writers that do not pass ENOSPC on say when a write came up short: torch's zip writer
# ("[enforce fail at inline_container.cc:...] . unexpected pos ..."), its stream writer, plain I/O errors.
_SHORT_WRITE = ("unexpected pos", "inline_container", "PytorchStreamWriter", "failed writing", "write failed",
                "Input/output error", "file write failed")
NEARLY_FULL = 16 * 2**20  # a disk with less free space than this, after a write failed, is the reason it failed


def _free_bytes(where: str) -> int | None:
    import shutil

    try:
        return shutil.disk_usage(where).free
    except OSError:
        return None


def _says_disk_full(cause: BaseException, where: str) -> bool:
    import errno

    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(text in str(cause) for text in _DISK_FULL):
        return True
    # A write that failed without naming the disk: if the disk is (nearly) full now, that is why.
    if isinstance(cause, OSError) or (isinstance(cause, RuntimeError) and any(t in str(cause) for t in _SHORT_WRITE)):
        free = _free_bytes(where)
        return free is not None and free < NEARLY_FULL
    return False


def disk_full_message(err: BaseException, where: str) -> str | None:
    """One line for a write that failed on a full disk (or quota) anywhere in ``err``'s chain -- ``OSError``
    ENOSPC from Python, the same error as text from safetensors' Rust writer, or any writer's short write
    (torch's ``unexpected pos``) while the disk is nearly full -- else ``None``. ``where`` is the folder the
    run writes to."""
    cause: BaseException | None = err
    while cause is not None:
        if _says_disk_full(cause, where):
            free = _free_bytes(where)
            free_text = f"{free / 2**20:.1f} MB free there now" if free is not None else "its free space unknown"
            name = getattr(cause, "filename", None)
            return (f"error: no space left on the disk of {where} ({free_text}) while writing "
                    f"{name or 'the run files'}; the half-written files were removed and the run is FAILED. Fix: free "
                    "space there, or write runs to a bigger disk (paths.output_dir=/path); keep_checkpoints=1 and "
                    "checkpoint_steps=null keep fewer files")
        cause = cause.__cause__ or cause.__context__
    return None


def log_to_files(text: str, name: str = "extractive_qa") -> None:
    """``text`` into the log files only (a run's ``train.log``), for a message already printed to the terminal."""
    import logging

    record = logging.LogRecord(name, logging.ERROR, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class OutputDirError(ValueError):
    """Run folders cannot be created where the config says."""


# Words of Hydra's override errors, and what to type instead, for keys users reach for by another name.
_OVERRIDE_HINTS = {"Could not override 'experiment'": "the runs of an experiment are chosen with experiment_name=NAME "
                                                       "(experiment= picks a training preset)"}


def one_line_error(err: BaseException) -> tuple[str, int] | None:
    """The one line (and exit code) for an error a user fixes -- a config value, a file, a damaged or unreachable
    store, a folder that cannot be written, an override Hydra refuses -- from whichever entry point met it; ``None``
    for a bug (its traceback is the report). Every line is redacted (:mod:`.secrets`)."""
    from hydra.errors import CompactHydraException

    from .secrets import redact

    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OutputDirError):
            return redact(f"error: {cause}"), 2
        if isinstance(cause, SetupError):
            return redact(setup_message([cause])), 2
        if isinstance(cause, InputError):
            text = str(cause)
            return redact(text if text.startswith("error: ") else f"error: {text}"), 2
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, CompactHydraException):
        text = "\n".join(str(e) for e in (err, err.__cause__) if e)
        hints = [hint for words, hint in _OVERRIDE_HINTS.items() if words in text]
        return redact(text + "".join(f"\nFix: {h}" for h in hints)), 1
    return None


THIRD_PARTY_NOTICES = ("starlette.middleware.wsgi is deprecated", "Using or importing the ABCs")


def quiet_third_party_deprecations() -> None:
    """Deprecation notices of the libraries a command loads (MLflow's Starlette middleware, transformers' renamed
    arguments, ...) say nothing a user of this project can act on; the project's own still show. Also for the
    processes it starts (``PYTHONWARNINGS``: MLflow's server, a launcher's workers)."""
    import os
    import warnings

    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=r"extractive_qa(\.|$)")
    # Starlette's deprecation notices are UserWarnings: told by their words (MLflow's server printed four at start).
    for words in THIRD_PARTY_NOTICES:
        warnings.filterwarnings("ignore", message=words)
    quiet = ",".join(["ignore::DeprecationWarning", "ignore::FutureWarning",
                      *(f"ignore:{words}" for words in THIRD_PARTY_NOTICES)])
    os.environ["PYTHONWARNINGS"] = ",".join(x for x in (os.environ.get("PYTHONWARNINGS"), quiet) if x)


def run_cli(main) -> None:
    """Every entry point's way to run its ``main`` (a Hydra main or an argparse one):

    * passwords typed into URLs on the command line are lifted out before anything reads ``sys.argv``, and every
      log record is redacted (:mod:`.secrets`);
    * an error a user fixes is one line with its fix (:func:`one_line_error`: exit 2, Hydra's override errors 1),
      the same line whichever command met it; anything else is its traceback, redacted, exit 1. Hydra's own
      error report is bypassed (its formatter fails on errors raised while it resolves the run dir);
    * the process ends as soon as the work has, however it ended (:mod:`.shutdown`).

    A ``main`` that returns an int exits with it."""
    import os
    import sys
    import traceback

    from .secrets import lift_passwords, redact, redact_log_records
    from .shutdown import exits_promptly

    sys.argv[1:] = lift_passwords(sys.argv[1:])
    redact_log_records()
    quiet_third_party_deprecations()
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    with exits_promptly():
        try:
            code = main()
        except Exception as err:  # noqa: BLE001 - one line for what a user fixes, else a redacted traceback
            found = one_line_error(err)
            if found is None:
                print(redact(traceback.format_exc()), end="", file=sys.stderr)
                sys.exit(1)
            print(found[0], file=sys.stderr)
            sys.exit(found[1])
        if isinstance(code, int) and not isinstance(code, bool):
            sys.exit(code)
