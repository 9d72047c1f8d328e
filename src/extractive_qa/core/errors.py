"""Errors a user fixes with an override, and the one message that lists them all."""

from __future__ import annotations


class SetupError(RuntimeError):
    """A model or data file could not be fetched or used; the message says which override fixes it."""


OFFLINE_HINT = (
    "Offline? Run `make train ARGS=experiment=offline_smoke` (tiny random-init model, data from ../shared), "
    "or point the config at local files: model=tiny (or model.name_or_path=/path/to/model_dir) and "
    "data.dir=/path/to/data_dir."
)


def setup_message(errors: list[SetupError]) -> str:
    """One message for everything that could not be fetched, with the offline way out once."""
    return "\n".join(f"error: {e}" for e in errors) + f"\n{OFFLINE_HINT}"
