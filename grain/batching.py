"""Batches of encoded features: dynamic padding and length-grouped sampling, deterministic for a seed.

Padding each batch only to its own longest row, and drawing batches whose rows have similar lengths,
is what makes CPU training affordable: SST-2 averages 13 tokens, random batches of 32 pad to about 40,
grouped ones to about 13, which halves an epoch (`../shared/notes/toolchain.md` §8).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch

INPUT_KEYS = ("input_ids", "token_type_ids")
LABEL_KEYS = ("labels", "start_positions", "end_positions")
MEGABATCH = 50  # batches per length-sorted chunk (the Hugging Face Trainer's LengthGroupedSampler uses 50)
IGNORE_INDEX = -100


def feature_lengths(features: datasets.Dataset) -> np.ndarray:
    """Tokens per row of `features` (from the Arrow lengths of `input_ids`, without decoding rows)."""
    table = features.select_columns(["input_ids"]).with_format("arrow")[:]
    return pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False).astype(np.int64)


def batch_indices(lengths: Sequence[int], batch_size: int, shuffle: bool = False, group_by_length: bool = True,
                  seed: int = 0) -> list[list[int]]:
    """Row indices of each batch.

    shuffle=False: consecutive rows in dataset order (outputs line up with features).
    shuffle=True, group_by_length=False: a seeded random permutation cut into batches.
    shuffle=True, group_by_length=True: the permutation is cut into mega-batches of MEGABATCH
    batches, each sorted by length and cut into batches, and the order of all batches is shuffled.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(lengths)
    if not shuffle:
        return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    if not group_by_length:
        return [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
    lengths = np.asarray(lengths)
    batches = []
    step = batch_size * MEGABATCH
    for start in range(0, n, step):
        chunk = order[start:start + step]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batch_indices(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of rows sorted by length, longest first (for inference: least padding, order restored by the caller)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def _pad(rows: list[list], value: float, dtype: torch.dtype) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


def collate(rows: dict[str, list], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a batch (column -> list of rows) to its longest row; keep model inputs and label keys only.

    `attention_mask` is 1 on every real token; token labels pad with -100; `labels` are float when
    the column is (regression), else long.
    """
    ids = rows["input_ids"]
    batch = {"input_ids": _pad(ids, pad_token_id, torch.long),
             "attention_mask": _pad([[1] * len(r) for r in ids], 0, torch.long)}
    if "token_type_ids" in rows:
        batch["token_type_ids"] = _pad(rows["token_type_ids"], 0, torch.long)
    for key in LABEL_KEYS:
        if key not in rows:
            continue
        values = rows[key]
        if values and isinstance(values[0], (list, tuple)):
            batch[key] = _pad(values, IGNORE_INDEX, torch.long)
        else:
            floating = any(isinstance(v, float) for v in values)
            batch[key] = torch.tensor(values, dtype=torch.float32 if floating else torch.long)
    return batch


class Loader:
    """A re-iterable loader: each pass draws a new seeded order (seed + epoch) when shuffling."""

    def __init__(self, features: datasets.Dataset, pad_token_id: int, batch_size: int, shuffle: bool,
                 group_by_length: bool, seed: int) -> None:
        keys = [k for k in (*INPUT_KEYS, *LABEL_KEYS) if k in features.column_names]
        self.features = features.select_columns(keys).with_format(None)
        self.lengths = feature_lengths(features)
        self.pad_token_id, self.batch_size = pad_token_id, batch_size
        self.shuffle, self.group_by_length, self.seed = shuffle, group_by_length, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the order of `epoch` (passes otherwise count up from 0)."""
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        """The row indices of every batch of one pass."""
        return batch_indices(self.lengths, self.batch_size, self.shuffle, self.group_by_length, self.seed + epoch)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for indices in self.batches(epoch):
            yield collate(self.features[indices], self.pad_token_id)


def make_loader(features: datasets.Dataset, tokenizer: Any, batch_size: int, shuffle: bool = False,
                group_by_length: bool = True, seed: int = 0) -> Loader:
    """Batches of `features` ready for `model(**batch)`: inputs plus `labels` or `start/end_positions`.

    Args:
        features: the output of `Task.encode`.
        tokenizer: supplies `pad_token_id`.
        batch_size: rows per batch (the last one may be smaller).
        shuffle: draw a new seeded order each pass; without it, rows come in dataset order.
        group_by_length: when shuffling, batch rows of similar length together.
        seed: the order of pass k depends only on seed + k.
    """
    pad = getattr(tokenizer, "pad_token_id", None)
    return Loader(features, 0 if pad is None else int(pad), batch_size, shuffle, group_by_length, seed)
