"""Reading extractive-QA files into one example type.

Two formats are read:

* the course's **hw7** JSON: ``{"questions": [{"id", "paragraph_id", "question_text", "answer_text",
  "answer_start", "answer_end"}], "paragraphs": [str]}`` where ``answer_end`` is the index of the
  answer's LAST character (inclusive) and test answers are ``null``;
* **SQuAD** JSON (SQuAD v1.1, DRCD, CMRC2018): ``{"data": [{"paragraphs": [{"context", "qas": [{"id",
  "question", "answers": [{"text", "answer_start"}]}]}]}]}`` with several references per question.

Every reference is kept for scoring. The training label is the first reference that can be located
in the context. Real files carry dirty labels; each is repaired to the nearest exact occurrence of the
reference text when there is one, and counted by kind (see :class:`RepairKind`). A malformed file
raises :class:`DataFormatError` naming the file, the record and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

log = logging.getLogger(__name__)


class DataFormatError(InputError):
    """A data file cannot be read as QA data; the message names the file, the record and the fix."""

    def __init__(self, path: str | Path, record: str | None, problem: str, fix: str):
        where = f"{path}" if record is None else f"{path}, record {record}"
        super().__init__(f"{where}: {problem}. Fix: {fix}")
        self.path, self.record, self.problem, self.fix = str(path), record, problem, fix


class RepairKind:
    """Names of the counted repairs and data conditions (keys of ``ExampleSet.repairs``)."""

    UTF16_OFFSET = "utf16_offset"  # answer_start counted in UTF-16 units; moved to the real character
    START_MINUS_ONE = "start_minus_one"  # answer_start == -1 but the text occurs in the context
    SHIFTED = "shifted_to_nearest"  # answer_start did not point at the text; moved to nearest occurrence
    END_MISMATCH = "answer_end_mismatch"  # hw7 answer_end disagreed with the text's length; text wins
    NOT_IN_CONTEXT = "not_in_context"  # reference text absent from the context: scored, never trained on
    EMPTY_ANSWER = "empty_answer"  # empty reference text: dropped
    EMPTY_QUESTION = "empty_question"  # kept; the model sees only the context
    EMPTY_CONTEXT = "empty_context"  # kept; its prediction is the empty string
    NO_TRAINING_LABEL = "no_training_label"  # questions with references but none located
    UNANSWERABLE = "unanswerable"  # SQuAD v2 is_impossible: refused, or dropped with data.unanswerable=drop


@dataclass(slots=True)  # slots: ~100 bytes less per question (a 203 MB training file has 380,000)
class Example:
    """One question over one context.

    ``answers`` holds every reference text (for scoring); ``answer_start``/``answer_text`` hold the
    training label (character offsets into ``context``) or ``None`` when no reference was located.
    ``context_key`` identifies the context so that it is tokenized once however many questions share it.
    """

    id: str
    question: str
    context: str
    context_key: str
    answers: list[str] = field(default_factory=list)
    answer_start: int | None = None
    answer_text: str | None = None

    @property
    def answer_end(self) -> int | None:
        """Exclusive character end of the training label."""
        if self.answer_start is None or self.answer_text is None:
            return None
        return self.answer_start + len(self.answer_text)

    @property
    def has_label(self) -> bool:
        return self.answer_start is not None


@dataclass
class ExampleSet:
    """The examples of one file, the repairs made while reading it, and the file's identity."""

    examples: list[Example]
    repairs: Counter
    path: str
    format: str
    digest: str

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)


def _utf16_to_index(text: str, utf16_offset: int) -> int:
    """Character index of a UTF-16 code-unit offset (characters outside the BMP take two units)."""
    units = 0
    for i, ch in enumerate(text):
        if units >= utf16_offset:
            return i
        units += 2 if ord(ch) > 0xFFFF else 1
    return len(text)


def locate_answer(context: str, text: str, start: int | None) -> tuple[int | None, str | None]:
    """Find where ``text`` sits in ``context`` given a possibly wrong ``start``.

    Returns ``(start, repair_kind)``: the repaired start (``None`` if the text does not occur) and the
    kind of repair made (``None`` when ``start`` was right).
    """
    if start is not None and start >= 0 and context[start : start + len(text)] == text:
        return start, None
    occurrences = []
    pos = context.find(text)
    while pos != -1:
        occurrences.append(pos)
        pos = context.find(text, pos + 1)
    if not occurrences:
        return None, RepairKind.NOT_IN_CONTEXT
    if start is None or start < 0:
        return occurrences[0], RepairKind.START_MINUS_ONE
    utf16_start = _utf16_to_index(context, start)
    if context[utf16_start : utf16_start + len(text)] == text:
        return utf16_start, RepairKind.UTF16_OFFSET
    return min(occurrences, key=lambda p: (abs(p - start), p)), RepairKind.SHIFTED


def _require(record: dict, keys: tuple[str, ...], path: Path, record_id: str, fix_hint: str) -> None:
    if not isinstance(record, dict):
        raise DataFormatError(path, record_id, f"expected an object, got {type(record).__name__}", fix_hint)
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataFormatError(path, record_id, f"missing key(s) {missing}", fix_hint)


def _add_label(example: Example, refs: list[tuple[str, int | None]], repairs: Counter) -> None:
    """Keep every non-empty reference for scoring; label with the first one found in the context."""
    for text, start in refs:
        if text is None or text == "":
            repairs[RepairKind.EMPTY_ANSWER] += 1
            continue
        example.answers.append(text)
        located, kind = locate_answer(example.context, text, start)
        if kind is not None:
            repairs[kind] += 1
            if kind != RepairKind.NOT_IN_CONTEXT:
                log.debug("repaired %s on question %s (%r)", kind, example.id, text)
        if located is not None and example.answer_start is None:
            example.answer_start, example.answer_text = located, text
    if example.answers and example.answer_start is None:
        repairs[RepairKind.NO_TRAINING_LABEL] += 1


def _check_text(example: Example, repairs: Counter) -> None:
    if not example.question.strip():
        repairs[RepairKind.EMPTY_QUESTION] += 1
    if not example.context.strip():
        repairs[RepairKind.EMPTY_CONTEXT] += 1


def _read_hw7(raw: dict, path: Path, repairs: Counter) -> list[Example]:
    """``raw["questions"]`` may be any iterable (a stream): each question becomes an Example as it comes;
    ``raw["paragraphs"]`` holds ``None`` for paragraphs a limited read did not keep."""
    questions, paragraphs = raw["questions"], raw["paragraphs"]
    if not isinstance(questions, list | Iterator) or not isinstance(paragraphs, list):
        raise DataFormatError(path, None, "'questions' and 'paragraphs' must be lists",
                              "rewrite the file in the hw7 format")
    for i, p in enumerate(paragraphs):
        if not isinstance(p, str) and p is not None:
            raise DataFormatError(path, f"paragraphs[{i}]", "paragraph is not a string",
                                  "make every paragraph a string")
    fix = "each question needs id, paragraph_id and question_text (answer_* may be null in test files)"
    examples = []
    for i, q in enumerate(questions):
        rid = f"#{i}" + (f" (id={q.get('id')!r})" if isinstance(q, dict) and "id" in q else "")
        _require(q, ("id", "paragraph_id", "question_text"), path, rid, fix)
        pid = q["paragraph_id"]
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < len(paragraphs) \
                or paragraphs[pid] is None:
            raise DataFormatError(
                path, rid, f"paragraph_id {pid!r} is not an index into the {len(paragraphs)} paragraphs",
                "point paragraph_id at an existing paragraph (0-based)",
            )
        if not isinstance(q["question_text"], str):
            raise DataFormatError(path, rid, "question_text is not a string", "make question_text a string")
        example = Example(
            id=str(q["id"]), question=q["question_text"], context=paragraphs[pid],
            context_key=sys.intern(f"p{pid}"),  # one key string per paragraph, not one per question
        )
        _check_text(example, repairs)
        text = q.get("answer_text")
        if text is not None:
            start, end = q.get("answer_start"), q.get("answer_end")
            if not isinstance(text, str) or (start is not None and not isinstance(start, int)):
                raise DataFormatError(path, rid, "answer_text must be a string and answer_start an integer", fix)
            if text and isinstance(start, int) and isinstance(end, int) and start >= 0 and end - start + 1 != len(text):
                repairs[RepairKind.END_MISMATCH] += 1
            _add_label(example, [(text, start)], repairs)
        examples.append(example)
    return examples


def _read_squad(raw: dict, path: Path, repairs: Counter, unanswerable: str) -> list[Example]:
    if not isinstance(raw["data"], list):
        raise DataFormatError(path, None, "'data' must be a list of articles", "rewrite the file in the SQuAD format")
    examples = []
    for a, article in enumerate(raw["data"]):
        _require(article, ("paragraphs",), path, f"data[{a}]", "each article needs a 'paragraphs' list")
        for p, para in enumerate(article["paragraphs"]):
            pid = f"data[{a}].paragraphs[{p}]"
            _require(para, ("context", "qas"), path, pid, "each paragraph needs 'context' and 'qas'")
            if not isinstance(para["context"], str):
                raise DataFormatError(path, pid, "context is not a string", "make the context a string")
            for k, qa in enumerate(para["qas"]):
                rid = f"{pid}.qas[{k}]" + (f" (id={qa.get('id')!r})" if isinstance(qa, dict) and "id" in qa else "")
                _require(qa, ("id", "question"), path, rid, "each question needs 'id' and 'question'")
                if not isinstance(qa["question"], str):
                    raise DataFormatError(path, rid, "question is not a string", "make the question a string")
                if qa.get("is_impossible") is True:
                    repairs[RepairKind.UNANSWERABLE] += 1
                    if unanswerable != "drop":
                        raise DataFormatError(
                            path, rid, "a SQuAD v2 unanswerable question (is_impossible: true); this project answers "
                            "every question with a span of its context, so it can neither train nor score these",
                            "set data.unanswerable=drop to leave them out (they are counted in the data report), or "
                            "remove them from the file")
                    continue
                example = Example(id=str(qa["id"]), question=qa["question"], context=para["context"], context_key=pid)
                _check_text(example, repairs)
                answers = qa.get("answers") or []
                if not isinstance(answers, list):
                    raise DataFormatError(path, rid, "'answers' is not a list",
                                          "make 'answers' a list of {text, answer_start}")
                refs = []
                for j, ans in enumerate(answers):
                    _require(ans, ("text",), path, f"{rid}.answers[{j}]",
                             "each answer needs 'text' (and 'answer_start')")
                    start = ans.get("answer_start")
                    refs.append((ans["text"], start if isinstance(start, int) else None))
                _add_label(example, refs, repairs)
                examples.append(example)
    return examples


def file_digest(path: str | Path) -> str:
    """Short content hash of a file: identifies the data a run used (MLflow inputs, feature cache)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


_COMPRESSED = {b"PK\x03\x04": "a zip archive", b"BZh": "bzip2-compressed", b"\xfd7zXZ\x00": "xz-compressed",
               b"\x28\xb5\x2f\xfd": "zstd-compressed"}


def _reject_constant(name: str):
    raise ValueError(name)


class _DuplicateKey(ValueError):
    def __init__(self, key: str, record):
        super().__init__(key)
        self.key, self.record = key, record


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    """An object with a key twice (``{"answer_text": "台北", "answer_text": "高雄"}``): JSON readers silently keep the
    last, so which one a file means is a guess -- refused, naming the record (its ``id``) and the key."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            record = dict(pairs).get("id")
            raise _DuplicateKey(key, record)
        out[key] = value
    return out


def _load_json(path: Path) -> Any:
    """Parse a data file: UTF-8 (a BOM is fine), gzip read transparently; NaN / Infinity literals,
    other compressions and other encodings are errors that say what to do."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    for magic, kind in _COMPRESSED.items():
        if data.startswith(magic):
            raise DataFormatError(path, None, f"the file is {kind}, not JSON",
                                  "unpack it and point the config at the JSON file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, None, f"not UTF-8 text ({err.reason} at byte {err.start})",
                              "save the file as UTF-8") from err
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_refuse_duplicate_keys)
    except _DuplicateKey as err:
        raise DataFormatError(path, None if err.record is None else str(err.record),
                              f"the key {err.key!r} appears twice in one object (JSON readers silently keep the last)",
                              "keep one of them") from None
    except json.JSONDecodeError as err:
        raise DataFormatError(path, None, f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}",
                              "repair the JSON (e.g. `python -m json.tool FILE` shows where)") from err
    except ValueError as err:  # NaN, Infinity or -Infinity: not JSON, and a nan id or offset would slip through
        line = next((i + 1 for i, row in enumerate(text.splitlines()) if str(err) in row), "?")
        raise DataFormatError(path, None, f"the non-standard JSON literal {err} (first on line {line})",
                              "write null or a number there; JSON has no NaN or Infinity") from err


STREAM_ABOVE = 32 * 2**20  # an hw7 file larger than this is read streaming (a limited read always is)


class _NoDuplicates(dict):
    """A JSON object that refuses a key twice (see :func:`_refuse_duplicate_keys`), for the streaming reader."""

    def __setitem__(self, key, value):
        if key in self:
            raise _DuplicateKey(key, self.get("id"))
        super().__setitem__(key, value)


def _open_json(path: Path):
    """The file as bytes, gzip undone, a UTF-8 BOM skipped."""
    with open(path, "rb") as probe:
        head = probe.read(3)
    f = gzip.open(path, "rb") if head[:2] == b"\x1f\x8b" else open(path, "rb")
    if f.read(3) != b"\xef\xbb\xbf":
        f.seek(0)
    return f


def _looks_hw7(path: Path) -> bool:
    import ijson

    try:
        with _open_json(path) as f:
            for prefix, event, value in ijson.parse(f):
                if prefix == "" and event == "map_key":
                    return value in ("questions", "paragraphs")
                if event not in ("start_map",):
                    return False
    except Exception:  # noqa: BLE001 - not readable as a stream: the full reader says what is wrong
        return False
    return False


def _stream_hw7(path: Path, limit: int | None) -> dict:
    """An hw7 file read as a stream (ijson), holding only what is kept: with ``limit``, the first questions and the
    paragraphs they use (the file's other questions are never built); without, every paragraph, then the
    questions one at a time (each becomes an Example before the next is read)."""
    import ijson

    def items(prefix: str):
        with _open_json(path) as f:
            yield from ijson.items(f, prefix, map_type=_NoDuplicates, use_float=True)

    if limit is not None:
        questions = []
        for q in items("questions.item"):
            questions.append(q)
            if len(questions) >= limit:
                break
        needed = {q.get("paragraph_id") for q in questions if isinstance(q, dict)}
        return {"questions": questions, "paragraphs": _whole_file_paragraphs(path, needed)}
    return {"questions": items("questions.item"), "paragraphs": _whole_file_paragraphs(path)}


def _whole_file_paragraphs(path: Path, needed: set | None = None) -> list:
    """The ``paragraphs`` list, read in one pass over the whole file that also refuses a top-level key given twice
    (``{"questions": [...], "questions": [...]}``): a limited read stops early in the questions, so without this pass
    a repeated key would be refused without a limit and trained on silently with one. Paragraphs are strings, so they
    are taken from the parser's events as they come (the pass costs ~1 s per 5M events, on a 200 MB file).
    ``needed``: keep only these paragraphs (a limited read's), the others ``None`` -- 40 questions hold 40 paragraphs,
    not the file's."""
    import ijson

    keys: set[str] = set()
    paragraphs: list = []
    with _open_json(path) as f:
        for prefix, event, value in ijson.parse(f, use_float=True):
            if prefix == "paragraphs.item":
                if event in ("string", "number", "null", "boolean", "start_map", "start_array"):
                    keep = needed is None or len(paragraphs) in needed
                    paragraphs.append((value if event not in ("start_map", "start_array") else _NotAString())
                                      if keep else None)
            elif prefix == "" and event == "map_key":
                if value in keys:
                    raise _DuplicateKey(value, None)
                keys.add(value)
    return paragraphs


class _NotAString:
    """A paragraph that is an object or a list: the hw7 reader says which record refers to it and why it is wrong."""

    def __repr__(self) -> str:
        return "<not a string>"


def read_examples(path: str | Path, require_questions: bool = True, unanswerable: str = "error",
                  limit: int | None = None) -> ExampleSet:
    """Read an hw7 or SQuAD-format file (detected from its top-level keys) into an :class:`ExampleSet`.

    SQuAD v2 unanswerable questions (``is_impossible``) are counted; ``unanswerable="error"`` refuses
    the file (this project answers every question with a span), ``"drop"`` leaves them out.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    repairs: Counter = Counter()
    if (limit is not None or path.stat().st_size > STREAM_ABOVE) and _looks_hw7(path):
        try:
            examples = _read_hw7(_stream_hw7(path, limit), path, repairs)
        except _DuplicateKey as err:
            raise DataFormatError(path, None if err.record is None else str(err.record),
                                  f"the key {err.key!r} appears twice in one object (JSON readers silently keep the "
                                  "last)", "keep one of them") from None
        except DataFormatError:
            raise
        except Exception:  # noqa: BLE001 - a stream that fails to parse: the full reader names the line and the fix
            _load_json(path)
            raise
        return _example_set(path, "hw7", examples, repairs, require_questions)
    raw: Any = _load_json(path)
    if isinstance(raw, dict) and "questions" in raw and "paragraphs" in raw:
        fmt, examples = "hw7", _read_hw7(raw, path, repairs)
    elif isinstance(raw, dict) and "data" in raw:
        fmt, examples = "squad", _read_squad(raw, path, repairs, unanswerable)
    else:
        shape = sorted(raw)[:5] if isinstance(raw, dict) else type(raw).__name__
        raise DataFormatError(path, None, f"unknown top-level shape {shape}",
                              "use the hw7 format {questions, paragraphs} or the SQuAD format {data: [...]}")
    if limit is not None:
        examples = examples[:limit]
    return _example_set(path, fmt, examples, repairs, require_questions)


def _example_set(path: Path, fmt: str, examples: list[Example], repairs: Counter,
                 require_questions: bool) -> ExampleSet:
    if require_questions and not examples:
        dropped = repairs[RepairKind.UNANSWERABLE]
        dropped = f" ({dropped} unanswerable ones were dropped)" if dropped else ""
        raise DataFormatError(path, None, f"the file holds no questions{dropped}",
                              "point the data config at a file with (answerable) questions")
    seen: dict[str, int] = {}
    for i, e in enumerate(examples):
        if e.id in seen:
            raise DataFormatError(path, f"#{i} (id={e.id!r})", f"duplicate question id (first at #{seen[e.id]})",
                                  "give every question a unique id: predictions are keyed by it")
        seen[e.id] = i
    if repairs:
        log.info("%s: %d questions, repairs %s", path, len(examples), dict(repairs))
    return ExampleSet(examples=examples, repairs=repairs, path=str(path), format=fmt, digest=file_digest(path))
