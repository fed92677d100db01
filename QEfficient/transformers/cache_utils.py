"""The fixed-size retained-state KV cache and the attention masks built from `position_ids`.

This is the generic half of the causal-LM graph contract (docs/causal_lm.md): a `Cache` that writes each
new key/value at the slot given by its token's position into a preallocated `[B, H_kv, ctx_len, D]`
buffer (a pure scatter, so the graph has static shapes), and masks derived from `position_ids` inside the
graph. A model that uses transformers' own `Cache` and mask interfaces needs no model-specific code.

Padding tokens carry position -1. They must never write anything that is later read: each one re-writes
the key/value of its row's first valid token of the same step to that token's slot (an identical
duplicate, so the scatter's write order does not matter); a row with no valid token re-writes slot 0
with its current content.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DummyLayer, DynamicLayer

PastEntry = tuple[torch.Tensor, ...] | str


def padding_safe_slots(position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each token, (source token index, cache slot, row has a valid token).

    A valid token writes itself at its position. A padding token (position < 0) copies its row's first
    valid token (source index and slot); in a row without valid tokens it points at slot 0.
    """
    seq_len = position_ids.shape[1]
    valid = position_ids >= 0
    index = torch.arange(seq_len, device=position_ids.device).unsqueeze(0).expand_as(position_ids)
    first = torch.where(valid, index, torch.full_like(index, seq_len)).min(dim=1, keepdim=True).values
    row_has_valid = first < seq_len
    first = torch.where(row_has_valid, first, torch.zeros_like(first))
    source = torch.where(valid, index, first.expand_as(index))
    slots = torch.gather(position_ids, 1, source).clamp(min=0)
    return source, slots, row_has_valid


class FixedKVLayer(CacheLayerMixin):
    """One layer's retained KV buffers `[B_cache, H_kv, ctx_len, D]`, updated out of place by scatter."""

    is_compileable = True
    is_sliding = False

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        source: torch.Tensor,
        slots: torch.Tensor,
        row_has_valid: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        start: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.start = start
        self.source, self.slots, self.row_has_valid = source, slots, row_has_valid
        self.batch_index = batch_index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """The buffers are graph inputs; nothing to allocate."""

    def _write(self, buffer: torch.Tensor, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(new full buffer, the rows this step attends over)."""
        rows = buffer
        if self.batch_index is not None:  # continuous batching: this step's rows of the full cache
            rows = buffer.index_select(0, self.batch_index.reshape(-1))
        heads, dim = states.shape[1], states.shape[-1]
        source = self.source[:, None, :, None].expand(-1, heads, -1, dim)
        slots = self.slots[:, None, :, None].expand(-1, heads, -1, dim)
        new = torch.gather(states, 2, source)
        old = torch.gather(rows, 2, slots)
        new = torch.where(self.row_has_valid[:, :, None, None], new, old)
        rows = rows.scatter(2, slots, new)
        if self.batch_index is None:
            return rows, rows
        index = self.batch_index.reshape(-1, 1, 1, 1).expand_as(rows)
        return buffer.scatter(0, index, rows), rows

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys, keys = self._write(self.keys, key_states)
        self.values, values = self._write(self.values, value_states)
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0

    def get_seq_length(self) -> torch.Tensor | int:
        """The position of this step's first token (row 0): what a model that numbers its tokens as
        `cache.get_seq_length() + arange(seq_len)` instead of reading `position_ids` needs. Models that take
        `position_ids` never call it for positions. Rows with other start positions need `position_ids`."""
        return self.start if self.start is not None else 0

    def get_max_length(self) -> int:
        return self.keys.shape[2]


class FixedIndexedKVLayer(FixedKVLayer):
    """A `FixedKVLayer` that also retains a sparse-attention indexer's keys `[B_cache, ctx_len, D_idx]`
    (DeepSeek Sparse Attention: HF's `DynamicIndexedLayer`), written at the same slots as the keys/values.

    `update_indexer` returns the whole buffer: slots not yet written hold zeros (or a previous prompt's keys),
    and the indexer masks them with the attention mask before its top-k, as with HF's `StaticIndexedLayer`.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, indexer_keys: torch.Tensor, *args, **kwargs) -> None:
        super().__init__(keys, values, *args, **kwargs)
        self.indexer_keys = indexer_keys
        self.indexer_position_ids = None

    def update_indexer(self, indexer_key_states: torch.Tensor) -> torch.Tensor:
        buffer, rows = self._write(self.indexer_keys.unsqueeze(1), indexer_key_states.unsqueeze(1))
        self.indexer_keys = buffer.squeeze(1)
        return rows.squeeze(1)


class FixedKVCache(Cache):
    """transformers `Cache` over retained buffers; `retained_state()` returns the updated buffers.

    `past` has one `(keys, values)` pair per layer (`(keys, values, indexer_keys)` for a sparse-attention
    layer with an indexer), or, for a layer that keeps no cache, "dummy" (it reads another layer's keys and
    values: HF's `DummyLayer`) or "unused" (an empty `DynamicLayer` that the model leaves alone, e.g.
    cross-attention with text-only input).
    """

    def __init__(self, past: list[PastEntry], position_ids: torch.Tensor, batch_index=None) -> None:
        source, slots, row_has_valid = padding_safe_slots(position_ids)
        start = position_ids[0, 0].clamp(min=0)
        layers = []
        for entry in past:
            if isinstance(entry, str):
                layers.append(DummyLayer() if entry == "dummy" else DynamicLayer())
            else:
                kind = FixedIndexedKVLayer if len(entry) == 3 else FixedKVLayer
                layers.append(kind(*entry, source, slots, row_has_valid, batch_index, start))
        super().__init__(layers=layers)

    def retained_state(self) -> list[torch.Tensor]:
        """`past_key.i, past_value.i` (and `past_indexer_key.i`) of every layer that keeps a cache, in layer order,
        after this step."""
        state = []
        for layer in self.layers:
            if isinstance(layer, FixedKVLayer):
                state += [layer.keys, layer.values]
            if isinstance(layer, FixedIndexedKVLayer):
                state.append(layer.indexer_keys)
        return state


def attention_masks(
    position_ids: torch.Tensor, ctx_len: int, dtype: torch.dtype, windows: dict[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """Additive masks `[B, 1, S, ctx_len]` from `position_ids`: 0 where slot j may be read, dtype-min elsewhere.

    A token at position p reads slots j <= p ("full_attention", and "indexed_attention": a sparse-attention
    indexer ranks only these slots and its top-k selection narrows them further); `windows` adds the windowed kinds:
    "sliding_attention" (W) also needs j > p - W, "chunked_attention" (C) needs j in p's chunk,
    j // C == p // C. Padding (p < 0) reads nothing useful but keeps slot 0 open so no row is fully masked
    (its output is never used).
    """
    slots = torch.arange(ctx_len, device=position_ids.device).view(1, 1, 1, ctx_len)
    pos = position_ids[:, None, :, None]
    allowed = (slots <= pos) | (slots == 0)
    padding_slot = (pos < 0) & (slots == 0)
    minimum = torch.finfo(dtype).min
    zero = torch.zeros((), dtype=dtype)
    full = torch.where(allowed, zero, minimum)
    masks = {"full_attention": full, "indexed_attention": full}
    for layer_type, size in (windows or {}).items():
        if layer_type == "sliding_attention":
            inside = slots > pos - size
        elif layer_type == "chunked_attention":
            inside = torch.div(slots, size, rounding_mode="floor") == torch.div(pos, size, rounding_mode="floor")
        else:
            raise ValueError(f"No mask rule for layer type {layer_type!r}.")
        masks[layer_type] = torch.where(allowed & (inside | padding_slot), zero, minimum)
    return masks
