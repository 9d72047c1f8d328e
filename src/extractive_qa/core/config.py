"""Where the Hydra config tree lives, and the resolvers it uses.

The project's ``conf/`` sits beside ``src/`` (the layout users asked for), not inside the package, so
it is found from the package's location (editable installs, a checkout) or from ``EXTRACTIVE_QA_ROOT``.
Nothing depends on the working directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .errors import OutputDirError


def project_root() -> Path:
    """The directory that holds ``conf/``: ``$EXTRACTIVE_QA_ROOT``, else the checkout of this package,
    else the current directory or one of its parents."""
    env = os.environ.get("EXTRACTIVE_QA_ROOT")
    if env:
        return Path(env).resolve()
    candidates = [Path(__file__).resolve().parents[3], *[Path.cwd(), *Path.cwd().parents]]
    for c in candidates:
        if (c / "conf" / "train.yaml").is_file():
            return c
    raise FileNotFoundError("cannot find the project's conf/ directory; set EXTRACTIVE_QA_ROOT to the checkout")


CONF_DIR = str(project_root() / "conf")


def _resolve_path(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def model_tag(name_or_path: str, init: str = "pretrained") -> str:
    """Short model name for experiment and run names: ``hfl/chinese-macbert-base`` -> ``chinese-macbert-base``."""
    tag = Path(str(name_or_path)).name or str(name_or_path)
    return f"{tag}-random" if init == "random" else tag


def writable_dir(path: str) -> str:
    """``path``, after checking that runs can be written there: Hydra creates the run dir before any
    project code runs, and a failure there would otherwise be a raw traceback."""
    target = Path(path).expanduser()
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=target, prefix=".write-check-")  # noqa: SIM115 - closed just below
        probe.close()
    except OSError as err:
        raise OutputDirError(f"cannot create run folders under {target} ({err.strerror or err}). "
                             "Fix: paths.output_dir=/a/writable/dir (or EXTRACTIVE_QA_OUTPUTS), or hydra.run.dir=..."
                             ) from None
    return path


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("model_tag"):
        OmegaConf.register_new_resolver("model_tag", model_tag)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", _resolve_path)
    if not OmegaConf.has_resolver("writable_dir"):
        OmegaConf.register_new_resolver("writable_dir", writable_dir)


register_resolvers()


def to_plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_resolved(cfg: DictConfig, path: Path) -> None:
    """``config_resolved.yaml``: the config as the run used it, every value redacted (core/secrets.py)."""
    from .secrets import redact_tree

    OmegaConf.save(OmegaConf.create(redact_tree(to_plain(cfg))), path)


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
