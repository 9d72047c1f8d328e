"""From a config and a data split to tokenized windows, cached on disk between runs.

The cache holds numbers only, in a format that cannot run code when read: a numpy ``.npz`` of integer arrays
and JSON text, loaded with ``allow_pickle=False``. A cache folder may be shared or copied (a lab's
``EXTRACTIVE_QA_CACHE`` on a shared disk): a pickle there would run whatever code its writer put in it. Each
file records the digest of what it was made from (the data file, the question count, the tokenizer, the
question length) and of its own arrays; a file whose check fails is rebuilt, with a warning naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .data import ExampleSet
from .windowing import EncodedExamples, PairTemplate, WindowConfig, encode_examples

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: .npz + JSON, no pickle (2: windows laid out by the tokenizer's pair template)


def window_config(cfg: DictConfig) -> WindowConfig:
    return WindowConfig(**OmegaConf.to_container(cfg, resolve=True))


def _tokenizer_fingerprint(tokenizer) -> str:
    # The backend tokenizer's JSON covers vocabulary, normalizer and pre-tokenizer settings.
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def _ragged(rows) -> tuple[np.ndarray, np.ndarray]:
    """A list of int sequences as (flat values, row starts with the end appended)."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]) if rows else np.zeros(0, np.int64)
    return flat, starts


def _unragged(flat: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    return [flat[starts[i]:starts[i + 1]] for i in range(len(starts) - 1)]


def _arrays(enc: EncodedExamples) -> dict[str, np.ndarray]:
    q_flat, q_starts = _ragged(enc.question_ids)
    c_flat, c_starts = _ragged(enc.context_ids)
    offsets = (np.concatenate([np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in enc.context_offsets])
               if enc.context_offsets else np.zeros((0, 2), np.int64))
    meta = {"template": {"prefix": list(enc.template.prefix), "middle": list(enc.template.middle),
                         "suffix": list(enc.template.suffix), "pad_id": enc.template.pad_id,
                         "type_ids": list(enc.template.type_ids) if enc.template.type_ids is not None else None},
            "stats": dict(enc.stats)}
    return {"question_ids": q_flat, "question_starts": q_starts, "context_index": np.asarray(enc.context_index,
                                                                                              dtype=np.int64),
            "context_ids": c_flat, "context_starts": c_starts, "context_offsets": offsets,
            "meta": np.array(json.dumps(meta))}


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def _read(path: Path, key: str, examples: ExampleSet) -> EncodedExamples:
    """The cached features at ``path``, checked: made from ``key``, arrays unchanged, one row per question."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if name not in ("key", "digest")}
        made_from, digest = str(data["key"]), str(data["digest"])
    if made_from != key:
        raise ValueError("made from other data or settings")
    if _digest(arrays) != digest:
        raise ValueError("its arrays do not match their digest")
    meta = json.loads(str(arrays["meta"]))
    t = meta["template"]
    template = PairTemplate(tuple(t["prefix"]), tuple(t["middle"]), tuple(t["suffix"]), int(t["pad_id"]),
                            tuple(t["type_ids"]) if t["type_ids"] is not None else None)
    question_ids = [r.astype(np.int32) for r in _unragged(arrays["question_ids"], arrays["question_starts"])]
    if len(question_ids) != len(examples) or len(arrays["context_index"]) != len(examples):
        raise ValueError(f"{len(question_ids)} questions where the data has {len(examples)}")
    context_ids = [r.astype(np.int32) for r in _unragged(arrays["context_ids"], arrays["context_starts"])]
    offsets = [o.astype(np.int32) for o in _unragged(arrays["context_offsets"], arrays["context_starts"])]
    return EncodedExamples(examples=list(examples.examples), question_ids=question_ids,
                           context_index=arrays["context_index"].tolist(), context_ids=context_ids,
                           context_offsets=offsets, template=template, stats=Counter(meta["stats"]))


def encode_cached(examples: ExampleSet, tokenizer, window: WindowConfig,
                  cache_dir: str | Path | None) -> EncodedExamples:
    """:func:`encode_examples`, memoised on disk by (file digest, question count, tokenizer, question length).

    Only tokenization is cached: window placement is cheap and depends on settings a sweep varies.
    """
    if cache_dir is None:
        return encode_examples(examples.examples, tokenizer, window)
    key = json.dumps([CACHE_VERSION, examples.digest, len(examples), _tokenizer_fingerprint(tokenizer),
                      window.max_question_len])
    path = Path(cache_dir) / "features" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
    if path.is_file():
        try:
            enc = _read(path, key, examples)
            log.info("features from cache %s", path)
            return enc
        except Exception as err:  # noqa: BLE001 - a cache entry that fails its check is rebuilt, never fatal
            log.warning("feature cache %s failed its check (%s): rebuilding it", path, err)
    enc = encode_examples(examples.examples, tokenizer, window)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _arrays(enc)
    tmp = path.with_name(f"{path.stem}.tmp{id(enc)}.npz")
    np.savez(tmp, key=np.array(key), digest=np.array(_digest(arrays)), **arrays)
    tmp.replace(path)
    return enc
