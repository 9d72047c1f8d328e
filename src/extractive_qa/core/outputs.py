"""Files a run leaves behind: predictions, the submission CSV, n-best lists, metrics."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from .data import Example
from .postprocess import Prediction


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: os.umask can only be read by setting it


def write_atomic(path: str | Path, text: str | Iterable[str]) -> None:
    """Write ``text`` (or its chunks, in order) through a temporary file and a rename, so readers never see half
    a file. The file gets the permissions any new file gets here (0644 under the usual umask), not mkstemp's
    private 0600, so a teammate or a tracking server can read it; the temporary file never outlives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.writelines([text] if isinstance(text, str) else text)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def share_files(folder: str | Path) -> None:
    """Give every file under ``folder`` the permissions a new file gets here (0644 under the usual umask):
    some writers (safetensors) create files private (0600), which a teammate or a tracking server that
    serves the artifacts could not read."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            os.chmod(path, 0o666 & ~_UMASK)


def json_safe(obj):
    """``obj`` with every NaN or infinite number as ``None``: the JSON files a run writes hold ``null`` where
    there is no finite number (the score of an empty context's only candidate, a loss that went non-finite),
    never the bare ``NaN`` / ``Infinity`` that Python writes and strict JSON readers (browsers, jq) refuse.
    Numbers that are not Python's (numpy's, torch's 0-d tensors) become floats."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (str, bool, int)) or obj is None:
        return obj
    try:
        number = float(obj)
    except (TypeError, ValueError):
        return obj
    return number if math.isfinite(number) else None


def _strict_encoder(indent: int | None = None) -> json.JSONEncoder:
    """The one JSON encoder of run files: readable characters, ``allow_nan=False`` (refuses anything
    :func:`json_safe` left non-finite), paths and other objects as their text."""
    return json.JSONEncoder(ensure_ascii=False, indent=indent, allow_nan=False, default=str)


def json_text(obj, indent: int | None = None) -> str:
    """Strict JSON of ``obj`` (see :func:`json_safe`)."""
    return _strict_encoder(indent).encode(json_safe(obj))


def write_json(path: str | Path, obj) -> None:
    """``obj`` as strict JSON (:func:`json_text`), streamed: an n-best file of 20,000 questions is never one
    string in memory."""
    write_atomic(path, itertools.chain(_strict_encoder(indent=2).iterencode(json_safe(obj)), ["\n"]))


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    write_atomic(path, "".join(json_text(r) + "\n" for r in rows))


def write_submission(path: str | Path, examples: Sequence[Example], predictions: Sequence[Prediction],
                     strip_commas: bool = False) -> Path:
    """``ID,Answer`` CSV with every example's id exactly once, in file order.

    Answers are quoted by the csv module where needed (correct CSV). ``strip_commas=True`` deletes
    commas from answers instead, as the course's notebook does, for answer keys built that way.
    Newlines inside an answer become spaces: one row per question, whatever reads the file. An id holding
    ``\r`` or ``\n`` is quoted (with Unix line ends the csv module quotes only ``\n`` on its own: a bare ``\r``
    in an id split its row in two for every reader).
    """
    by_id = {p.id: p for p in predictions}
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate question ids: a submission needs exactly one row per id")
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} questions have no prediction (first: {missing[:5]})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    quoting_all = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(["ID", "Answer"])
    for qid in ids:
        answer = by_id[qid].text.replace("\r", " ").replace("\n", " ")
        if strip_commas:
            answer = answer.replace(",", "")
        (quoting_all if "\r" in qid else writer).writerow([qid, answer])
    write_atomic(path, buf.getvalue())
    return path


def nbest_json(predictions: Sequence[Prediction]) -> dict[str, list[dict]]:
    return {p.id: p.nbest or [{"text": p.text, "start": p.start, "end": p.end, "score": p.score, "probability": 1.0}]
            for p in predictions}
