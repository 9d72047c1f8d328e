"""From a config and a data split to tokenized windows, cached on disk between runs."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .data import ExampleSet
from .windowing import EncodedExamples, WindowConfig, encode_examples

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: windows laid out by the tokenizer's pair template


def window_config(cfg: DictConfig) -> WindowConfig:
    return WindowConfig(**OmegaConf.to_container(cfg, resolve=True))


def _tokenizer_fingerprint(tokenizer) -> str:
    # The backend tokenizer's JSON covers vocabulary, normalizer and pre-tokenizer settings.
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def encode_cached(examples: ExampleSet, tokenizer, window: WindowConfig,
                  cache_dir: str | Path | None) -> EncodedExamples:
    """:func:`encode_examples`, memoised on disk by (file digest, question count, tokenizer, question length).

    Only tokenization is cached: window placement is cheap and depends on settings a sweep varies.
    """
    if cache_dir is None:
        return encode_examples(examples.examples, tokenizer, window)
    key = json.dumps([CACHE_VERSION, examples.digest, len(examples), _tokenizer_fingerprint(tokenizer),
                      window.max_question_len])
    path = Path(cache_dir) / "features" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pkl"
    if path.is_file():
        try:
            with open(path, "rb") as f:
                enc = pickle.load(f)
            enc.examples = list(examples.examples)  # the examples themselves are re-read, not cached
            log.info("features from cache %s", path)
            return enc
        except Exception as err:  # noqa: BLE001 - a broken cache entry is rebuilt, never fatal
            log.warning("ignoring unreadable feature cache %s (%s)", path, err)
    enc = encode_examples(examples.examples, tokenizer, window)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{id(enc)}")
    examples_kept, enc.examples = enc.examples, []
    with open(tmp, "wb") as f:
        pickle.dump(enc, f, protocol=pickle.HIGHEST_PROTOCOL)
    enc.examples = examples_kept
    tmp.replace(path)
    return enc
