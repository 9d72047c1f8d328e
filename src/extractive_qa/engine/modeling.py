"""Loading tokenizers and question-answering models, pretrained or randomly initialised, from the hub, a
mirror, the cache or a local folder -- and recording which weights they were.

``model.init: pretrained`` calls ``from_pretrained(model.name_or_path)`` (a hub id or a local
directory), the real path users with the hub take. ``model.init: random`` builds the architecture
from ``model.name_or_path``'s config (plus ``model.config_overrides``) with random weights, for
offline runs, tests and speed work; the tokenizer comes from ``model.tokenizer`` (default: the same
path). ``trust_remote_code`` stays off unless the config turns it on.

Where a hub id comes from is decided once, before anything is downloaded (:func:`resolve_source`):
the hub at ``$HF_ENDPOINT`` (huggingface.co, or a mirror on any scheme and port) when it answers --
through ``HTTP(S)_PROXY`` when one is set, as every download goes; else the Hugging Face cache,
with every load told ``local_files_only`` (without it, a mirror that is down costs about 45 s of
retries before the cache is used); else one error naming ``HF_ENDPOINT`` and the offline preset.
The commit the weights came from (the hub's, or a digest of a local folder) is recorded with the
run, and ``model.revision=<commit>`` loads exactly those weights again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..core.errors import SetupError

log = logging.getLogger(__name__)

HUB = "https://huggingface.co"
_OFF = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Source:
    """Where a tokenizer or model comes from: ``name_or_path`` at ``revision``; ``local_files_only`` when the
    hub cannot be reached and the cache has it; ``commit``, the hub commit of those files or
    ``sha256:...`` of a local folder (``None`` when it cannot be known)."""

    name_or_path: str
    revision: str | None = None
    local_files_only: bool = False
    commit: str | None = None

    @property
    def local(self) -> bool:
        return Path(self.name_or_path).expanduser().exists()


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or HUB).rstrip("/")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in _OFF


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """``None`` when the hub at :func:`hub_endpoint` answers an HTTP request, else why not.

    The request goes the way downloads go: the endpoint's own scheme and port (a mirror may be plain
    http on any port), through ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` as set (urllib reads them). Any
    HTTP answer, even 404, means a server is there."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    # A new opener each time: ``urlopen``'s shared one keeps the proxies the environment had at its first call.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler())
    try:
        opener.open(urllib.request.Request(hub_endpoint(), method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as err:
        return f"{type(err).__name__}: {getattr(err, 'reason', err)}"
    return None


def _cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit of ``repo_id`` at ``revision`` in the Hugging Face cache (``None``: not cached)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - any cache-layout problem just means "not cached"
        return None
    return _commit_of(found) if isinstance(found, str) else None


def _commit_of(cached_path: str) -> str | None:
    """``.../snapshots/<commit>/config.json`` -> ``<commit>``."""
    path = Path(cached_path)
    return path.parent.name if path.parent.parent.name == "snapshots" else None


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit ``revision`` of ``repo_id`` points at, read from where its config lands in the cache
    (downloading it, as the load would); ``None`` when the repo has neither config file."""
    from transformers.utils import cached_file

    for name in ("config.json", "tokenizer_config.json"):
        try:
            found = cached_file(repo_id, name, revision=revision, _raise_exceptions_for_missing_entries=False)
        except OSError:
            continue
        if found:
            return _commit_of(found)
    return None


def folder_digest(folder: str | Path) -> str:
    """``sha256:<16 hex>`` over the names and contents of every file of a local model folder."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).expanduser().rglob("*") if p.is_file()):
        h.update(path.relative_to(Path(folder).expanduser()).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


def resolve_source(name_or_path: str, revision: str | None = None, what: str = "model") -> Source:
    """Where ``name_or_path`` loads from, and its commit (see the module docstring); a :class:`SetupError`
    (one message: the endpoint, why it failed, the fixes) when it can be loaded from nowhere."""
    if Path(name_or_path).expanduser().exists():
        return Source(name_or_path, None, False, folder_digest(name_or_path))
    cached = _cached_commit(name_or_path, revision)
    reason = hub_unreachable()
    if reason is None:
        return Source(name_or_path, revision, False, _hub_commit(name_or_path, revision))
    if cached is not None:
        if not hub_offline():
            log.warning("the hub at %s cannot be reached (%s): loading %s '%s' from the Hugging Face cache (commit %s)",
                        hub_endpoint(), reason, what, name_or_path, cached)
        return Source(name_or_path, revision, True, cached)
    env = os.environ.get("HF_ENDPOINT")
    where = f"{hub_endpoint()} (HF_ENDPOINT)" if env else f"{HUB} (HF_ENDPOINT is not set: set it to a mirror)"
    raise SetupError(
        f"Could not fetch {what} '{name_or_path}'" + (f" at revision {revision}" if revision else "")
        + f": it is not a local folder, not in the Hugging Face cache, and the hub at {where} cannot be reached "
        f"({reason}). Fix: HF_ENDPOINT=<a mirror that answers>, model.name_or_path=/path/to/a/downloaded/folder, "
        "or run once with the hub reachable (the cache then serves it, also with HF_HUB_OFFLINE=1).")


def load_tokenizer(model_cfg: DictConfig, source: Source | None = None):
    from transformers import AutoTokenizer

    path = str(model_cfg.get("tokenizer") or model_cfg.name_or_path)
    source = source or resolve_source(path, model_cfg.get("revision"), "tokenizer")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
                                        revision=source.commit if not source.local else None,
                                        local_files_only=source.local_files_only)
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
                  trust_remote_code: bool = False, config_overrides: dict | None = None,
                  local_files_only: bool = False):
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


def load_model(model_cfg: DictConfig, source: Source | None = None):
    """The model a ``model`` config describes (see the module docstring), through :func:`load_qa_model`: from
    ``source`` (:func:`resolve_source`), at its recorded commit, so the weights are the ones recorded."""
    path = str(model_cfg.name_or_path)
    source = source or resolve_source(path, model_cfg.get("revision"))
    raw = model_cfg.get("config_overrides")
    overrides = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else dict(raw or {})
    return load_qa_model(path, init=str(model_cfg.init), revision=source.commit if not source.local else None,
                         trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
                         config_overrides=overrides, local_files_only=source.local_files_only)
