"""Reading a predictions file of any of the shapes people hand in, as ``{question id: answer}``.

* ``ID,Answer`` CSV -- the Kaggle submission (this project's ``test_predictions.csv``/``submission.csv``);
  header names are matched without case (``id``/``ID``; ``answer``/``Answer``/``prediction``);
* JSON lines with ``id`` and ``prediction`` (this project's ``dev_predictions.jsonl``);
* a JSON object ``{id: answer}`` (SQuAD / CMRC2018 style), or ``{id: [n-best entries]}`` (the
  n-best files, whose first entry is the answer).

A file that holds the same id twice, or rows without an id or an answer, is an error that names the
file and the row: an answer is never silently picked or dropped.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .data import DataFormatError

_ID_COLUMNS = ("id", "qid", "question_id")
_ANSWER_COLUMNS = ("answer", "prediction", "prediction_text", "text")


def _put(answers: dict[str, str], path: Path, where: str, qid, answer) -> None:
    if qid is None or answer is None:
        raise DataFormatError(path, where, "a row without an id or an answer", "give every row both")
    qid = str(qid)
    if qid in answers:
        raise DataFormatError(path, where, f"question id {qid!r} appears twice", "keep one answer per question")
    answers[qid] = str(answer)


def _read_csv(path: Path) -> dict[str, str]:
    answers: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        try:
            id_col = next(header.index(c) for c in _ID_COLUMNS if c in header)
            answer_col = next(header.index(c) for c in _ANSWER_COLUMNS if c in header)
        except StopIteration:
            raise DataFormatError(path, "header", f"columns {header} hold no id and answer column",
                                  "use the Kaggle header ID,Answer") from None
        for row in reader:
            line = reader.line_num  # the row's last physical line (a quoted field may span several)
            if not row:
                continue
            if len(row) > len(header):
                # An unquoted comma in an answer (`0,歐,洲`): scoring the first cell alone would be a guess.
                raise DataFormatError(path, f"line {line}", f"{len(row)} cells under a {len(header)}-column header "
                                      f"({row!r})", "quote answers that hold commas (\"歐,洲\"), or write the file "
                                      "with a CSV writer (make predict's submission.csv is)")
            cells = row + [""] * (max(id_col, answer_col) + 1 - len(row))
            _put(answers, path, f"line {line}", cells[id_col], cells[answer_col])
    return answers


def _read_jsonl(path: Path) -> dict[str, str]:
    answers: dict[str, str] = {}
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        row = json.loads(text)
        answer = next((row[c] for c in _ANSWER_COLUMNS if c in row), None)
        _put(answers, path, f"line {line}", row.get("id"), answer)
    return answers


def _read_json(path: Path) -> dict[str, str]:
    raw = json.loads(path.read_text(encoding="utf-8-sig"))
    if not isinstance(raw, dict):
        raise DataFormatError(path, None, f"expected an object {{id: answer}}, got {type(raw).__name__}",
                              "write {\"id\": \"answer\", ...}")
    answers: dict[str, str] = {}
    for qid, value in raw.items():
        if isinstance(value, list):  # an n-best list: its first entry is the answer
            value = (value[0].get("text") if value and isinstance(value[0], dict) else (value[0] if value else ""))
        _put(answers, path, f"id {qid!r}", qid, value)
    return answers


def read_answers(path: str | Path) -> dict[str, str]:
    """``{question id: answer}`` from a predictions file (see the module docstring for the shapes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file")
    head = path.read_text(encoding="utf-8-sig", errors="replace")[:1].strip() if path.stat().st_size else ""
    try:
        if path.suffix.lower() == ".csv" or (head and head not in "{["):
            return _read_csv(path)
        if path.suffix.lower() == ".jsonl":
            return _read_jsonl(path)
        return _read_json(path)
    except json.JSONDecodeError as err:
        raise DataFormatError(path, f"line {err.lineno}", f"invalid JSON ({err.msg})", "repair the file") from err
