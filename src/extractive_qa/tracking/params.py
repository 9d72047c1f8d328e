"""The params a run records: the keys whose role is ``param`` (:mod:`extractive_qa.core.roles`), once each,
without machine-local paths or secrets, in MLflow-sized batches."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..core.config import flatten, to_plain
from ..core.roles import role_of
from ..core.secrets import redact

# Values of keys that look like secrets never reach params or tags.
SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[_-]?key|credential", re.IGNORECASE)
PARAMS_PER_BATCH = 100  # MLflow takes at most 100 params per log_batch call
_REFERENCE = re.compile(r"^\$\{[\w.]+\}$")  # a plain ${other.key}: the other key is the param


def safe_params(cfg: DictConfig) -> dict[str, str]:
    """The params a user sets, once each, without machine-local paths or secrets.

    From the resolved config: keys whose role is a param; keys that merely repeat another key
    (``optimizer.lr: ${lr}``, ``max_answer_len: ${data.max_answer_len}``) are left out in favour of
    the key they repeat, paths become their last component (``data.dir=hw7-drcd``), secret-looking keys
    are dropped, values are cut to MLflow's 6000 characters. The full resolved config stays an artifact
    (``config_resolved.yaml``).
    """
    raw = flatten(OmegaConf.to_container(cfg, resolve=False))
    kept = {k: v for k, v in flatten(to_plain(cfg)).items() if role_of(k).param and not SECRET_KEY.search(k)}
    params = {}
    for key, value in kept.items():
        reference = raw.get(key)
        if isinstance(reference, str) and _REFERENCE.match(reference) and reference[2:-1] in kept:
            continue
        if isinstance(value, str) and (value.startswith(("/", "file://", "~")) or re.match(r"^[A-Za-z]:\\", value)):
            value = Path(value.removeprefix("file://")).name
        params[key] = redact(str(value))[:6000]
    return params


def param_batches(params: dict[str, str]) -> list[list]:
    """``params`` as MLflow ``Param`` lists of at most :data:`PARAMS_PER_BATCH` each."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    return [items[i : i + PARAMS_PER_BATCH] for i in range(0, len(items), PARAMS_PER_BATCH)]
