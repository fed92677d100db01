"""`CausalLMForExport`: a HF causal LM with the graph contract of docs/causal_lm.md.

    (input_ids [B,S], position_ids [B,S], [batch_index [B,1]], past_key.0, past_value.0, [past_indexer_key.0], ...)
        -> (logits [B,1,V], past_key.0_RetainedState, past_value.0_RetainedState, ...)

It builds a `FixedKVCache` over the past buffers and the masks from `position_ids`, calls the HF model
through its own interfaces (`cache=`, `attention_mask=`, `position_ids=`), and computes logits only at
each row's last valid position (a pre-hook on the output embedding gathers that hidden state first).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import (
    DummyLayer,
    DynamicIndexedLayer,
    LinearAttentionCacheLayerMixin,
    get_layer_types_and_kwargs,
)

from QEfficient.transformers import attention as grouped_attention
from QEfficient.transformers.cache_utils import FixedKVCache, attention_masks
from QEfficient.transformers.implementations import (
    alibi_from_4d_masks,
    applied,
    exportable_experts,
    traceable_bool_scatter,
)
from QEfficient.transformers.models.adapters import NOT_SUPPORTED, adapter_for


class UnsupportedCausalLMError(ValueError):
    """The causal LM does not fit the generic KV-cache mechanism."""


# Layer types the masks implement (`attention_masks`), and "dummy" for layers that keep no cache of their own.
SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention", "indexed_attention", "dummy")


@dataclass(frozen=True)
class KVLayout:
    """Shapes of each layer's cache (`[H_kv, D_k]`, `[H_kv, D_v]`; None for a layer that keeps no cache) and the
    attention kinds in use."""

    key_shapes: tuple[tuple[int, int] | None, ...]
    value_shapes: tuple[tuple[int, int] | None, ...]
    # Window per masked layer type: {"sliding_attention": W, "chunked_attention": C}.
    windows: tuple[tuple[str, int], ...]
    # True when the model reads a dict of masks keyed by layer type (config.layer_types), False for one mask.
    masks_by_layer_type: bool
    # Per layer without a cache: "dummy" (it reads another layer's keys and values) or "unused" (left empty for
    # text-only input, e.g. cross-attention); None for a cached layer.
    placeholders: tuple[str | None, ...] = ()
    # Per layer: the indexer key width D_idx of a sparse-attention layer that also caches indexer keys
    # (DeepSeek Sparse Attention, `past_indexer_key.{i}` [B, C, D_idx]); None for the others.
    indexer_dims: tuple[int | None, ...] = ()

    @property
    def num_layers(self) -> int:
        return len(self.key_shapes)

    def cached_layers(self) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
        """(layer index, key shape, value shape) of every layer that keeps a cache."""
        return [(i, k, v) for i, (k, v) in enumerate(zip(self.key_shapes, self.value_shapes)) if k is not None]

    def indexer_dim(self, layer: int) -> int | None:
        """D_idx of layer `layer`'s retained indexer keys, or None if it keeps none."""
        return self.indexer_dims[layer] if layer < len(self.indexer_dims) else None

    def past_shapes(self, cache_batch: int, ctx_len: int) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every retained input, in graph order: per cached layer `past_key.{i}`,
        `past_value.{i}` and, for an indexed layer, `past_indexer_key.{i}`."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (hk, dk), (hv, dv) in self.cached_layers():
            shapes[f"past_key.{i}"] = (cache_batch, hk, ctx_len, dk)
            shapes[f"past_value.{i}"] = (cache_batch, hv, ctx_len, dv)
            if self.indexer_dim(i) is not None:
                shapes[f"past_indexer_key.{i}"] = (cache_batch, ctx_len, self.indexer_dim(i))
        return shapes


def probe_kv_layout(model: PreTrainedModel) -> KVLayout:
    """Run the model once on two tokens with HF's own DynamicCache and read each layer's K/V shapes.

    A layer whose cache stays empty keeps none of its own (it reuses another layer's keys and values, or is
    not used for text-only input, like a multimodal model's cross-attention); it gets no buffers. A layer
    with recurrent state (state-space, linear attention) is not supported yet. A sparse-attention layer
    (HF's `DynamicIndexedLayer`) whose indexer caches one key per token also retains those indexer keys.
    """
    name = type(model).__name__
    if name in NOT_SUPPORTED:
        raise UnsupportedCausalLMError(NOT_SUPPORTED[name])
    text_config = model.config.get_text_config(decoder=True)
    cache = DynamicCache(config=text_config)
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 2), dtype=torch.int64), cache=cache, use_cache=True)
    keys, values, placeholders, indexer_dims = [], [], [], []
    for index, layer in enumerate(cache.layers):
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            raise UnsupportedCausalLMError(
                f"Layer {index} of {name} keeps a recurrent state ({type(layer).__name__}: state-space or linear "
                "attention); retained recurrent state is not supported yet, only key/value caches."
            )
        layer_keys = getattr(layer, "keys", None)
        cached = isinstance(layer_keys, torch.Tensor) and layer_keys.dim() == 4 and layer_keys.shape[2] > 0
        keys.append((layer_keys.shape[1], layer_keys.shape[3]) if cached else None)
        values.append((layer.values.shape[1], layer.values.shape[3]) if cached else None)
        placeholders.append(None if cached else "dummy" if isinstance(layer, DummyLayer) else "unused")
        indexer_dims.append(_indexer_dim(name, index, layer) if cached else None)
    if all(k is None for k in keys):
        raise UnsupportedCausalLMError(
            f"{name} keeps no key/value cache in transformers' Cache when called with one (it recomputes the whole "
            "sequence at every step, or keeps its own state), so there is nothing to retain between steps."
        )
    layer_types, layer_kwargs = get_layer_types_and_kwargs(text_config)
    unknown = set(layer_types) - set(SUPPORTED_LAYER_TYPES)
    if unknown:
        raise UnsupportedCausalLMError(
            f"{name} has layer types {sorted(unknown)}; the masks implement {', '.join(SUPPORTED_LAYER_TYPES)}."
        )
    windows: dict[str, set[int]] = {}
    for layer_type, kwargs in zip(layer_types, layer_kwargs):
        if layer_type in ("sliding_attention", "chunked_attention"):
            windows.setdefault(layer_type, set()).add(kwargs["sliding_window"])
    mixed = {t: sorted(w) for t, w in windows.items() if len(w) > 1}
    if mixed:
        raise UnsupportedCausalLMError(f"{name} mixes window sizes within one layer type: {mixed}.")
    by_type = getattr(text_config, "layer_types", None) is not None
    windows_used = tuple((t, w.pop()) for t, w in windows.items())
    return KVLayout(tuple(keys), tuple(values), windows_used, by_type, tuple(placeholders), tuple(indexer_dims))


def _indexer_dim(name: str, index: int, layer: object) -> int | None:
    """D_idx of a probed (two-token) layer's indexer key cache; None for a layer without one.

    Only an indexer that caches one key per token at the token's own position fits the fixed cache (written
    at the same slots as the keys and values); block-compressed indexer keys with their own positions
    (`indexer_position_ids`) do not.
    """
    if not isinstance(layer, DynamicIndexedLayer) or not layer.is_indexer_initialized:
        return None
    indexer_keys = layer.indexer_keys
    if layer.indexer_position_ids is not None or indexer_keys.dim() != 3 or indexer_keys.shape[1] != 2:
        raise UnsupportedCausalLMError(
            f"Layer {index} of {name} caches indexer keys that are not one per token "
            f"(shape {tuple(indexer_keys.shape)} after 2 tokens, or with their own positions); only per-token "
            "indexer keys (DeepSeek Sparse Attention) are retained."
        )
    return indexer_keys.shape[2]


class CausalLMForExport(nn.Module):
    """A HF causal LM behind the fixed-shape, retained-state KV-cache contract."""

    def __init__(self, model: PreTrainedModel, continuous_batching: bool = False) -> None:
        super().__init__()
        self.model = model
        self.layout = probe_kv_layout(model)
        self.continuous_batching = continuous_batching
        self._last_index: torch.Tensor | None = None
        head = model.get_output_embeddings()
        if head is None:
            raise UnsupportedCausalLMError(f"{type(model).__name__} has no output embedding (lm_head).")
        head.register_forward_pre_hook(self._keep_last_valid_position)
        # Mixture-of-experts layers that dispatch through transformers' ExpertsInterface run HF's "batched_mm"
        # (a gather of each token's experts + bmm: static shapes, plain ONNX ops) instead of the default
        # grouped_mm, whose token counting (histc) and data-dependent splits do not export.
        self.experts = exportable_experts(model)
        self.adapter = adapter_for(model)
        self.attention = self.model.config._attn_implementation
        self.attention = self._choose_attention()

    def _choose_attention(self) -> str:
        """`grouped_query_attention` if the model dispatches through transformers' attention interface and
        gives the same logits with it; otherwise the implementation it was loaded with.

        The choice applies only inside this wrapper's forward: the HF model itself is left unchanged.
        """
        loaded = self.attention
        reference = self._probe_logits()
        self.attention = grouped_attention.NAME
        try:
            same = torch.allclose(self._probe_logits(), reference, atol=1e-4, rtol=0)
        except Exception:  # noqa: BLE001 - any failure means: keep the model's own attention
            same = False
        return grouped_attention.NAME if same else loaded

    def _probe_logits(self) -> torch.Tensor:
        """Logits of a fixed 6-token prefill through this wrapper (ctx 8), for comparing implementations."""
        ids = torch.arange(1, 7).unsqueeze(0) % self.model.config.get_text_config(decoder=True).vocab_size
        past = [torch.zeros(shape) for shape in self.layout.past_shapes(1, 8).values()]
        with torch.no_grad():
            return self.forward(
                ids,
                torch.arange(6).unsqueeze(0),
                *([torch.zeros(1, 1, dtype=torch.int64)] if self.continuous_batching else []),
                *past,
            )[0]

    @property
    def export_identity(self) -> dict:
        """What, beyond config and weights, determines the exported graph (part of the export hash)."""
        adapter = self.adapter.name if self.adapter else None
        return {"attention": self.attention, "experts": self.experts, "adapter": adapter, "layout": repr(self.layout)}

    @property
    def adapter_name(self) -> str:
        """The registered adapter this architecture runs with ("" when the generic mechanism suffices)."""
        return self.adapter.name if self.adapter else ""

    @property
    def config(self):  # noqa: ANN201 - the wrapped HF config
        return self.model.config

    def _keep_last_valid_position(self, module: nn.Module, args: tuple) -> tuple | None:
        if self._last_index is None:
            return None
        hidden = args[0]
        index = self._last_index.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return (torch.gather(hidden, 1, index), *args[1:])

    def input_names(self) -> list[str]:
        names = ["input_ids", "position_ids"] + (["batch_index"] if self.continuous_batching else [])
        return names + self.past_names()

    def past_names(self) -> list[str]:
        return list(self.layout.past_shapes(1, 1))

    def output_names(self) -> list[str]:
        return ["logits"] + [f"{name}_RetainedState" for name in self.past_names()]

    @contextlib.contextmanager
    def _implementations(self) -> Iterator[None]:
        """The attention, experts and adapter choices (and ALiBi on the 4-D mask, traceable bool scatters), for the
        duration of a call."""
        with (
            applied(self.model, self.attention, self.experts, self.adapter),
            alibi_from_4d_masks(self.model),
            traceable_bool_scatter(),
        ):
            yield

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *rest: torch.Tensor) -> tuple:
        batch_index = rest[0] if self.continuous_batching else None
        past = rest[1:] if self.continuous_batching else rest
        ctx_len = past[0].shape[2]
        buffers = iter(past)
        per_layer = []
        for i, key_shape in enumerate(self.layout.key_shapes):
            if key_shape is None:
                per_layer.append(self.layout.placeholders[i])
            else:
                count = 2 if self.layout.indexer_dim(i) is None else 3
                per_layer.append(tuple(next(buffers) for _ in range(count)))
        cache = FixedKVCache(per_layer, position_ids, batch_index)
        masks = attention_masks(position_ids, ctx_len, past[0].dtype, dict(self.layout.windows))
        if self.layout.masks_by_layer_type:
            mask = masks
        else:  # one mask for every layer: the windowed kind if the model has one
            mask = next((masks[t] for t, _ in self.layout.windows), masks["full_attention"])
        self._last_index = position_ids.argmax(dim=1)
        try:
            with self._implementations():
                out = self.model(
                    input_ids=input_ids,
                    position_ids=position_ids.clamp(min=0),
                    attention_mask=mask,
                    cache=cache,
                    use_cache=True,
                )
        finally:
            self._last_index = None
        return (out.logits.float(), *cache.retained_state())
