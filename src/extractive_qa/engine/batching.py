"""Torch datasets over windows and the collator that pads each batch to its own longest window."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.windowing import (
    EncodedExamples,
    WindowConfig,
    Windows,
    build_input_ids,
    context_offset_in_sequence,
    train_windows,
)


def window_lengths(enc: EncodedExamples, windows: Windows) -> np.ndarray:
    """Sequence length (special tokens included) of every window."""
    q = np.array([context_offset_in_sequence(enc, int(i)) for i in windows.example_index], dtype=np.int64)
    return q + windows.context_len + 1


class WindowDataset(Dataset):
    """Items ``{"input_ids", "token_type_ids", "index"[, "start_positions", "end_positions"]}`` of windows."""

    def __init__(self, enc: EncodedExamples, windows: Windows, with_labels: bool):
        self.enc, self.windows, self.with_labels = enc, windows, with_labels

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, w: int) -> dict:
        i = int(self.windows.example_index[w])
        ids = build_input_ids(self.enc, i, int(self.windows.context_start[w]), int(self.windows.context_len[w]))
        first = context_offset_in_sequence(self.enc, i)
        item = {"input_ids": ids, "token_type_ids": [0] * first + [1] * (len(ids) - first), "index": w}
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
        self.window_cfg, self.seed = window, seed
        super().__init__(enc, train_windows(enc, window, np.random.default_rng([seed, 0])), with_labels=True)

    def set_epoch(self, epoch: int) -> None:
        if self.window_cfg.train_strategy == "random_offset":
            self.windows = train_windows(self.enc, self.window_cfg, np.random.default_rng([self.seed, epoch]))


class PadCollator:
    """Pads a batch to its longest window, rounded up to ``multiple_of`` (tensor-core / AVX friendly);
    ``fixed_length`` pads every batch to that length instead (the seed's behaviour, for baselines)."""

    def __init__(self, pad_id: int, multiple_of: int = 8, fixed_length: int | None = None):
        self.pad_id, self.multiple_of, self.fixed_length = pad_id, multiple_of, fixed_length

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(it["input_ids"]) for it in items)
        length = self.fixed_length or -(-longest // self.multiple_of) * self.multiple_of
        n = len(items)
        input_ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        token_type_ids = torch.zeros((n, length), dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        for r, it in enumerate(items):
            k = len(it["input_ids"])
            input_ids[r, :k] = torch.tensor(it["input_ids"])
            token_type_ids[r, :k] = torch.tensor(it["token_type_ids"])
            attention_mask[r, :k] = 1
        batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
                 "index": torch.tensor([it["index"] for it in items])}
        if "start_positions" in items[0]:
            batch["start_positions"] = torch.tensor([it["start_positions"] for it in items])
            batch["end_positions"] = torch.tensor([it["end_positions"] for it in items])
        return batch
