"""Prefix caching over the cache rows of a continuous-batching program.

Each of the program's `full_batch_size` KV-cache rows holds the keys and values of the tokens written into it, at
positions 0, 1, ... A row keeps them after its request ends, until another request is placed in it. A new request
whose prompt begins with tokens some row already holds needs to prefill only the rest:

- if that row is free, the request takes it and its KV stays where it is;
- if it is running another request, the prefix's KV is copied into a free row (a copy of a few slots per layer,
  far cheaper than running the model over them).

Otherwise the request takes the least recently used free row, evicting what that row held. Reuse goes to the token,
except that the prompt's last token is always prefilled (its logits give the first new token), and that where the
prefill chunks from there would run past the cache (fused attention runs a chunk whole), it is rounded down to whole
chunks, whose prefill then ends within the context.

Correct for caches whose slot p holds position p in every layer, as QEfficient's KV caches do (a sliding-window
layer keeps every slot too; its window is a mask): `supports_prefix_caching` checks that on the program. Recurrent
state (state-space and linear-attention layers) sums up the whole sequence and cannot be cut at a prefix: models
with it prefill every prompt whole.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from QEfficient.backends.base import Program, state_arrays


def supports_prefix_caching(program: Program, ctx_len: int, left_padding: bool) -> bool:
    """Whether every retained state of `program` is a KV cache whose slot p is position p (dims `[rows, heads,
    ctx_len, head_dim]`), so that a row's first slots can be reused or copied for a shared prefix."""
    names = program.state_names()
    kv = all(name.startswith(("past_key.", "past_value.")) for name in names)
    return bool(names) and kv and not left_padding and all(program.input_dims[n][2] == ctx_len for n in names)


@dataclass(frozen=True)
class Placement:
    """Where a new request goes: its cache row, how many of its prompt tokens that row will already hold, and the
    row to copy them from (None: they are there already)."""

    row: int
    reused: int
    copy_from: int | None = None


class PrefixCache:
    """The tokens whose KV each cache row holds, and the choice of a row for a new request."""

    def __init__(self, rows: int, chunk: int, ctx_len: int, enabled: bool = True) -> None:
        self.chunk, self.ctx_len = chunk, ctx_len
        self.enabled = enabled
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.adapters = [-1] * rows  # the LoRA adapter slot each row's KV was computed with (-1: none)
        self._clock = itertools.count(1)
        self.last_used = [0] * rows

    def place(self, prompt: list[int], free: list[int], adapter: int = -1) -> Placement:
        """Choose one of the `free` rows for `prompt`, and the prefix it reuses (never the last token). A prefix is
        reused only from a row computed with the same LoRA `adapter` slot (its keys and values depend on it)."""
        best_row, best = -1, 0
        if self.enabled:
            prompt_array = np.asarray(prompt[:-1])
            for row, held in enumerate(self.tokens):
                n = min(len(held), len(prompt_array))
                if not n or self.adapters[row] != adapter:
                    continue
                differ = np.flatnonzero(prompt_array[:n] != np.asarray(held[:n]))
                common = self._fitting(int(differ[0]) if differ.size else n, len(prompt))
                if common > best or (common == best and common and row in free):
                    best_row, best = row, common
        if best and best_row in free:
            return self._take(Placement(best_row, best), adapter)
        row = min(free, key=lambda r: (self.last_used[r], len(self.tokens[r])))  # least recently used, else emptiest
        return self._take(Placement(row, best, best_row if best else None), adapter)

    def _fitting(self, reused: int, prompt_tokens: int) -> int:
        """`reused`, or whole chunks of it where the prefill chunks after it would run past the cache."""
        chunks = -(-(prompt_tokens - reused) // self.chunk)
        return reused if reused + chunks * self.chunk <= self.ctx_len else reused - reused % self.chunk

    def _take(self, placement: Placement, adapter: int) -> Placement:
        self.adapters[placement.row] = adapter
        if placement.copy_from is None:
            del self.tokens[placement.row][placement.reused :]
        else:
            self.tokens[placement.row] = self.tokens[placement.copy_from][: placement.reused]
        self.last_used[placement.row] = next(self._clock)
        return placement

    def written(self, row: int, tokens: list[int] | np.ndarray) -> None:
        """Record that `tokens` were written into `row` after the ones it holds."""
        self.tokens[row].extend(int(t) for t in tokens)

    def release(self, row: int) -> None:
        """The row's request ended: its tokens stay for later requests (until the row is reused)."""
        self.last_used[row] = next(self._clock)


def copy_rows(state: object, source: int, target: int, length: int) -> None:
    """Copy the first `length` slots of cache row `source` into row `target`, in every KV cache of `state`."""
    for array in state_arrays(state).values():
        array[target, :, :length] = array[source, :, :length]
