"""Loading tokenizers and question-answering models, pretrained or randomly initialised.

``model.init: pretrained`` calls ``from_pretrained(model.name_or_path)`` (a hub id or a local
directory), the real path users with the hub take. ``model.init: random`` builds the architecture
from ``model.name_or_path``'s config (plus ``model.config_overrides``) with random weights, for
offline runs, tests and speed work; the tokenizer comes from ``model.tokenizer`` (default: the same
path). ``trust_remote_code`` stays off unless the config turns it on.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig, OmegaConf

from ..core.errors import SetupError

log = logging.getLogger(__name__)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - any cache-layout problem just means "not cached"
        return False


def check_fetchable(name_or_path: str, what: str = "model") -> None:
    """Fail fast, with one clear message, when a hub id can be neither found locally nor fetched.

    Without this, transformers retries name resolution for about a minute and prints a stack trace.
    """
    if Path(name_or_path).expanduser().exists() or _in_hub_cache(name_or_path):
        return
    if not _hub_reachable():
        raise SetupError(f"Could not fetch {what} '{name_or_path}': it is not a local directory, not in the "
                         "Hugging Face cache, and the hub cannot be reached.")


def load_tokenizer(model_cfg: DictConfig):
    from transformers import AutoTokenizer

    path = str(model_cfg.get("tokenizer") or model_cfg.name_or_path)
    check_fetchable(path, "tokenizer")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
                                        revision=model_cfg.get("revision"))
    if not tok.is_fast:
        raise SetupError(f"tokenizer '{path}' has no fast implementation; offsets need a fast tokenizer")
    return tok


def keep_head_fp32(model):
    """Make the QA head (``qa_outputs``) compute in fp32 even under autocast.

    Start/end logits are compared across positions and windows, and bf16's 8-bit mantissa turns
    near-ties into different answers. Only the head's ``forward`` is replaced: weights, state-dict
    keys and saved checkpoints stay those of the plain model.
    """
    head = getattr(model, "qa_outputs", None)
    if isinstance(head, torch.nn.Linear) and not getattr(head, "_fp32_head", False):
        plain_forward = head.forward

        def forward(hidden: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                return plain_forward(hidden.float())

        head.forward = forward
        head._fp32_head = True
    return model


def load_qa_model(name_or_path: str | Path, *, init: str = "pretrained", revision: str | None = None,
                  trust_remote_code: bool = False, config_overrides: dict | None = None):
    """The one way a question-answering model is built or loaded -- training, the predictor, ensembles,
    the benchmark and the registry's pyfunc model all call it: ``AutoModelForQuestionAnswering`` for
    whatever architecture the folder or hub id holds (BERT, ELECTRA, XLM-R, ...), pretrained weights or
    (``init="random"``) its config with random weights, and the QA head kept in fp32 (:func:`keep_head_fp32`).
    A pretrained checkpoint without a QA head (a masked-LM one) gets a newly initialised head."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    path = str(name_or_path)
    overrides = dict(config_overrides or {})
    if init == "pretrained":
        model = AutoModelForQuestionAnswering.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                              revision=revision,
                                                              **overrides)
    elif init == "random":
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision, **overrides)
        model = AutoModelForQuestionAnswering.from_config(config, trust_remote_code=trust_remote_code)
    else:
        raise ValueError(f"model.init must be 'pretrained' or 'random', got {init!r}")
    return keep_head_fp32(model)


def load_model(model_cfg: DictConfig):
    """The model a ``model`` config describes (see the module docstring), through :func:`load_qa_model`."""
    path = str(model_cfg.name_or_path)
    check_fetchable(path)
    raw = model_cfg.get("config_overrides")
    overrides = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else dict(raw or {})
    return load_qa_model(path, init=str(model_cfg.init), revision=model_cfg.get("revision"),
                         trust_remote_code=bool(model_cfg.get("trust_remote_code", False)), config_overrides=overrides)
