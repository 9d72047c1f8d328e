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
# An archive -- and any download (max_mb) -- is refused beyond these (data.archive_limits overrides them): generous
# for the course's data (its zip of three JSON files, ~100 MB unpacked, compressed ~4x), tight for a zip bomb (a
# 2.5 MB zip that unpacks to 2.5 GB is 1000x).
ARCHIVE_LIMITS = {"max_mb": 2048, "max_members": 10_000, "max_ratio": 100}


def _download(url: str, dest: Path, max_mb: int, timeout: float = 15.0) -> None:
    """``url`` into ``dest``, through ``dest.part``: refused past ``max_mb`` (the archives' limit, declared or
    streamed: ``file:///dev/zero`` never ends), a full disk named as the cache's disk; the part is removed however it
    ends."""
    from .errors import disk_full_message
    from .secrets import redact

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    limit, fix = int(max_mb) * 2**20, "raise data.archive_limits.max_mb if you trust this source"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            if total and total > limit:
                raise ArchiveRefused(f"{redact(url)}: {total / 2**20:.0f} MB, over the download limit of {max_mb} MB. "
                                     f"Fix: {fix}")
            with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                              desc=f"download {dest.name}") as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    if out.tell() + len(chunk) > limit:
                        raise ArchiveRefused(f"{redact(url)}: more than {max_mb} MB, the download limit; stopped there "
                                             f"and removed. Fix: {fix}")
                    out.write(chunk)
                    bar.update(len(chunk))
        tmp.replace(dest)
    except OSError as err:
        if disk_full_message(err, str(dest.parent)) is None:
            raise
        free = shutil.disk_usage(dest.parent).free / 2**20
        raise SetupError(f"no space left on the disk of {dest.parent} ({free:.1f} MB free there) while downloading "
                         f"{redact(url)}; the partial file was removed. Fix: free space there, or download to a bigger "
                         "disk (paths.cache_dir=/path, or data.cache_dir=/path)") from None
    finally:
        tmp.unlink(missing_ok=True)


def _fetch(data_cfg: DictConfig, split: str, target: Path) -> None:
    """Download ``split``'s file into place: from the split's own URL, or from the archive holding it."""
    urls = data_cfg.get("urls") or {}
    limits = {**ARCHIVE_LIMITS, **dict(data_cfg.get("archive_limits") or {})}
    if urls.get(split):
        _download(urls[split], target, limits["max_mb"])
        return
    if data_cfg.get("archive_url"):
        archive = Path(data_cfg.cache_dir) / Path(data_cfg.archive_url).name
        if not archive.exists():
            _download(data_cfg.archive_url, archive, limits["max_mb"])
        extract_member(archive, target.name, target, limits)
        return
    raise FileNotFoundError(target)


class ArchiveRefused(SetupError):
    """An archive beyond its limits (size, members, compression ratio): refused before or while unpacking."""


def extract_member(archive: Path, name: str, target: Path, limits: dict) -> None:
    """The member of ``archive`` whose file name is ``name``, written to ``target`` -- streamed, and stopped at
    the limits: the declared total size, member count and compression ratios are checked first, then the
    bytes actually written (a zip may lie about its sizes), so a bomb never reaches the disk or memory."""
    max_bytes, max_ratio = int(limits["max_mb"]) * 2**20, float(limits["max_ratio"])
    fix = "raise data.archive_limits.max_mb / max_members / max_ratio if you trust this archive"
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > int(limits["max_members"]):
            raise ArchiveRefused(f"{archive}: {len(infos)} members, over the limit of {limits['max_members']}. Fix: "
                                 f"{fix}")
        declared = sum(i.file_size for i in infos)
        if declared > max_bytes:
            raise ArchiveRefused(f"{archive}: unpacks to {declared / 2**20:.0f} MB, over the limit of "
                                 f"{limits['max_mb']} MB. Fix: {fix}")
        members = [i for i in infos if Path(i.filename).name == name and not i.is_dir()]
        if not members:
            raise SetupError(f"{archive} holds no {name}")
        info = members[0]
        ratio_limit = max_ratio * max(info.compress_size, 1)
        if info.file_size > ratio_limit:
            ratio = info.file_size / max(info.compress_size, 1)
            raise ArchiveRefused(f"{archive}: {info.filename} is compressed {ratio:.0f}x, over the limit of "
                                 f"{max_ratio:.0f}x. Fix: {fix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        written, budget = 0, min(max_bytes, ratio_limit, info.file_size)
        try:
            with zf.open(info) as src, open(tmp, "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    written += len(chunk)
                    if written > budget:  # more than the member declared or the limits allow: stop here
                        raise ArchiveRefused(f"{archive}: {info.filename} unpacks past {budget / 2**20:.1f} MB "
                                             f"(declared {info.file_size / 2**20:.1f} MB; limits "
                                             f"{limits['max_mb']} MB, {max_ratio:.0f}x). Fix: {fix}")
                    out.write(chunk)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)


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
    except (ArchiveRefused, SetupError):
        raise
    except (urllib.error.URLError, OSError, TimeoutError, zipfile.BadZipFile) as err:
        raise SetupError(
            f"Could not fetch the {split} data file {path} ({type(err).__name__}: {getattr(err, 'reason', err)}). "
            f"Fix: data.{split}_file=/path/to/{path.name} or data.dir=/dir/with/the/files."
        ) from err


def load_split(data_cfg: DictConfig, split: str) -> ExampleSet:
    """Read ``split`` (the first ``data.limit_<split>`` questions when that is set)."""
    limit = data_cfg.get(f"limit_{split}")
    # A limit is read as such: only those questions (and their paragraphs) are built, not the whole file.
    return read_examples(resolve_data_file(data_cfg, split), unanswerable=str(data_cfg.get("unanswerable") or "error"),
                         limit=int(limit) if limit else None)
