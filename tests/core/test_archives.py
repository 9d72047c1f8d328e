"""Archives without surprises: a zip bomb given as ``data.archive_url`` is refused at once, with one line naming
the archive and the limit, before anything is unpacked; a member that unpacks past what it declared is
stopped while streaming; the course-sized zip unpacks as before."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from extractive_qa.core.datafiles import ARCHIVE_LIMITS, ArchiveRefused, extract_member


def _bomb(path: Path, megabytes: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
            zf.open("hw7/hw7_train.json", "w", force_zip64=True) as out:
        chunk = b"\0" * 2**20
        for _ in range(megabytes):
            out.write(chunk)
    return path


def test_a_zip_bomb_is_refused_at_once_in_little_memory(tmp_path):
    bomb = _bomb(tmp_path / "bomb.zip", 2100)  # 2.1 GB of zeros in a few MB: the probe's case (2.46 MB -> 2.52 GB)
    assert bomb.stat().st_size < 16 * 2**20
    # Peak RSS from VmHWM: ru_maxrss of a child keeps its forking parent's (pytest's) peak across exec.
    code = (f"import json, time; from pathlib import Path; start = time.perf_counter()\n"
            f"from extractive_qa.core.datafiles import ARCHIVE_LIMITS, extract_member\n"
            f"try:\n    extract_member(Path({str(bomb)!r}), 'hw7_train.json', Path({str(tmp_path / 'out.json')!r}), "
            f"ARCHIVE_LIMITS)\nexcept Exception as err:\n    message = str(err)\n"
            f"hwm = next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM'))\n"
            f"print(json.dumps({{'message': message, 'seconds': time.perf_counter() - start, "
            f"'rss_mb': hwm / 1024}}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.splitlines()[-1])
    assert out["message"].startswith(f"{bomb}: unpacks to 2100 MB, over the limit of 2048 MB")
    assert "data.archive_limits" in out["message"]  # the fix
    assert out["seconds"] < 2 and out["rss_mb"] < 200, out
    assert not (tmp_path / "out.json").exists()


def test_ratio_and_member_limits_and_a_member_that_lies(tmp_path):
    bomb = _bomb(tmp_path / "small-bomb.zip", 64)  # under the size limit, but 1000x compressed
    with pytest.raises(ArchiveRefused, match=r"hw7_train.json is compressed \d+x, over the limit of 100x"):
        extract_member(bomb, "hw7_train.json", tmp_path / "a.json", ARCHIVE_LIMITS)
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(30):
            zf.writestr(f"f{i}.txt", "x")
    with pytest.raises(ArchiveRefused, match="30 members, over the limit of 20"):
        extract_member(many, "f1.txt", tmp_path / "b.txt", {**ARCHIVE_LIMITS, "max_members": 20})
    # A member whose directory entry says 10 bytes but which holds 4 KB: never written past what it declared
    # (zipfile stops at the declared size and fails its CRC; the extraction's own byte count is the second guard).
    liar = tmp_path / "liar.zip"
    with zipfile.ZipFile(liar, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("hw7_dev.json", b"[" + b" " * 4096 + b"]")
    raw = bytearray(liar.read_bytes())
    size = (4098).to_bytes(4, "little")
    for at in [i for i in range(len(raw) - 4) if raw[i:i + 4] == size][-1:]:  # the central directory's size
        raw[at:at + 4] = (10).to_bytes(4, "little")
    liar.write_bytes(bytes(raw))
    with pytest.raises((ArchiveRefused, zipfile.BadZipFile)):
        extract_member(liar, "hw7_dev.json", tmp_path / "c.json", ARCHIVE_LIMITS)
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "c.json.part").exists()


def test_the_course_sized_zip_unpacks(tmp_path):
    import random

    rng = random.Random(0)  # text that compresses as the course's JSON does (~2.5x), not a repeated phrase
    data = {"questions": [], "paragraphs": ["".join(chr(rng.randrange(0x4E00, 0x4E00 + 3000)) for _ in range(20000))]}
    archive = tmp_path / "course.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/hw7_test.json", json.dumps(data, ensure_ascii=False))
    extract_member(archive, "hw7_test.json", tmp_path / "hw7_test.json", ARCHIVE_LIMITS)
    assert json.loads((tmp_path / "hw7_test.json").read_text(encoding="utf-8")) == data


def _download_run(tmp_path: Path, cache: Path, synthetic: dict, *overrides: str):
    from helpers import run_module

    # The synthetic tiny model: without ../shared, model=tiny's default folder would add a second error to the line.
    return run_module("extractive_qa.train", "data.archive_url=file:///dev/zero", f"data.dir={tmp_path}/data",
                      f"data.cache_dir={cache}", "model=tiny", f"model.name_or_path={synthetic['model']}",
                      "tracking=none", f"paths.output_dir={tmp_path}/out",
                      f"paths.cache_dir={tmp_path}/cache", *overrides, check=False)


def test_a_download_that_never_ends_stops_at_the_limit(tmp_path, synthetic):
    """``data.archive_url=file:///dev/zero`` (no size, no end): stopped at the archives' limit (settable), one line,
    nothing left behind -- it used to write until the disk was full."""
    res = _download_run(tmp_path, tmp_path / "downloads", synthetic, "+data.archive_limits.max_mb=2")
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith(
        "error: file:///dev/zero: more than 2 MB, the download limit; stopped there and removed. Fix: raise "
        "data.archive_limits.max_mb")
    assert not list((tmp_path / "downloads").iterdir())  # no .part


def test_a_download_onto_a_full_disk_names_that_disk_and_leaves_nothing(tmp_path, synthetic):
    from helpers.disk import tmpfs

    with tmpfs(tmp_path / "small", 4) as small:
        if small is None:
            pytest.skip("needs root to mount a small tmpfs")
        res = _download_run(tmp_path, small, synthetic)
        assert res.returncode == 2, res.stderr[-2000:]
        last = res.stderr.strip().splitlines()[-1]
        assert re.match(rf"error: no space left on the disk of {small} \(0\.\d MB free there\) while downloading "
                        r"file:///dev/zero; the partial file was removed\. Fix: free space there", last), last
        assert not list(small.iterdir())
