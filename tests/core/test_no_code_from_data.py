"""Nothing a run reads back can run code: the feature cache is numbers (``.npy`` without pickles, JSON), a
crafted cache file is rebuilt with a warning and its payload never runs, and no reader in the package
unpickles (a scan of the source)."""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import numpy as np

from extractive_qa.core.data import read_examples
from extractive_qa.core.features import encode_cached
from extractive_qa.core.windowing import WindowConfig

from helpers import hw7_file, hw7_question

SRC = Path(__file__).resolve().parents[2] / "src" / "extractive_qa"


class _Payload:
    """Unpickling this creates the marker file: what a hostile cache file would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _lists(rows) -> list:
    return [list(map(int, r)) for r in rows]


def test_a_crafted_cache_file_runs_no_code_and_is_rebuilt(tmp_path, char_tokenizer, caplog):
    path = hw7_file(tmp_path / "d.json", ["台北是城市。"], [hw7_question(1, 0, "哪裡？", "台北", 0)])
    examples = read_examples(path)
    window = WindowConfig()
    first = encode_cached(examples, char_tokenizer, window, tmp_path / "cache")
    (cached,) = [p for p in (tmp_path / "cache" / "features").iterdir() if (p / "features.json").is_file()]
    marker = tmp_path / "pwned"
    # Same names, hostile content: an array file of pickled objects, and a plain pickle beside it.
    np.save(cached / "question_ids.npy", np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    (cached / "question_ids.pkl").write_bytes(pickle.dumps(_Payload(str(marker))))
    with caplog.at_level(logging.WARNING):
        again = encode_cached(examples, char_tokenizer, window, tmp_path / "cache")
    assert not marker.exists()  # nothing ran
    assert f"feature cache {cached} failed its check" in caplog.text  # named, and rebuilt
    assert _lists(again.question_ids) == _lists(first.question_ids)
    assert _lists(again.context_ids) == _lists(first.context_ids)
    # A cache entry whose numbers were altered is caught by its digest, not trusted.
    ids = np.load(cached / "question_ids.npy", allow_pickle=False)
    np.save(cached / "question_ids.npy", ids + 1)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        third = encode_cached(examples, char_tokenizer, window, tmp_path / "cache")
    assert "do not match their digest" in caplog.text and _lists(third.question_ids) == _lists(first.question_ids)


def test_no_reader_in_the_package_unpickles():
    """The MLflow pyfunc model is the one place unpickling is inherent (MLflow's own loader): not this code."""
    unsafe = re.compile(r"pickle\.loads?\(|allow_pickle\s*=\s*True|weights_only\s*=\s*False|torch\.load\(")
    found = [f"{p.relative_to(SRC)}:{n}: {line.strip()}" for p in SRC.rglob("*.py")
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if unsafe.search(line)]
    assert not found, found
