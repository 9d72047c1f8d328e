"""Torch datasets over windows and the collator that pads each batch to its own longest window."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..core.windowing import EncodedExamples, WindowConfig, Windows, build_input_ids, train_windows


def window_lengths(enc: EncodedExamples, windows: Windows) -> np.ndarray:
    """Sequence length (special tokens included) of every window."""
    q = np.array([enc.context_offset(int(i)) for i in windows.example_index], dtype=np.int64)
    return q + windows.context_len + len(enc.template.suffix)


def padded_length(length: int, multiple_of: int = 8) -> int:
    return -(-int(length) // multiple_of) * multiple_of


def token_budget_batches(lengths: np.ndarray, max_tokens: int, multiple_of: int = 8) -> list[list[int]]:
    """Window indices, longest first, cut into batches of at most ``max_tokens`` padded tokens.

    A batch costs (windows x its longest window, rounded up to ``multiple_of``): sorting by length
    keeps the padding small, and a budget in tokens rather than windows keeps every batch near the
    size the hardware runs fastest (short windows ride many to a batch, long ones few). A window
    longer than the budget forms a batch of its own.
    """
    batches: list[list[int]] = []
    width = 0
    for w in np.argsort(-np.asarray(lengths), kind="stable").tolist():
        if batches and (len(batches[-1]) + 1) * width <= max_tokens:
            batches[-1].append(w)
        else:
            batches.append([w])
            width = padded_length(lengths[w], multiple_of)
    return batches


class WindowDataset(Dataset):
    """Items ``{"input_ids", "token_type_ids", "index"[, "start_positions", "end_positions"]}`` of windows
    (no ``token_type_ids`` when the tokenizer's template has none)."""

    def __init__(self, enc: EncodedExamples, windows: Windows, with_labels: bool):
        self.enc, self.windows, self.with_labels = enc, windows, with_labels

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, w: int) -> dict:
        i = int(self.windows.example_index[w])
        context_len = int(self.windows.context_len[w])
        ids = build_input_ids(self.enc, i, int(self.windows.context_start[w]), context_len)
        item = {"input_ids": ids, "index": w}
        types = self.enc.template.token_types(len(self.enc.question_ids[i]), context_len)
        if types is not None:
            item["token_type_ids"] = types
        if self.with_labels:
            item["start_positions"] = int(self.windows.start_positions[w])
            item["end_positions"] = int(self.windows.end_positions[w])
        return item


class TrainWindowDataset(WindowDataset):
    """Training windows; ``set_epoch`` re-draws the random offsets (``random_offset`` strategy).

    The draw for epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same windows.
    The number of windows never changes between epochs, so a prepared DataLoader stays valid.
    """

    def __init__(self, enc: EncodedExamples, window: WindowConfig, seed: int):
        self.window_cfg, self.seed, self.epoch = window, seed, 0
        super().__init__(enc, train_windows(enc, window, np.random.default_rng([seed, 0])), with_labels=True)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.window_cfg.train_strategy == "random_offset":
            self.windows = train_windows(self.enc, self.window_cfg, np.random.default_rng([self.seed, epoch]))


class LengthGroupedBatches:
    """Training batches of windows of similar length (HF Trainer's ``group_by_length``), fresh each epoch.

    Shuffle all windows, cut them into mega-batches of ``mega`` batches, sort each mega-batch by
    length and cut it into batches, then shuffle the batch order. Each batch pads to nearly its
    own length (at the default 384-token windows on hw7 this cut padding from 16% of the tokens to
    1%) while batches still mix questions from all over the file. The order depends only on (seed,
    epoch) -- read from the dataset, which the recipe moves to each epoch -- so a resumed run
    replays exactly the same batches.
    """

    def __init__(self, dataset: TrainWindowDataset, batch_size: int, mega: int = 50):
        self.dataset, self.batch_size, self.mega, self.drop_last = dataset, batch_size, mega, False

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.dataset.seed, self.dataset.epoch, 1])
        lengths = window_lengths(self.dataset.enc, self.dataset.windows)
        order = rng.permutation(len(lengths))
        batches = []
        for m in range(0, len(order), self.batch_size * self.mega):
            chunk = order[m : m + self.batch_size * self.mega]
            chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size))
        yield from (batches[i] for i in rng.permutation(len(batches)))


def length_buckets(maxima: np.ndarray, sizes: np.ndarray, k: int, multiple_of: int = 8) -> list[int]:
    """At most ``k`` padded lengths for batches whose longest windows are ``maxima`` (holding ``sizes`` windows each):
    the ones that pad least when each batch pads up to the smallest length that holds it -- an exact dynamic
    programme over the distinct lengths (rounded up to ``multiple_of``), the longest always among them.

    Why: every new padded shape costs a GPU a kernel choice and a compiled graph a recompile; hw7's training windows
    at the default settings gave 28-29 shapes an epoch (one per multiple of 8 from 160 to 384). Eight lengths chosen
    from the data pad 2-3% of the tokens (multiples of 64: 5.4%); ``make bench ARGS="bench.parts=[padding]"``."""
    rounded = np.array([padded_length(m, multiple_of) for m in maxima], dtype=np.int64)
    values = np.unique(rounded)
    if len(values) <= k:
        return values.tolist()
    weight = np.array([sizes[rounded == v].sum() for v in values], dtype=np.float64)
    prefix = np.concatenate([[0.0], np.cumsum(weight)])
    n = len(values)
    # best[j][c]: least padded tokens covering values[0..j] with c lengths, the last at values[j]
    best = np.full((n, k + 1), np.inf)
    back = np.zeros((n, k + 1), dtype=np.int64)
    for j in range(n):
        best[j, 1] = values[j] * prefix[j + 1]
        for c in range(2, k + 1):
            costs = best[:j, c - 1] + values[j] * (prefix[j + 1] - prefix[1 : j + 1])
            if len(costs):
                i = int(np.argmin(costs))
                best[j, c], back[j, c] = costs[i], i
    c = int(np.argmin(best[n - 1, 1:])) + 1
    chosen, j = [], n - 1
    while c >= 1:
        chosen.append(int(values[j]))
        j, c = int(back[j, c]), c - 1
    return sorted(chosen)


class PadCollator:
    """Pads a batch to its longest window, rounded up to ``multiple_of`` (tensor-core / AVX friendly) -- or, with
    ``buckets``, to the smallest of those lengths that holds it (few shapes: :func:`length_buckets`);
    ``fixed_length`` pads every batch to that length instead (the seed's behaviour, for baselines)."""

    def __init__(self, pad_id: int, multiple_of: int = 8, fixed_length: int | None = None,
                 buckets: list[int] | None = None):
        self.pad_id, self.multiple_of, self.fixed_length = pad_id, multiple_of, fixed_length
        self.buckets = sorted(buckets) if buckets else None

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(it["input_ids"]) for it in items)
        length = self.fixed_length or padded_length(longest, self.multiple_of)
        if self.buckets and not self.fixed_length and length <= self.buckets[-1]:
            length = next(b for b in self.buckets if b >= length)
        n = len(items)
        input_ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        typed = "token_type_ids" in items[0]
        token_type_ids = torch.zeros((n, length), dtype=torch.long) if typed else None
        for r, it in enumerate(items):
            k = len(it["input_ids"])
            input_ids[r, :k] = torch.tensor(it["input_ids"])
            attention_mask[r, :k] = 1
            if typed:
                token_type_ids[r, :k] = torch.tensor(it["token_type_ids"])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "index": torch.tensor([it["index"] for it in items]),
                 # On the host, never moved to a device: whether a batch is padded needs no read of the device
                 # (engine/evaluation.py: model_inputs).
                 "full_rows": np.array([len(it["input_ids"]) == length for it in items])}
        if typed:
            batch["token_type_ids"] = token_type_ids
        if "start_positions" in items[0]:
            batch["start_positions"] = torch.tensor([it["start_positions"] for it in items])
            batch["end_positions"] = torch.tensor([it["end_positions"] for it in items])
        return batch


def pad_multiple(setting, compiled: bool) -> int:
    """``pad_to_multiple_of``: a number as given; ``auto`` 64 for a compiled model -- a handful of lengths (64,
    128, ... 512), so it compiles a few shapes once instead of one per length -- else 8 (no waste to speak of)."""
    if setting in (None, "auto"):
        return 64 if compiled else 8
    return int(setting)


def train_buckets(train_set: TrainWindowDataset, batch_size: int, k: int, multiple_of: int = 8) -> list[int] | None:
    """The padded lengths of :func:`length_buckets` for the first epoch's length-grouped batches (the same in every
    run of the same data and seed, a resumed one included); ``None`` when ``k`` is 0 (off)."""
    if not k:
        return None
    lengths = window_lengths(train_set.enc, train_set.windows)
    batches = list(LengthGroupedBatches(train_set, batch_size))
    maxima = np.array([lengths[b].max() for b in batches])
    sizes = np.array([len(b) for b in batches])
    return length_buckets(maxima, sizes, k, multiple_of)


def train_loader(train_set: TrainWindowDataset, batch_size: int, pad_id: int, *, group_by_length: bool,
                 num_workers: int = 0, fixed_length: int | None = None, multiple_of: int = 8,
                 pin_memory: bool = False, buckets: list[int] | None = None) -> DataLoader:
    """Shuffled training batches whose order depends only on (seed, epoch); with ``group_by_length``
    batches of similar length (:class:`LengthGroupedBatches`), so each pads little; with ``buckets``, padded to
    one of those lengths (:func:`train_buckets`). ``pin_memory`` (CUDA): page-locked batches, copied to the GPU
    without blocking the host; ``num_workers``: batches made in worker processes, ahead of the step."""
    # Its own generator, so creating a batch iterator never draws from the global RNG (dropout's).
    common = {"num_workers": num_workers, "pin_memory": pin_memory,
              "collate_fn": PadCollator(pad_id, multiple_of=multiple_of, fixed_length=fixed_length, buckets=buckets),
              "generator": torch.Generator().manual_seed(train_set.seed)}
    if num_workers:
        common["persistent_workers"] = True  # not one new worker pool per epoch
    if group_by_length:
        return DataLoader(train_set, batch_sampler=LengthGroupedBatches(train_set, batch_size), **common)
    return DataLoader(train_set, batch_size=batch_size, shuffle=True, **common)
