"""Finding (and, where the config says how, downloading) the data files of a ``data`` config."""

from __future__ import annotations

import logging
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from omegaconf import DictConfig
from tqdm.auto import tqdm

from .data import ExampleSet, read_examples
from .errors import SetupError

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


def _download(url: str, dest: Path, timeout: float = 15.0) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                out.write(chunk)
                bar.update(len(chunk))
    tmp.replace(dest)


def _fetch(data_cfg: DictConfig, split: str, target: Path) -> None:
    """Download ``split``'s file into place: from the split's own URL, or from the archive holding it."""
    urls = data_cfg.get("urls") or {}
    if urls.get(split):
        _download(urls[split], target)
        return
    if data_cfg.get("archive_url"):
        archive = Path(data_cfg.cache_dir) / Path(data_cfg.archive_url).name
        if not archive.exists():
            _download(data_cfg.archive_url, archive)
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if Path(m).name == target.name]
            if not members:
                raise SetupError(f"{archive} holds no {target.name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(members[0]) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
        return
    raise FileNotFoundError(target)


def resolve_data_file(data_cfg: DictConfig, split: str) -> Path:
    """The path of ``split``'s file, downloading it when it is missing and the config says from where."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    name = data_cfg.get(f"{split}_file")
    if not name:
        raise SetupError(f"data.{split}_file is not set; set it to a JSON file (hw7 or SQuAD format)")
    path = Path(str(name)).expanduser().resolve()
    if path.is_file():
        return path
    try:
        _fetch(data_cfg, split, path)
        log.info("downloaded %s", path)
        return path
    except (urllib.error.URLError, OSError, TimeoutError, zipfile.BadZipFile) as err:
        raise SetupError(
            f"Could not fetch the {split} data file {path} ({type(err).__name__}: {getattr(err, 'reason', err)}). "
            f"Fix: data.{split}_file=/path/to/{path.name} or data.dir=/dir/with/the/files."
        ) from err


def load_split(data_cfg: DictConfig, split: str) -> ExampleSet:
    """Read ``split`` (the first ``data.limit_<split>`` questions when that is set)."""
    examples = read_examples(resolve_data_file(data_cfg, split),
                             unanswerable=str(data_cfg.get("unanswerable") or "error"))
    limit = data_cfg.get(f"limit_{split}")
    if limit:
        examples.examples = examples.examples[: int(limit)]
    return examples
