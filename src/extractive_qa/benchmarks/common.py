"""What every measurement shares: threads, peak RSS, a slice of data with its windows, the model, model FLOPs,
device syncs, and running a measurement in a fresh process so its peak RSS is its own."""

from __future__ import annotations

import json
import multiprocessing as mp
import resource

import numpy as np
from omegaconf import DictConfig, OmegaConf


def set_threads(cfg) -> None:
    """``bench.threads`` torch threads (0: torch's default, all cores)."""
    import torch

    torch.set_num_threads(int(cfg["bench"]["threads"]) or torch.get_num_threads())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def data_slice(cfg: dict, window_name: str, split: str, limit: int):
    """Config, tokenizer, window settings, the first ``limit`` questions of ``split`` encoded, and their
    evaluation windows under a window preset (``default`` or ``seed``)."""
    from ..core.datafiles import load_split
    from ..core.features import window_config
    from ..core.windowing import encode_examples, eval_windows
    from ..engine.modeling import load_tokenizer

    set_threads(cfg)
    c = OmegaConf.create(cfg)
    examples = load_split(c.data, split)
    examples.examples = examples.examples[:limit]
    tokenizer = load_tokenizer(c.model)
    window = window_config(c.bench.windows[window_name])
    enc = encode_examples(examples.examples, tokenizer, window)
    return c, tokenizer, window, enc, eval_windows(enc, window)


def build_model(c: DictConfig):
    import torch

    from ..engine.modeling import load_model

    torch.manual_seed(0)
    return load_model(c.model).eval()


def non_embedding_parameters(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)


def forward_flops(model, lengths: np.ndarray) -> float:
    """Forward FLOPs of windows of ``lengths`` real tokens: sum of T * (2N + 4*L*d*T) -- N non-embedding
    parameters (every weight matrix once per token, a multiply and an add), L layers of width d (attention's
    two T x T products). Checked against torch's ``FlopCounterMode`` (tests/test_bench.py)."""
    config = model.config
    n = non_embedding_parameters(model)
    lengths = np.asarray(lengths, dtype=np.float64)
    return float((lengths * (2 * n + 4 * config.num_hidden_layers * config.hidden_size * lengths)).sum())


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _child(fn, args, queue) -> None:
    try:
        queue.put(fn(*args))
    except BaseException as err:  # noqa: BLE001 - reported to the parent as a JSON line
        queue.put({"error": f"{type(err).__name__}: {err}"})


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a spawned process (its peak RSS is its own), or here when ``bench.isolate`` is false."""
    if not args[0]["bench"].get("isolate", True):  # one process for all (tests): faster, peak RSS shared
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - reported as a JSON line, as from a child
            return {"error": f"{type(err).__name__}: {err}"}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def emit(result):
    for row in result if isinstance(result, list) else [result]:
        print(json.dumps(row, ensure_ascii=False), flush=True)
    return result
