"""Fitting tokenised text to a fixed-shape program: pick the compiled shape, pad, split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def smallest_fit(value: int, sizes: Sequence[int]) -> int | None:
    """The smallest size >= value, or None when value exceeds them all."""
    fitting = [s for s in sorted(sizes) if s >= value]
    return fitting[0] if fitting else None


def plan_batches(num_rows: int, batch_sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Split `num_rows` into runs of compiled batch sizes: a list of (rows used, compiled batch size).

    Full runs of the largest compiled size first, then the smallest size that holds the remainder.
    """
    largest = max(batch_sizes)
    plan = [(largest, largest)] * (num_rows // largest)
    remainder = num_rows % largest
    if remainder:
        plan.append((remainder, smallest_fit(remainder, batch_sizes)))
    return plan


def pad_to_shape(rows: Sequence[Sequence[int]], batch: int, seq_len: int, pad_token_id: int) -> dict[str, np.ndarray]:
    """`input_ids` and `attention_mask` of shape [batch, seq_len], rows right-padded.

    Filler rows (beyond `len(rows)`) hold one unmasked pad token, so no row is fully masked (which would
    make softmax divide by zero); their outputs are discarded.
    """
    input_ids = np.full((batch, seq_len), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((batch, seq_len), dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
    attention_mask[len(rows) :, 0] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
