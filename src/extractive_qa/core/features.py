"""From a config and a data split to tokenized windows, cached on disk between runs.

The cache holds numbers only, in a format that cannot run code when read: a folder of numpy ``.npy`` integer
arrays and JSON text, loaded with ``allow_pickle=False`` (memory-mapped: only what is used is read). A cache folder
may be shared or copied (a lab's ``EXTRACTIVE_QA_CACHE`` on a shared disk): a pickle there would run whatever code
its writer put in it. Each entry records the digest of what it was made from (the data file, the question count,
the tokenizer, the question length) and of its own arrays; an entry whose check fails is rebuilt, with a warning
naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .data import ExampleSet
from .windowing import EncodedExamples, PairTemplate, Ragged, WindowConfig, encode_examples

log = logging.getLogger(__name__)

# 5: answer spans stored, offsets only where asked; 4: a folder of .npy arrays in their compact types, memory-mapped
# (3: one .npz of int64 arrays)
CACHE_VERSION = 5
ARRAYS = ("question_ids", "question_starts", "context_index", "context_ids", "context_starts", "answer_spans")
OFFSETS = "context_offsets"  # only in entries encoded with offsets (dev, test)


def window_config(cfg: DictConfig) -> WindowConfig:
    return WindowConfig(**OmegaConf.to_container(cfg, resolve=True))


def _tokenizer_fingerprint(tokenizer) -> str:
    # The backend tokenizer's JSON covers vocabulary, normalizer and pre-tokenizer settings.
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def _arrays(enc: EncodedExamples) -> dict[str, np.ndarray]:
    """The encoded examples as their own flat arrays (no copies: the ragged rows' values and starts)."""
    arrays = {"question_ids": enc.question_ids.values, "question_starts": enc.question_ids.starts,
              "context_index": np.asarray(enc.context_index), "context_ids": enc.context_ids.values,
              "context_starts": enc.context_ids.starts, "answer_spans": enc.answer_spans}
    if enc.context_offsets is not None:
        arrays[OFFSETS] = enc.context_offsets.values
    return arrays


def _meta(enc: EncodedExamples) -> dict:
    t = enc.template
    return {"template": {"prefix": list(t.prefix), "middle": list(t.middle), "suffix": list(t.suffix),
                         "pad_id": t.pad_id, "type_ids": list(t.type_ids) if t.type_ids is not None else None},
            "stats": dict(enc.stats)}


def _digest(arrays: dict[str, np.ndarray], meta: dict) -> str:
    """One digest of the arrays' bytes, types and shapes and of the metadata -- read through memoryviews: hashing a
    memory-mapped array does not copy it (``tobytes`` did: a second copy of a 1 GB cache in memory)."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _read(folder: Path, key: str, examples: ExampleSet) -> EncodedExamples:
    """The cached features in ``folder``, checked: made from ``key``, arrays unchanged, one row per question. The
    arrays stay memory-mapped: only what training touches is read, and only once."""
    record = json.loads((folder / "features.json").read_text())
    if record.get("key") != key:
        raise ValueError("made from other data or settings")
    names = (*ARRAYS, OFFSETS) if record.get("offsets") else ARRAYS
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in names}
    if _digest(arrays, record["meta"]) != record.get("digest"):
        raise ValueError("its arrays do not match their digest")
    t = record["meta"]["template"]
    template = PairTemplate(tuple(t["prefix"]), tuple(t["middle"]), tuple(t["suffix"]), int(t["pad_id"]),
                            tuple(t["type_ids"]) if t["type_ids"] is not None else None)
    if len(arrays["question_starts"]) - 1 != len(examples) or len(arrays["context_index"]) != len(examples):
        raise ValueError(f"{len(arrays['question_starts']) - 1} questions where the data has {len(examples)}")
    return EncodedExamples(examples=list(examples.examples),
                           question_ids=Ragged(arrays["question_ids"], arrays["question_starts"]),
                           context_index=arrays["context_index"],
                           context_ids=Ragged(arrays["context_ids"], arrays["context_starts"]),
                           answer_spans=arrays["answer_spans"],
                           context_offsets=(Ragged(arrays[OFFSETS], arrays["context_starts"]) if OFFSETS in arrays
                                            else None),
                           template=template, stats=Counter(record["meta"]["stats"]))


def _write(folder: Path, key: str, enc: EncodedExamples) -> None:
    """The features into ``folder`` (a temporary sibling renamed into place: a reader never sees half of it)."""
    import shutil

    arrays, meta = _arrays(enc), _meta(enc)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", array, allow_pickle=False)
    (tmp / "features.json").write_text(json.dumps({"key": key, "digest": _digest(arrays, meta), "meta": meta,
                                                   "offsets": OFFSETS in arrays}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def encode_cached(examples: ExampleSet, tokenizer, window: WindowConfig,
                  cache_dir: str | Path | None, offsets: bool = True) -> EncodedExamples:
    """:func:`encode_examples`, memoised on disk by (file digest, question count, tokenizer, question length,
    offsets kept or not).

    Only tokenization is cached: window placement is cheap and depends on settings a sweep varies. The cache holds
    each array in the type it was made in (BERT's ids in 2 bytes, a paragraph's offsets in 2 + 2): no larger than
    the file's tokens need -- a training split, encoded without offsets, 2 bytes a token.
    """
    if cache_dir is None:
        return encode_examples(examples.examples, tokenizer, window, offsets)
    key = json.dumps([CACHE_VERSION, examples.digest, len(examples), _tokenizer_fingerprint(tokenizer),
                      window.max_question_len, offsets])
    folder = Path(cache_dir) / "features" / hashlib.sha256(key.encode()).hexdigest()[:24]
    if (folder / "features.json").is_file():
        try:
            enc = _read(folder, key, examples)
            log.info("features from cache %s", folder)
            return enc
        except Exception as err:  # noqa: BLE001 - a cache entry that fails its check is rebuilt, never fatal
            log.warning("feature cache %s failed its check (%s): rebuilding it", folder, err)
    enc = encode_examples(examples.examples, tokenizer, window, offsets)
    _write(folder, key, enc)
    return enc
