"""The fixed-size retained-state cache and the attention masks built from `position_ids`.

This is the generic half of the causal-LM graph contract (docs/causal_lm.md): a `Cache` that writes each
new key/value at the slot given by its token's position into a preallocated `[B, H_kv, ctx_len, D]`
buffer (a pure scatter, so the graph has static shapes), keeps the conv and recurrent states of state-space and
linear-attention layers (docs/recurrent_state.md), and masks derived from `position_ids` inside the graph. A
model that uses transformers' own `Cache` and mask interfaces needs no model-specific code.

Padding tokens carry position -1. They must never write anything that is later read: each one re-writes
the key/value of its row's first valid token of the same step to that token's slot (an identical
duplicate, so the scatter's write order does not matter); a row with no valid token re-writes slot 0
with its current content.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin, DummyLayer, DynamicLayer, LinearAttentionLayer


@dataclass
class LayerBuffers:
    """One layer's retained inputs: its key/value buffers (plus indexer keys for a sparse-attention layer), and its
    conv/recurrent states keyed by (kind, state index), kind "conv" or "recurrent"."""

    kv: tuple[torch.Tensor, ...] | None = None
    states: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)


@dataclass
class CrossBuffers:
    """One cross-attention layer's retained keys and values `[B_cache, H_kv, T, D]` over the T vision tokens of a
    vision-language model's images, written by the host before a prompt's prefill and only read by the graph."""

    keys: torch.Tensor
    values: torch.Tensor


# Per layer: its buffers, its cross-attention keys and values, or, for a layer that keeps nothing, "dummy" (it reads
# another layer's keys and values: HF's `DummyLayer`) or "unused" (an empty `DynamicLayer` the model leaves alone,
# e.g. cross-attention of a model without retained cross keys).
PastEntry = LayerBuffers | CrossBuffers | str


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


def _put_rows(buffer: torch.Tensor, batch_index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`buffer` with whole rows replaced at `batch_index` (continuous batching): one ScatterND over the batch axis,
    not an element-wise scatter with an index per cache element."""
    return buffer.index_put((batch_index.reshape(-1),), rows)


def _rows(buffer: torch.Tensor, batch_index: torch.Tensor | None) -> torch.Tensor:
    """This step's rows of a full-batch buffer (continuous batching), or the buffer itself."""
    return buffer if batch_index is None else buffer.index_select(0, batch_index.reshape(-1))


class KVWriteIndices:
    """Where this step's keys and values go in the cache: per token its source token and slot (`padding_safe_slots`),
    whether its row has a valid token, and, with continuous batching, the cache row of each batch row.

    One instance serves every layer, and the index tensors a write needs are built once per (heads, head_dim), so the
    exported graph computes them once per step rather than once per layer and buffer.
    """

    def __init__(self, position_ids: torch.Tensor, batch_index: torch.Tensor | None = None) -> None:
        self.source, self.slots, self.row_has_valid = padding_safe_slots(position_ids)
        self.batch_index = batch_index
        self._built: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def along_slots(self, heads: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, slot) indices `[B, heads, S, dim]` for a gather/scatter along the slot axis."""
        key = ("slots", heads, dim)
        if key not in self._built:
            self._built[key] = tuple(i[:, None, :, None].expand(-1, heads, -1, dim) for i in (self.source, self.slots))
        return self._built[key]

    def in_full_cache(self, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cache row, head, slot) indices `[B, heads, S]` of each written vector in the full cache."""
        key = ("cache", heads)
        if key not in self._built:
            shape = (*self.slots.shape[:1], heads, self.slots.shape[1])
            rows = self.batch_index.reshape(-1, 1, 1).expand(shape)
            head = torch.arange(heads, device=self.slots.device).view(1, -1, 1).expand(shape)
            self._built[key] = (rows, head, self.slots[:, None, :].expand(shape))
        return self._built[key]


class FixedKVLayer(CacheLayerMixin):
    """One layer's retained KV buffers `[B_cache, H_kv, ctx_len, D]`, updated out of place by scatter."""

    is_compileable = True
    is_sliding = False

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, indices: KVWriteIndices, start: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.start = start
        self.indices = indices
        self.is_initialized = True

    @property
    def slots(self) -> torch.Tensor:
        """Each token's cache slot `[B, S]` (padding points at its row's first valid token's slot)."""
        return self.indices.slots

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """The buffers are graph inputs; nothing to allocate."""

    def _write(self, buffer: torch.Tensor, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(new full buffer, the rows this step attends over). A row without valid tokens re-writes what it holds."""
        heads, dim = states.shape[1], states.shape[-1]
        if dim == 0:  # a zero-width state (MLA's rotary keys in a layer without rope): nothing to write or read
            return buffer, _rows(buffer, self.indices.batch_index)
        indices = self.indices
        source, slots = indices.along_slots(heads, dim)
        new = torch.gather(states, 2, source)
        valid = indices.row_has_valid[:, :, None, None]
        if indices.batch_index is None:
            buffer = buffer.scatter(2, slots, torch.where(valid, new, torch.gather(buffer, 2, slots)))
            return buffer, buffer
        # Continuous batching: write straight into the full cache at (cache row, head, slot), one ScatterND the size
        # of this step's tokens, rather than copying the rows out and back; only attention reads the rows.
        at = indices.in_full_cache(heads)
        buffer = buffer.index_put(at, torch.where(valid, new, buffer[at]))
        return buffer, _rows(buffer, indices.batch_index)

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


class FixedCrossAttentionLayer(CacheLayerMixin):
    """A cross-attention layer's keys and values, retained buffers `[B_cache, H_kv, T, D]` that the model reads as
    they are: the layer is initialised and not empty, so HF runs the layer (rather than skipping it, as it does for
    text-only input) and reads `keys` / `values` (this step's cache rows, with continuous batching). The graph
    passes the buffers through unchanged (`retained`): they are written by the host, once per prompt. An `update`
    means the model recomputes them from vision states, which the graph never hands it."""

    is_compileable = True
    is_sliding = False

    def __init__(self, buffers: CrossBuffers, batch_index: torch.Tensor | None, start: torch.Tensor) -> None:
        super().__init__()
        self.buffers = buffers
        self.keys, self.values = _rows(buffers.keys, batch_index), _rows(buffers.values, batch_index)
        self.start = start
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """The keys and values are graph inputs; nothing to allocate."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object):
        raise ValueError(
            "The model computes cross-attention keys and values in the language program; they are retained buffers "
            "there (written from the vision program), so the language program never takes the vision states."
        )

    def retained(self) -> list[torch.Tensor]:
        """The buffers as they came in."""
        return [self.buffers.keys, self.buffers.values]

    def get_seq_length(self) -> torch.Tensor | int:
        """The position of this step's first token, as `FixedKVLayer.get_seq_length` answers it."""
        return self.start

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0

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


class FixedLinearAttentionLayer(LinearAttentionLayer):
    """One layer's retained conv and recurrent states (`past_conv.{i}`, `past_recurrent.{i}`), presented to the
    model as HF's `LinearAttentionLayer`, whose `update_conv_state` / `update_recurrent_state` the mixers call.

    `previous_state=False` (a prefill from zero): the layer reports no previous state, so HF runs its full-sequence
    path and stores the final state into zeros allocated by the lazy initialisation. `previous_state=True` (decode,
    and a prefill chunk that continues): the layer holds clones of the input states, which HF updates in place; a
    row whose sequence starts in this step (it has position 0) starts from zero instead, whatever its slot held
    before (continuous batching reuses slots). `retained()` gives the states after the step; rows without a valid
    token keep their old state.
    """

    def __init__(
        self,
        states: dict[tuple[str, int], torch.Tensor],
        row_valid: torch.Tensor,
        row_starts: torch.Tensor,
        batch_index: torch.Tensor | None,
        previous_state: bool,
    ) -> None:
        LinearAttentionLayer.__init__(self, number_of_states=1 + max(s for _, s in states))
        self.inputs, self.batch_index = states, batch_index
        self.row_valid = row_valid
        self.old_rows = {key: _rows(buffer, batch_index) for key, buffer in states.items()}
        if previous_state:
            for (kind, s), old in self.old_rows.items():
                # a new tensor (never the input buffer), which HF then updates in place
                rows = torch.where(row_starts.view(-1, *([1] * (old.dim() - 1))), torch.zeros_like(old), old)
                if kind == "conv":
                    self.conv_states[s] = rows
                    self.is_conv_states_initialized[s] = True
                    self.conv_kernel_size[s] = rows.shape[-1]
                else:
                    self.recurrent_states[s] = rows
                    self.is_recurrent_states_initialized[s] = True
                self.has_previous_state[s] = True
                self.dtype, self.device = rows.dtype, rows.device

    def lazy_initialization(
        self,
        conv_states: torch.Tensor | None = None,
        recurrent_states: torch.Tensor | None = None,
        state_idx: int = 0,
        conv_kernel_size: int | None = None,
    ) -> None:
        """HF's, without `torch._dynamo.mark_static_address` (nothing to pin in a traced graph)."""
        if conv_states is not None:
            self.dtype, self.device = conv_states.dtype, conv_states.device
            size = conv_states.shape[-1] if conv_kernel_size is None else conv_kernel_size
            self.conv_kernel_size[state_idx] = size
            self.conv_states[state_idx] = conv_states.new_zeros((*conv_states.shape[:-1], size))
            self.is_conv_states_initialized[state_idx] = True
        if recurrent_states is not None:
            self.recurrent_states[state_idx] = torch.zeros_like(recurrent_states)
            self.is_recurrent_states_initialized[state_idx] = True

    def retained(self) -> list[torch.Tensor]:
        """The full-batch states after this step, in the order of the inputs."""
        out = []
        for (kind, s), buffer in self.inputs.items():
            old = self.old_rows[(kind, s)]
            new = self.conv_states[s] if kind == "conv" else self.recurrent_states[s]
            if new is None:  # the layer did not touch this state in this step
                out.append(buffer)
                continue
            valid = self.row_valid.view(-1, *([1] * (old.dim() - 1)))
            rows = torch.where(valid, new.to(old.dtype), old)
            if self.batch_index is not None:
                rows = _put_rows(buffer, self.batch_index, rows)
            out.append(rows)
        return out


class FixedKVAndLinearAttentionLayer(FixedLinearAttentionLayer, FixedKVLayer):
    """A layer with a KV cache and recurrent state side by side (parallel hybrids such as Falcon-H1; HF's
    `LinearAttentionAndFullAttentionLayer`)."""

    def __init__(self, kv_args: tuple, recurrent_args: tuple) -> None:
        FixedLinearAttentionLayer.__init__(self, *recurrent_args)
        FixedKVLayer.__init__(self, *kv_args)

    def lazy_initialization(self, *args: torch.Tensor, **kwargs: object) -> None:
        """The KV half (called with two positional tensors) has its buffers already; the states initialise as HF's."""
        if not args:
            FixedLinearAttentionLayer.lazy_initialization(self, **kwargs)


class FixedCache(Cache):
    """transformers `Cache` over retained buffers; `retained_state()` returns the updated buffers.

    `past` has one entry per layer (`PastEntry`). `previous_state` says whether the recurrent layers continue from
    their input states (decode, and continuing prefill chunks) or start from zero (docs/recurrent_state.md).
    """

    def __init__(
        self,
        past: list[PastEntry],
        position_ids: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        previous_state: bool = False,
    ) -> None:
        indices = KVWriteIndices(position_ids, batch_index)
        self.start = position_ids[0, 0].clamp(min=0)
        # The position column 0 would have if row 0's tokens were contiguous: left padding makes it negative.
        columns = torch.arange(position_ids.shape[1], device=position_ids.device)
        offsets = torch.where(position_ids[0] >= 0, position_ids[0] - columns, position_ids.new_full((), -(2**62)))
        self.query_offset = offsets.max().clamp(min=-position_ids.shape[1])
        row_valid = indices.row_has_valid.reshape(-1)
        row_starts = (position_ids == 0).any(dim=1)
        layers: list = []
        for entry in past:
            if isinstance(entry, str):
                layers.append(DummyLayer() if entry == "dummy" else DynamicLayer())
                continue
            if isinstance(entry, CrossBuffers):
                layers.append(FixedCrossAttentionLayer(entry, batch_index, self.start))
                continue
            kv_args = (*(entry.kv or ()), indices, self.start)
            recurrent_args = (entry.states, row_valid, row_starts, batch_index, previous_state)
            if entry.kv and entry.states:
                layers.append(FixedKVAndLinearAttentionLayer(kv_args, recurrent_args))
            elif entry.states:
                layers.append(FixedLinearAttentionLayer(*recurrent_args))
            else:
                layers.append((FixedIndexedKVLayer if len(entry.kv) == 3 else FixedKVLayer)(*kv_args))
        super().__init__(layers=layers)

    def get_seq_length(self, layer_idx: int = 0) -> torch.Tensor | int:
        """The position of the step's first token (row 0), as `FixedKVLayer.get_seq_length` answers it; also for a
        model without attention layers (HF's answer would look for one)."""
        if not any(isinstance(layer, FixedKVLayer) for layer in self.layers):
            return self.start
        return super().get_seq_length(layer_idx)

    def get_query_offset(self, layer_idx: int = 0) -> torch.Tensor:
        """The position of the step's column 0 (row 0), for models that number the queries `offset + arange(S)`
        instead of reading `position_ids` (Inkling's relative positions). With left padding it is negative, so the
        valid tokens still get their own positions."""
        return self.query_offset

    def retained_state(self) -> list[torch.Tensor]:
        """Every retained buffer after this step, in graph order: per layer `past_key.i`, `past_value.i`
        (`past_indexer_key.i`), then its conv and recurrent states; a cross-attention layer's keys and values."""
        state = []
        for layer in self.layers:
            if isinstance(layer, FixedCrossAttentionLayer):
                state += layer.retained()
            if isinstance(layer, FixedKVLayer):
                state += [layer.keys, layer.values]
            if isinstance(layer, FixedIndexedKVLayer):
                state.append(layer.indexer_keys)
            if isinstance(layer, FixedLinearAttentionLayer):
                state += layer.retained()
        return state


# The layer types that transformers gives a sliding window (`get_layer_types_and_kwargs`); "hybrid_sliding" is a
# layer with windowed attention beside recurrent state.
SLIDING_LAYER_TYPES = ("sliding_attention", "hybrid_sliding", "reference_sliding_attention")


def attention_masks(
    position_ids: torch.Tensor,
    ctx_len: int,
    dtype: torch.dtype,
    windows: dict[str, int] | None = None,
    blocks: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Additive masks `[B, 1, S, ctx_len]` from `position_ids`: 0 where slot j may be read, dtype-min elsewhere.

    A token at position p reads slots j <= p ("full_attention", and "indexed_attention": a sparse-attention
    indexer ranks only these slots and its top-k selection narrows them further); `windows` adds the windowed kinds:
    "sliding_attention" (W; also the other sliding kinds of `SLIDING_LAYER_TYPES`) also needs j > p - W,
    "chunked_attention" (C) needs j in p's chunk,
    j // C == p // C. Padding (p < 0) reads nothing useful but keeps slot 0 open so no row is fully masked
    (its output is never used).

    `blocks` `[B, S]` (block id per token of this step, -1 for none) adds bidirectional blocks: a token also reads the
    slots of the tokens of its own block in this step, later ones included (Gemma3's images attend to themselves
    bidirectionally; the windowed kinds keep their window on top).
    """
    slots = torch.arange(ctx_len, device=position_ids.device).view(1, 1, 1, ctx_len)
    pos = position_ids[:, None, :, None]
    allowed = (slots <= pos) | (slots == 0)
    if blocks is not None:
        same = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0) & (position_ids[:, None, :] >= 0)
        index = position_ids.clamp(min=0)[:, None, :].expand(-1, position_ids.shape[1], -1)
        reads = torch.zeros((*position_ids.shape, ctx_len), dtype=dtype, device=position_ids.device)
        reads = reads.scatter_add(2, index, same.to(dtype))  # [B, S, ctx_len]: > 0 where a block-mate sits
        allowed = allowed | (reads[:, None] > 0)
    padding_slot = (pos < 0) & (slots == 0)
    minimum = torch.finfo(dtype).min
    zero = torch.zeros((), dtype=dtype)
    full = torch.where(allowed, zero, minimum)
    masks = {"full_attention": full, "indexed_attention": full}
    for layer_type, size in (windows or {}).items():
        if layer_type in SLIDING_LAYER_TYPES:
            inside = slots > pos - size
        elif layer_type == "chunked_attention":
            inside = torch.div(slots, size, rounding_mode="floor") == torch.div(pos, size, rounding_mode="floor")
        else:
            raise ValueError(f"No mask rule for layer type {layer_type!r}.")
        masks[layer_type] = torch.where(allowed & (inside | padding_slot), zero, minimum)
    return masks


class LastValidPosition:
    """A forward pre-hook on a model's output embedding (its LM head) that hands it only the hidden states of the
    positions whose logits the graph returns, so the LM head runs on those alone. It acts only inside
    `at(position_ids)`; elsewhere (HF's own runs) the head sees everything.

    `keep` (default 1; set before export) bounds the number of logits per row (the reference's
    `num_logits_to_keep`): a step of S columns returns `[B, n, V]` with `n = min(S, keep)`, the logits of the n
    columns that end at each row's last valid position (padding has position -1): index j holds column
    `last - n + 1 + j`, clamped at column 0. With `keep=1` that is the last valid position alone (`[B, 1, V]`, what
    prefill and decode need). A speculative-decoding target exported with `keep = K + 1` verifies K draft tokens in
    one step of `S = K + 1` columns: a row whose columns are all valid gets the logits of every position of the
    step, `[B, S, V]`; a right-padded row with m valid columns finds them at indices `n - m ... n - 1`. A decode
    step (S = 1) still computes one row of logits, and a prefill chunk (S > keep) its last `keep` valid columns,
    the last valid one at index `n - 1` as with `keep=1`.
    """

    def __init__(self, head: nn.Module, keep: int = 1) -> None:
        self.index: torch.Tensor | None = None
        self.keep = keep
        head.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.index is None:
            return None
        hidden = args[0]
        index = self.index  # [B, 1]: each row's last valid column
        if self.keep > 1:  # the min(S, keep) columns ending there: S stays symbolic in the graph
            tail = torch.arange(hidden.shape[1], device=hidden.device)[-self.keep :]
            index = (index + (tail - tail[-1]).unsqueeze(0)).clamp(min=0)
        index = index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return (torch.gather(hidden, 1, index), *args[1:])

    @contextlib.contextmanager
    def at(self, position_ids: torch.Tensor) -> Iterator[None]:
        """Logits for the `keep` columns ending at each row's last valid position of `position_ids [B, S]`, for the
        duration of the block."""
        if not isinstance(self.keep, int) or self.keep < 1:
            raise ValueError(f"LastValidPosition.keep must be a positive int; got {self.keep!r}.")
        self.index = position_ids.argmax(dim=1, keepdim=True)
        try:
            yield
        finally:
            self.index = None
