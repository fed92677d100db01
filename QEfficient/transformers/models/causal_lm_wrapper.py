"""`CausalLMForExport`: a HF causal LM with the graph contract of docs/causal_lm.md.

    (input_ids [B,S], position_ids [B,S], [image_embeds [B,S,H]], [rope_offsets [B,S,R]],
     [cross_attention_mask [B,S,N,T]], [batch_index [B,1]],
     past_key.0, past_value.0, [past_indexer_key.0], [past_conv.0], [past_recurrent.0], [past_cross_key.1], ...,
     [adapter_ids [B,1], lora_a.{module} [N,in,R], lora_b.{module} [N,R,out], ...])
        -> (logits [B, min(S, keep), V] (keep = 1 unless exported for speculative decoding),
            past_key.0_RetainedState, past_value.0_RetainedState, ...)

It builds a `FixedCache` over the past buffers and the masks from `position_ids`, calls the HF model
through its own interfaces (`cache=`, `attention_mask=`, `position_ids=`), and computes logits only at
each row's last valid position (a pre-hook on the output embedding gathers that hidden state first).
Layers with recurrent state (state-space, linear attention) keep it as `past_conv.{i}` / `past_recurrent.{i}`;
such a model needs separate prefill and decode graphs (docs/recurrent_state.md).
With LoRA adapters (`use_lora`, docs/lora.md) the adapters' matrices and each row's adapter slot are inputs too.

The language model of a vision-language model takes `image_embeds`: per token, the image feature that replaces the
embedding of an image token (zeros elsewhere). The graph hands HF the features at the image-token positions as
`mm_encoder_outputs`, so HF merges them into the input embeddings its own way (docs/image_text_to_text.md); a model
whose forward takes no `mm_encoder_outputs` (the audio LLMs, BLIP-2's language model) gets `inputs_embeds` with the
features merged in, as its own forward would merge them. Gemma3's image blocks and PaliGemma's prompt prefix are
attended bidirectionally (`blocks` of `attention_masks`).
A model with multimodal rotary positions (Qwen2-VL's M-RoPE: R position rows, one per axis) also takes
`rope_offsets`: per token and axis, its rotary position minus its cache position, which HF's `get_rope_index` gives.

The language model of a cross-attention vision-language model (Mllama: its forward takes `cross_attention_states` and
`cross_attention_mask`, its text config names `cross_attention_layers`) retains each cross-attention layer's keys and
values over the images' vision tokens, `past_cross_key.{i}` / `past_cross_value.{i}` `[B, H_kv, T, D]`, which the
host writes before a prompt's prefill and the graph passes through unchanged; it takes the per-token rows of HF's
`cross_attention_mask` `[B, S, n_images, n_tiles]`, which HF's forward prepares its own way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import (
    DummyLayer,
    DynamicIndexedLayer,
    LinearAttentionCacheLayerMixin,
    get_layer_types_and_kwargs,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from QEfficient.transformers import attention as grouped_attention
from QEfficient.transformers.cache_utils import (
    SLIDING_LAYER_TYPES,
    CrossBuffers,
    FixedCache,
    LastValidPosition,
    LayerBuffers,
    PastEntry,
    attention_masks,
)
from QEfficient.transformers.implementations import (
    absent_image_outputs,
    alibi_from_4d_masks,
    applied,
    exportable_deepstack,
    exportable_experts,
)
from QEfficient.transformers.models.adapters import NOT_SUPPORTED, adapter_for

if TYPE_CHECKING:
    from QEfficient.peft.lora import LoraGraph


class UnsupportedCausalLMError(ValueError):
    """The causal LM does not fit the generic KV-cache mechanism."""


# Layer types the masks implement (`attention_masks`), and "dummy" for layers that keep no cache of their own.
SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention", "indexed_attention", "dummy")


# A recurrent state of one layer: (kind "conv" or "recurrent", HF's state index, shape without the batch).
StateSpec = tuple[str, int, tuple[int, ...]]


@dataclass(frozen=True)
class CacheLayout:
    """What each layer retains between steps: key/value shapes (`[H_kv, D_k]`, `[H_kv, D_v]`; None for a layer
    without a KV cache), indexer keys, recurrent states, and the attention kinds in use."""

    key_shapes: tuple[tuple[int, int] | None, ...]
    value_shapes: tuple[tuple[int, int] | None, ...]
    # Window per masked layer type: {"sliding_attention": W, "chunked_attention": C}.
    windows: tuple[tuple[str, int], ...]
    # True when the model reads a dict of masks keyed by layer type (config.layer_types), False for one mask.
    masks_by_layer_type: bool
    # Per layer that keeps nothing: "dummy" (it reads another layer's keys and values) or "unused" (left empty for
    # text-only input, e.g. cross-attention); None for a layer with buffers.
    placeholders: tuple[str | None, ...] = ()
    # Per layer: the indexer key width D_idx of a sparse-attention layer that also caches indexer keys
    # (DeepSeek Sparse Attention, `past_indexer_key.{i}` [B, C, D_idx]); None for the others.
    indexer_dims: tuple[int | None, ...] = ()
    # Per layer: its conv/recurrent states (state-space and linear-attention layers), `past_conv.{i}[.{s}]` and
    # `past_recurrent.{i}[.{s}]`; empty for the others.
    states: tuple[tuple[StateSpec, ...], ...] = ()
    # config.layer_types (the keys of the mask dict), when the model has them.
    layer_types: tuple[str, ...] = ()
    # Per layer: the retained cross-attention keys' (H_kv, T, D) of a cross-attention vision-language model (set once
    # the vision program's token count T is known, `CausalLMForExport.use_cross_attention`); None for the others.
    cross_shapes: tuple[tuple[int, int, int] | None, ...] = ()

    @property
    def num_layers(self) -> int:
        return len(self.key_shapes)

    @property
    def has_attention(self) -> bool:
        return any(k is not None for k in self.key_shapes)

    @property
    def has_recurrent_state(self) -> bool:
        return any(self.states)

    def layer_states(self, layer: int) -> tuple[StateSpec, ...]:
        return self.states[layer] if layer < len(self.states) else ()

    def cross_shape(self, layer: int) -> tuple[int, int, int] | None:
        """(H_kv, T, D) of layer `layer`'s retained cross-attention keys and values, or None if it keeps none."""
        return self.cross_shapes[layer] if layer < len(self.cross_shapes) else None

    def indexer_dim(self, layer: int) -> int | None:
        """D_idx of layer `layer`'s retained indexer keys, or None if it keeps none."""
        return self.indexer_dims[layer] if layer < len(self.indexer_dims) else None

    def past_shapes(self, cache_batch: int, ctx_len: int) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every retained input, in graph order. Per layer: `past_key.{i}`, `past_value.{i}`
        and, for an indexed layer, `past_indexer_key.{i}` (`[B, ..., ctx_len, ...]`); then its states
        `past_conv.{i}` / `past_recurrent.{i}` (`.{i}.{s}` for HF's state index s > 0), which do not depend on
        `ctx_len`; for a cross-attention layer `past_cross_key.{i}` / `past_cross_value.{i}` `[B, H_kv, T, D]`."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(self.num_layers):
            if self.cross_shape(i) is not None:
                heads, tokens, dim = self.cross_shape(i)
                shapes[f"past_cross_key.{i}"] = shapes[f"past_cross_value.{i}"] = (cache_batch, heads, tokens, dim)
            if self.key_shapes[i] is not None:
                (hk, dk), (hv, dv) = self.key_shapes[i], self.value_shapes[i]
                shapes[f"past_key.{i}"] = (cache_batch, hk, ctx_len, dk)
                shapes[f"past_value.{i}"] = (cache_batch, hv, ctx_len, dv)
                if self.indexer_dim(i) is not None:
                    shapes[f"past_indexer_key.{i}"] = (cache_batch, ctx_len, self.indexer_dim(i))
            for kind, index, shape in self.layer_states(i):
                shapes[f"past_{kind}.{i}" + (f".{index}" if index else "")] = (cache_batch, *shape)
        return shapes


def probe_cache_layout(model: PreTrainedModel) -> CacheLayout:
    """Run the model once on two tokens with HF's own DynamicCache and read what each layer keeps.

    A layer whose KV cache stays empty keeps none of its own (it reuses another layer's keys and values, or is
    not used for text-only input, like a multimodal model's cross-attention); it gets no buffers. A sparse-attention
    layer (HF's `DynamicIndexedLayer`) whose indexer caches one key per token also retains those indexer keys. A
    state-space or linear-attention layer (HF's `LinearAttentionCacheLayerMixin`) retains its conv and recurrent
    states, whose shapes the probe reads.
    """
    name = type(model).__name__
    if name in NOT_SUPPORTED:
        raise UnsupportedCausalLMError(NOT_SUPPORTED[name])
    text_config = model.config.get_text_config(decoder=True)
    cache = DynamicCache(config=text_config)
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 2), dtype=torch.int64), cache=cache, use_cache=True)
    keys, values, placeholders, indexer_dims, states = [], [], [], [], []
    for index, layer in enumerate(cache.layers):
        layer_keys = getattr(layer, "keys", None)
        cached = isinstance(layer_keys, torch.Tensor) and layer_keys.dim() == 4 and layer_keys.shape[2] > 0
        layer_states = _recurrent_states(name, index, layer)
        keys.append((layer_keys.shape[1], layer_keys.shape[3]) if cached else None)
        values.append((layer.values.shape[1], layer.values.shape[3]) if cached else None)
        keeps = cached or layer_states
        placeholders.append(None if keeps else "dummy" if isinstance(layer, DummyLayer) else "unused")
        indexer_dims.append(_indexer_dim(name, index, layer) if cached else None)
        states.append(layer_states)
    if all(k is None for k in keys) and not any(states):
        raise UnsupportedCausalLMError(
            f"{name} keeps no key/value cache in transformers' Cache when called with one (it recomputes the whole "
            "sequence at every step, or keeps its own state), so there is nothing to retain between steps."
        )
    layer_types, layer_kwargs = get_layer_types_and_kwargs(text_config)
    windows: dict[str, set[int]] = {}
    for layer_type, kwargs in zip(layer_types, layer_kwargs):
        if layer_type in (*SLIDING_LAYER_TYPES, "chunked_attention"):
            windows.setdefault(layer_type, set()).add(kwargs["sliding_window"])
    # Every layer with a KV cache needs a mask rule; one that also keeps recurrent state (a parallel hybrid such as
    # Falcon-H1, layer type "hybrid") attends causally over the whole context unless it has a window.
    unknown = {
        t
        for t, kwargs, k, st in zip(layer_types, layer_kwargs, keys, states)
        if k is not None and t not in (*SUPPORTED_LAYER_TYPES, *windows) and (not st or "sliding_window" in kwargs)
    }
    if unknown:
        raise UnsupportedCausalLMError(
            f"{name} has layer types {sorted(unknown)}; the masks implement {', '.join(SUPPORTED_LAYER_TYPES)} "
            f"and {', '.join(SLIDING_LAYER_TYPES[1:])}."
        )
    mixed = {t: sorted(w) for t, w in windows.items() if len(w) > 1}
    if mixed:
        raise UnsupportedCausalLMError(f"{name} mixes window sizes within one layer type: {mixed}.")
    config_types = getattr(text_config, "layer_types", None)
    windows_used = tuple((t, w.pop()) for t, w in windows.items())
    return CacheLayout(
        tuple(keys),
        tuple(values),
        windows_used,
        config_types is not None,
        tuple(placeholders),
        tuple(indexer_dims),
        tuple(states),
        tuple(config_types or ()),
    )


def _recurrent_states(name: str, index: int, layer: object) -> tuple[StateSpec, ...]:
    """The conv/recurrent states a probed layer initialised, in HF's state order.

    A recurrent cache layer that the model left uninitialised means the model keeps that state somewhere else (in
    its own modules, as RecurrentGemma does): it could not be retained between graph runs, so it is refused.
    """
    if not isinstance(layer, LinearAttentionCacheLayerMixin):
        return ()
    found: list[StateSpec] = []
    for s in range(layer.number_of_states):
        if layer.is_conv_states_initialized[s]:
            found.append(("conv", s, tuple(layer.conv_states[s].shape[1:])))
        if layer.is_recurrent_states_initialized[s]:
            found.append(("recurrent", s, tuple(layer.recurrent_states[s].shape[1:])))
    if not found:
        raise UnsupportedCausalLMError(
            f"Layer {index} of {name} is a recurrent layer whose state does not go through transformers' Cache (the "
            "model keeps it in its own modules), so it cannot be retained between steps."
        )
    return tuple(found)


def bidirectional_image_blocks(model: PreTrainedModel) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """HF's `get_block_sequence_ids_for_mask(token_type_ids)` for a model whose image tokens attend to their whole
    image bidirectionally (Gemma3: the module defines the function and the model takes `token_type_ids`), else
    None."""
    import inspect
    import sys

    function = getattr(sys.modules.get(type(model).__module__), "get_block_sequence_ids_for_mask", None)
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    return function if callable(function) and takes_types else None


def bidirectional_prefix(model: PreTrainedModel) -> bool:
    """Whether the model attends over its whole prompt bidirectionally when `token_type_ids` marks it as the prefix
    (PaliGemma: image and prompt are a prefix-LM's prefix; the generated tokens are causal). Asked of HF itself: with
    `token_type_ids` all zeros, does the first token's output change when the last one changes? Any failure counts
    as False (causal). Only asked of a model that takes `token_type_ids` without Gemma3's per-image blocks, and once
    per model (the support check and the language program's wrapper both need the answer)."""
    if "token_type_ids" not in inspect.signature(model.forward).parameters or bidirectional_image_blocks(model):
        return False
    if model not in _PREFIX_ANSWERS:
        vocab = model.config.get_text_config(decoder=True).vocab_size
        ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 5]]) % vocab
        try:
            with torch.no_grad():
                logits = model(input_ids=ids, token_type_ids=torch.zeros_like(ids), use_cache=False).logits
            _PREFIX_ANSWERS[model] = not torch.equal(logits[0, 0], logits[1, 0])
        except Exception:  # noqa: BLE001 - a model that cannot answer is taken to be causal
            _PREFIX_ANSWERS[model] = False
    return _PREFIX_ANSWERS[model]


# bidirectional_prefix's answers, per model object (kept only while the model lives)
_PREFIX_ANSWERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cross_attention_layers(model: PreTrainedModel) -> tuple[int, ...]:
    """The cross-attention layers of a vision-language model whose images enter the language model through
    cross-attention (transformers' interface: the forward takes `cross_attention_states` and `cross_attention_mask`,
    the text config names its `cross_attention_layers`; Mllama), else ()."""
    parameters = inspect.signature(model.forward).parameters
    if "cross_attention_states" not in parameters or "cross_attention_mask" not in parameters:
        return ()
    layers = getattr(model.config.get_text_config(decoder=True), "cross_attention_layers", None)
    return tuple(int(i) for i in layers) if isinstance(layers, (list, tuple)) else ()


def multimodal_rope_rows(model: PreTrainedModel) -> int | None:
    """The number of rotary position rows (axes) of a model with multimodal rotary positions (M-RoPE: HF computes
    them with `get_rope_index`), else None."""
    inner = getattr(model, "model", model)
    if not hasattr(model, "get_rope_index") and not hasattr(inner, "get_rope_index"):
        return None
    rope = getattr(model.config.get_text_config(decoder=True), "rope_parameters", None) or {}
    sections = rope.get("mrope_section") if isinstance(rope, dict) else None
    return len(sections) if isinstance(sections, (list, tuple)) and sections else 3


def prefill_continues_from_state(model: PreTrainedModel) -> bool:
    """Whether the model's multi-token path continues exactly from a stored recurrent state.

    Asked of HF itself with its own DynamicCache: the last logits of 8 tokens in one call against 4 + 4 in two
    calls. True for Mamba2-style SSD scans, gated delta rules and short convolutions, whose chunked algorithms take
    an initial state; False for Mamba-1's selective scan, which restarts from zero (its prefill must then fit in one
    chunk). Any failure counts as False, the safe answer.
    """
    config = model.config.get_text_config(decoder=True)
    ids = (torch.arange(8).unsqueeze(0) * 7 + 3) % config.vocab_size
    try:
        with torch.no_grad():
            whole = model(input_ids=ids, cache=DynamicCache(config=config), use_cache=True).logits[:, -1]
            cache = DynamicCache(config=config)
            model(input_ids=ids[:, :4], cache=cache, use_cache=True)
            parts = model(input_ids=ids[:, 4:], cache=cache, use_cache=True).logits[:, -1]
    except Exception:  # noqa: BLE001 - any failure: prefill in one chunk
        return False
    return bool(torch.allclose(whole, parts, atol=1e-4, rtol=1e-3))


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


class _ImageFeatures(list):
    """The image features as HF's merge reads `pooler_output`: a list of per-image tensors (LLaVA concatenates them)
    that also acts as the one tensor other models take (Gemma3 calls `.to(...)` on it, DeepSeek-VL `.reshape(...)`,
    Video-LLaVA `.flatten(0, 1)`): any tensor attribute is the concatenated features' as one batch, `[1, N, H]`, the
    shape of HF's own `pooler_output`."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(torch.cat(list(self)).unsqueeze(0), name)


class _ImageOutput(BaseModelOutputWithPooling):
    """The vision output handed to HF: a field the vision encoder does not give (none are known before the vision
    encoder is exported, e.g. while probing the language model with text) reads as an empty list."""

    def __getattr__(self, name: str) -> list:
        if name.startswith("_"):
            raise AttributeError(name)
        return []


class CausalLMForExport(nn.Module):
    """A HF causal LM behind the fixed-shape, retained-state KV-cache contract."""

    def __init__(
        self, model: PreTrainedModel, continuous_batching: bool = False, image_token_id: int | None = None
    ) -> None:
        """`image_token_id`: the placeholder token of a vision-language model's images; the graph then takes
        `image_embeds` (the features that replace those tokens' embeddings)."""
        super().__init__()
        self.model = model
        with absent_image_outputs():
            self.layout = probe_cache_layout(model)
        self.continuous_batching = continuous_batching
        self.image_token_id = image_token_id
        self.rope_rows = multimodal_rope_rows(model) if image_token_id is not None else None
        self.image_blocks = bidirectional_image_blocks(model) if image_token_id is not None else None
        # a prefix-LM (PaliGemma): every token of a prompt's prefill step reads the whole step (one block)
        self.prefix_lm = image_token_id is not None and self.image_blocks is None and bidirectional_prefix(model)
        if self.prefix_lm:
            self.image_blocks = torch.zeros_like
        # A model whose forward takes no precomputed features (`mm_encoder_outputs`; audio LLMs such as Voxtral) gets
        # them merged into `inputs_embeds` here, as its own forward merges its encoder's output: each placeholder
        # token's embedding replaced by its feature row.
        takes_features = "mm_encoder_outputs" in inspect.signature(model.forward).parameters
        self.merge_into_embeddings = image_token_id is not None and not takes_features
        # width of `image_embeds`: the image features' (the language model's hidden size unless the model projects
        # the vision tower's output itself); set by QEFFAutoModelForImageTextToText from its vision encoder
        self.image_features_dim: int | None = None
        # per-token fields of the vision output beside the features (Qwen3-VL's `deepstack_features`): name ->
        # [L, H]; the graph takes each as `image_<name>` [B, S, L, H] and hands HF a list over L
        self.image_fields: dict[str, tuple[int, ...]] = {}
        # a cross-attention vision-language model's `cross_attention_mask` rows: (n_images, n_tiles), set with the
        # retained cross keys' shapes by `use_cross_attention`; None otherwise
        self.cross_mask_shape: tuple[int, ...] | None = None
        # Recurrent state: whether a prefill chunk continues from the stored state (chunked prefill of any length)
        # or must start from zero (a prompt fits one chunk). Decided by asking HF, before any wrapper is involved.
        self.prefill_continues = self.layout.has_recurrent_state and prefill_continues_from_state(model)
        head = model.get_output_embeddings()
        if head is None:
            raise UnsupportedCausalLMError(f"{type(model).__name__} has no output embedding (lm_head).")
        self.last_position = LastValidPosition(head)
        # Mixture-of-experts layers that dispatch through transformers' ExpertsInterface run HF's "batched_mm"
        # (a gather of each token's experts + bmm: static shapes, plain ONNX ops) instead of the default
        # grouped_mm, whose token counting (histc) and data-dependent splits do not export.
        self.experts = exportable_experts(model)
        self.adapter = adapter_for(model)
        # LoRA adapters as graph inputs after the past ones (QEfficient/peft/lora.py), set by the LoRA model classes
        self.lora: LoraGraph | None = None
        self.attention = self.model.config._attn_implementation
        self.attention = self._choose_attention()

    def use_lora(self, lora: LoraGraph | None) -> None:
        """Take LoRA adapter inputs (`LoraGraph`: its hooks add each targeted module's LoRA term), or none; a graph
        used before has its hooks removed."""
        if self.lora is not None and self.lora is not lora:
            self.lora.remove()
        self.lora = lora

    def use_cross_attention(self, shapes: dict[int, tuple[int, int, int]], mask_shape: tuple[int, ...]) -> None:
        """Retain the cross-attention keys and values of layers `shapes` (layer -> (H_kv, T, D), what the vision
        program computes) and take the per-token `cross_attention_mask` rows of trailing shape `mask_shape`."""
        for layer in shapes:
            if layer >= self.layout.num_layers or self.layout.placeholders[layer] != "unused":
                raise UnsupportedCausalLMError(
                    f"Layer {layer} of {type(self.model).__name__} is named a cross-attention layer but is not left "
                    "empty by text-only input, so its cross keys and values cannot be retained beside its cache."
                )
        cross = tuple(shapes.get(i) for i in range(self.layout.num_layers))
        self.layout = dataclasses.replace(self.layout, cross_shapes=cross)
        self.cross_mask_shape = tuple(int(n) for n in mask_shape)

    def _choose_attention(self) -> str:
        """`grouped_query_attention` if the model dispatches through transformers' attention interface and
        gives the same logits with it as with the implementation it was loaded with or with eager attention (whose
        arithmetic it repeats); otherwise the implementation it was loaded with.

        The choice applies only inside this wrapper's forward: the HF model itself is left unchanged.
        """
        loaded = self.attention
        references = [self._probe_logits()]
        if loaded != "eager":  # sdpa reassociates the sums (1e-3 apart on real weights); grouped attention is eager's
            try:
                self.attention = "eager"
                references.append(self._probe_logits())
            except Exception:  # noqa: BLE001 - no eager path: compare with the loaded implementation only
                pass
        self.attention = grouped_attention.NAME
        try:
            grouped = self._probe_logits()
            same = any(torch.allclose(grouped, reference, atol=1e-4, rtol=0) for reference in references)
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
                *([torch.zeros(1, 6, self.image_embeds_width)] if self.image_token_id is not None else []),
                *(torch.zeros(1, 6, *shape) for shape in self.image_fields.values()),
                *([torch.zeros(1, 6, self.rope_rows)] if self.rope_rows else []),
                *([torch.zeros(1, 6, *self.cross_mask_shape)] if self.cross_mask_shape else []),
                *([torch.zeros(1, 1, dtype=torch.int64)] if self.continuous_batching else []),
                *past,
            )[0]

    def _image_features(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """The feature rows of `image_embeds` (its last column flags a row that holds an image feature) at the
        image tokens. An image token without a feature (a generated token that happens to be the image token: HF
        passes no image features after the prompt) keeps its own embedding, as in HF, where the features replace
        token embeddings."""
        values, given = image_embeds[..., :-1], image_embeds[..., -1:] > 0.5
        embeddings = self.model.get_input_embeddings()
        if self.image_embeds_dim == embeddings.weight.shape[1]:
            own = embeddings(input_ids.clamp(0, embeddings.weight.shape[0] - 1)).to(values.dtype)
            values = torch.where(given, values, own)
        return values[input_ids == self.image_token_id]

    def _merged_embeddings(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """`inputs_embeds [B, S, H]`: the token embeddings with each placeholder token's replaced by its feature row
        (where the flag column gives one; a generated placeholder token keeps its own embedding)."""
        embeddings = self.model.get_input_embeddings()
        if self.image_embeds_dim != embeddings.weight.shape[1]:
            raise UnsupportedCausalLMError(
                f"{type(self.model).__name__}'s encoder features are {self.image_embeds_dim} wide but its token "
                f"embeddings {embeddings.weight.shape[1]}: they cannot replace the placeholder tokens' embeddings."
            )
        own = embeddings(input_ids.clamp(0, embeddings.weight.shape[0] - 1))
        values, given = image_embeds[..., :-1].to(own.dtype), image_embeds[..., -1:] > 0.5
        is_feature = (input_ids == self.image_token_id).unsqueeze(-1) & given
        return torch.where(is_feature, values, own)

    @property
    def image_embeds_dim(self) -> int:
        """Width of the image features: by default the language model's hidden size, as the features replace token
        embeddings."""
        return self.image_features_dim or int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def image_embeds_width(self) -> int:
        """Width of the `image_embeds` input: the features and one flag column (1 where a row holds a feature)."""
        return self.image_embeds_dim + 1

    @property
    def export_identity(self) -> dict:
        """What, beyond config and weights, determines the exported graph (part of the export hash)."""
        adapter = self.adapter.name if self.adapter else None
        return {
            "attention": self.attention,
            "experts": self.experts,
            "adapter": adapter,
            "layout": repr(self.layout),
            "prefill_continues": self.prefill_continues,
            "image_token_id": self.image_token_id,
            "image_embeds_dim": self.image_embeds_dim if self.image_token_id is not None else None,
            "rope_rows": self.rope_rows,
            "bidirectional_image_blocks": self.image_blocks is not None,
            "bidirectional_prefix": self.prefix_lm,
            "image_fields": dict(self.image_fields),
            "merge_into_embeddings": self.merge_into_embeddings,
            "cross_attention_mask": self.cross_mask_shape,
            **({"lora": self.lora.layout.identity} if self.lora is not None else {}),
        }

    @property
    def adapter_name(self) -> str:
        """The registered adapter this architecture runs with ("" when the generic mechanism suffices)."""
        return self.adapter.name if self.adapter else ""

    @property
    def config(self):  # noqa: ANN201 - the wrapped HF config
        return self.model.config

    def input_names(self) -> list[str]:
        names = ["input_ids", "position_ids"] + (["image_embeds"] if self.image_token_id is not None else [])
        names += [f"image_{name}" for name in self.image_fields]
        names += ["rope_offsets"] if self.rope_rows else []
        names += ["cross_attention_mask"] if self.cross_mask_shape else []
        names += ["batch_index"] if self.continuous_batching else []
        return names + self.past_names() + (self.lora.input_names() if self.lora is not None else [])

    def past_names(self) -> list[str]:
        return list(self.layout.past_shapes(1, 1))

    def output_names(self) -> list[str]:
        return ["logits"] + [f"{name}_RetainedState" for name in self.past_names()]

    @contextlib.contextmanager
    def _implementations(self) -> Iterator[None]:
        """The attention, experts and adapter choices (and ALiBi on the 4-D mask), for the duration of a call."""
        with (
            applied(self.model, self.attention, self.experts, self.adapter),
            alibi_from_4d_masks(self.model),
            exportable_deepstack(self.model),
            absent_image_outputs(),
        ):
            yield

    @property
    def has_recurrent_state(self) -> bool:
        """Whether some layer keeps conv/recurrent state (then prefill and decode are separate graphs)."""
        return self.layout.has_recurrent_state

    @property
    def prefill_starts_from_zero(self) -> bool:
        """Whether a prefill chunk of more than one token cannot continue from a stored recurrent state (Mamba-1),
        so that each prompt must be prefilled in one chunk."""
        return self.layout.has_recurrent_state and not self.prefill_continues

    def _per_layer(self, past: tuple[torch.Tensor, ...]) -> list[PastEntry]:
        """The flat past inputs grouped per layer, in `CacheLayout.past_shapes` order."""
        buffers = iter(past)
        per_layer: list[PastEntry] = []
        for i, key_shape in enumerate(self.layout.key_shapes):
            states = self.layout.layer_states(i)
            if self.layout.cross_shape(i) is not None:
                per_layer.append(CrossBuffers(next(buffers), next(buffers)))
                continue
            if key_shape is None and not states:
                per_layer.append(self.layout.placeholders[i])
                continue
            count = 0 if key_shape is None else 2 if self.layout.indexer_dim(i) is None else 3
            kv = tuple(next(buffers) for _ in range(count)) or None
            per_layer.append(LayerBuffers(kv, {(kind, index): next(buffers) for kind, index, _ in states}))
        return per_layer

    def _masks(
        self, position_ids: torch.Tensor, ctx_len: int | None, dtype: torch.dtype, blocks: torch.Tensor | None = None
    ) -> torch.Tensor | dict:
        """The `attention_mask` argument: 4-D masks from `position_ids` (one, or a dict by layer type), and for
        recurrent layers the 2-D padding mask HF's mixers multiply into their input (docs/recurrent_state.md).
        `blocks`: bidirectional image blocks (`attention_masks`)."""
        padding = (position_ids >= 0).to(dtype)
        if not self.layout.has_attention:  # pure state-space models take the 2-D mask
            return padding
        masks = attention_masks(position_ids, ctx_len, dtype, dict(self.layout.windows), blocks)
        if not self.layout.masks_by_layer_type:  # one mask for every layer: the windowed kind if the model has one
            return next((masks[t] for t, _ in self.layout.windows), masks["full_attention"])
        if not self.layout.has_recurrent_state:
            return masks
        # HF's hybrids read the 2-D recurrent mask under "linear_attention" or "conv"; another layer type ("hybrid",
        # "mamba", ...) gets the causal mask if the layer keeps a KV cache, else the 2-D one.
        by_type = {**masks, "linear_attention": padding, "conv": padding}
        # A hybrid layer type with a window ("hybrid_sliding") hands its attention the "sliding_attention" mask.
        sliding = next((masks[t] for t, _ in self.layout.windows if t in SLIDING_LAYER_TYPES), None)
        for layer_type in SLIDING_LAYER_TYPES if sliding is not None else ():
            by_type.setdefault(layer_type, sliding)
        for layer_type, key_shape in zip(self.layout.layer_types, self.layout.key_shapes):
            by_type.setdefault(layer_type, masks["full_attention"] if key_shape is not None else padding)
        return by_type

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *rest: torch.Tensor) -> tuple:
        rest = list(rest)
        image_embeds = rest.pop(0) if self.image_token_id is not None else None
        image_fields = {name: rest.pop(0) for name in self.image_fields}
        rope_offsets = rest.pop(0) if self.rope_rows else None
        cross_mask = rest.pop(0) if self.cross_mask_shape else None
        batch_index = rest.pop(0) if self.continuous_batching else None
        lora = self.lora.applied(rest[-len(self.lora.input_names()) :]) if self.lora is not None else None
        past = tuple(rest[: -len(self.lora.input_names())] if self.lora is not None else rest)
        per_layer = self._per_layer(past)
        ctx_len = next((e.kv[0].shape[2] for e in per_layer if isinstance(e, LayerBuffers) and e.kv), None)
        # Recurrent layers: one token (decode), or a prefill chunk that continues, start from their input state.
        previous_state = input_ids.shape[1] == 1 or self.prefill_continues
        cache = FixedCache(per_layer, position_ids, batch_index, previous_state)
        blocks = None
        if self.image_blocks is not None:  # HF's own block ids of the image tokens (token type 1) of this step
            blocks = self.image_blocks((input_ids == self.image_token_id).long())
        mask = self._masks(position_ids, ctx_len, past[0].dtype, blocks)
        # the tokens: their ids (HF embeds them), or their embeddings with the features merged in
        multimodal: dict[str, Any] = {"input_ids": input_ids}
        if image_embeds is not None and self.merge_into_embeddings:
            multimodal = {"inputs_embeds": self._merged_embeddings(input_ids, image_embeds)}
        elif image_embeds is not None:  # HF merges the features at its image-token positions, in its own way
            features = self._image_features(input_ids, image_embeds).to(past[0].dtype)
            # HF reads the projected features (`pooler_output`, a list per image) or, where it projects them itself,
            # the vision tower's `last_hidden_state`
            image = _ImageOutput(last_hidden_state=features, pooler_output=_ImageFeatures([features]))
            is_image = input_ids == self.image_token_id
            for name, values in image_fields.items():  # [n, L, H] at the image tokens -> a list over L
                rows = values[is_image].to(past[0].dtype)
                setattr(image, name, [_ImageFeatures([rows[:, layer]]) for layer in range(rows.shape[1])])
            multimodal["mm_encoder_outputs"] = {"image": image}
        if cross_mask is not None:  # HF prepares the rows (the tiles' vision tokens each image token may read)
            multimodal["cross_attention_mask"] = cross_mask.to(past[0].dtype)
        rope_positions = position_ids.clamp(min=0)
        if rope_offsets is not None:  # [R, B, S]: each axis's rotary position
            rope_positions = rope_positions.unsqueeze(0) + rope_offsets.permute(2, 0, 1).round().long()
        with self._implementations(), self.last_position.at(position_ids), lora or contextlib.nullcontext():
            out = self.model(
                position_ids=rope_positions,
                attention_mask=mask,
                cache=cache,
                use_cache=True,
                **multimodal,
            )
        return (out.logits.float(), *cache.retained_state())
