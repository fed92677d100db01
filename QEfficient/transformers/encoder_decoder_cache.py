"""`Seq2SeqForExport`: a HF encoder-decoder (speech-to-text) model as two fixed-shape graphs (docs/speech_to_text.md).

    encoder: (input_features [B, ...])  ->  (cross_key.0, cross_value.0, ...)            each [B, H, T_enc, D]
    decoder: (input_ids [B,S], position_ids [B,S], past_key.0, past_value.0, ..., cross_key.0, cross_value.0, ...)
             -> (logits [B,1,V], past_key.0_RetainedState, ..., cross_key.0_RetainedState, ...)

Both go through transformers' own interfaces, with no model-specific code:

- The encoder graph runs the HF model once (its encoder, then its decoder on one start token) with an
  `EncoderDecoderCache` of two `DynamicCache`s: the decoder's cross-attention layers fill the cross-attention cache
  with their keys and values, which are read back as the outputs. What else the decoder computes is unused and
  leaves the graph. The cross keys and values are therefore computed once per clip, by the model's own code.
- The decoder graph hands HF an `EncoderDecoderCache(self-attention: FixedCache, cross-attention: the inputs)` whose
  cross-attention layers are marked updated, so the model reads them as they are (HF's own path for every step after
  the first). The self-attention cache is the causal contract's (docs/causal_lm.md): position-indexed writes into
  `[B, H, ctx_len, D]` buffers, masks built from `position_ids`, -1 marks padding. Logits are computed only at each
  row's last valid position.

The cross keys and values are retained state of the decoder too: their `_RetainedState` outputs are the inputs
themselves, so the backend keeps them where it keeps the cache (bound in place, never copied per step) and a decode
step costs only the decoder.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.modeling_outputs import BaseModelOutput

from QEfficient.transformers.cache_utils import FixedCache, LastValidPosition, LayerBuffers, attention_masks

CROSS_KEY = "cross_key"
CROSS_VALUE = "cross_value"


class UnsupportedSpeechModelError(ValueError):
    """The model does not fit the generic encoder-decoder mechanism."""


class CrossAttentionLayer(CacheLayerMixin):
    """One decoder layer's cross-attention keys and values `[B, H, T_enc, D]`, computed once per clip by the
    encoder graph. HF reads them as they are (the layer is marked updated); an `update` means the model recomputes
    them at every step, which the graph contract does not allow."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """The keys and values are graph inputs; nothing to allocate."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object):
        raise UnsupportedSpeechModelError(
            "The model recomputes its cross-attention keys and values at every decoder step instead of reading them "
            "from transformers' EncoderDecoderCache, so they cannot be computed once by the encoder graph."
        )

    def get_seq_length(self) -> int:
        return self.keys.shape[-2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[-2], 0

    def get_max_length(self) -> int:
        return self.keys.shape[-2]


@dataclass(frozen=True)
class Seq2SeqLayout:
    """The decoder's caches, probed from HF itself: per decoder layer, the self-attention cache's `(H_kv, D)` and the
    cross-attention keys' `(H, D)` (None where a layer keeps none), and the encoder output length the cross keys
    have for the traced encoder input."""

    self_kv: tuple[tuple[int, int] | None, ...]
    cross_kv: tuple[tuple[int, int] | None, ...]

    def past_names(self) -> list[str]:
        return [f"past_{kind}.{i}" for i, s in enumerate(self.self_kv) if s for kind in ("key", "value")]

    def cross_names(self) -> list[str]:
        return [f"{kind}.{i}" for i, s in enumerate(self.cross_kv) if s for kind in (CROSS_KEY, CROSS_VALUE)]

    def past_shapes(self, batch: int, ctx_len: int) -> dict[str, tuple[int, ...]]:
        """`past_key.{i}` / `past_value.{i}`: `[B, H_kv, ctx_len, D]`."""
        return {
            f"past_{kind}.{i}": (batch, s[0], ctx_len, s[1])
            for i, s in enumerate(self.self_kv)
            if s
            for kind in ("key", "value")
        }

    def cross_shapes(self, batch: int, encoder_len: int) -> dict[str, tuple[int, ...]]:
        """`cross_key.{i}` / `cross_value.{i}`: `[B, H, T_enc, D]`."""
        return {
            f"{kind}.{i}": (batch, s[0], encoder_len, s[1])
            for i, s in enumerate(self.cross_kv)
            if s
            for kind in (CROSS_KEY, CROSS_VALUE)
        }


def decoder_start_token(model: PreTrainedModel) -> int:
    """The token HF `generate` starts the decoder with: the generation config's `decoder_start_token_id`, else its
    `bos_token_id` (transformers' rule for encoder-decoders), else the model config's."""
    for source in (model.generation_config, model.config):
        for name in ("decoder_start_token_id", "bos_token_id"):
            value = getattr(source, name, None)
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if value is not None:
                return int(value)
    raise UnsupportedSpeechModelError(
        f"{type(model).__name__} has no decoder_start_token_id or bos_token_id: the decoder cannot be started."
    )


def decoder_start_ids(model: PreTrainedModel, batch: int, length: int) -> torch.Tensor:
    """`[batch, length]` decoder tokens for probing and tracing: the decoder start token, repeated."""
    return torch.full((batch, length), decoder_start_token(model), dtype=torch.int64)


def encoder_input_name(model: PreTrainedModel) -> str:
    """The keyword under which the HF model takes its audio: `input_features` (frames) or `input_values` (samples),
    from its main input, its encoder's, or its forward's arguments."""
    parameters = inspect.signature(model.forward).parameters
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else None
    for name in (model.main_input_name, getattr(encoder, "main_input_name", None), "input_features", "input_values"):
        if name in AUDIO_INPUTS and name in parameters:
            return name
    raise UnsupportedSpeechModelError(
        f"{type(model).__name__} takes {model.main_input_name!r}, neither audio features nor samples; it is not a "
        "speech-to-text model."
    )


AUDIO_INPUTS = ("input_features", "input_values")


def run_with_cache(model: PreTrainedModel, encoder_input: torch.Tensor, decoder_ids: torch.Tensor) -> Cache:
    """Run the HF model (encoder, then decoder on `decoder_ids`) with an `EncoderDecoderCache` of `DynamicCache`s;
    return the cache it filled."""
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    inputs = {encoder_input_name(model): encoder_input}
    out = model(**inputs, decoder_input_ids=decoder_ids, cache=cache, use_cache=True)
    filled = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
    if not isinstance(filled, EncoderDecoderCache):
        raise UnsupportedSpeechModelError(
            f"{type(model).__name__} does not keep its decoder's keys and values in transformers' "
            f"EncoderDecoderCache (it returned {type(filled).__name__})."
        )
    return filled


def probe_layout(model: PreTrainedModel, encoder_input: torch.Tensor) -> tuple[Seq2SeqLayout, int, type]:
    """Which decoder layers keep self-attention and cross-attention keys and values, and their sizes, by running HF
    with a `DynamicCache` on two start tokens; T_enc, the cross keys' length for this encoder input; and the class of
    the encoder's output (what the decoder graph hands the model as `encoder_outputs`)."""
    name = type(model).__name__
    seen: list[type] = []
    hook = model.get_encoder().register_forward_hook(lambda module, args, output: seen.append(type(output)))
    try:
        with torch.no_grad():
            cache = run_with_cache(model, encoder_input[:1], decoder_start_ids(model, 1, 2))
    finally:
        hook.remove()
    output_type = seen[0] if seen and "last_hidden_state" in _fields(seen[0]) else BaseModelOutput

    def sizes(layers: list, what: str) -> tuple[tuple[int, int] | None, ...]:
        out = []
        for i, layer in enumerate(layers):
            keys = getattr(layer, "keys", None) if getattr(layer, "is_initialized", False) else None
            if keys is None or not isinstance(keys, torch.Tensor) or keys.dim() != 4:
                out.append(None)
                continue
            values = layer.values
            if values.shape[:3] != keys.shape[:3]:
                raise UnsupportedSpeechModelError(
                    f"Layer {i} of {name} caches {what} keys {tuple(keys.shape)} and values {tuple(values.shape)} "
                    "of different shapes; the graph contract keeps [B, H, T, D] pairs."
                )
            if what == "self-attention" and keys.shape[2] != 2:
                raise UnsupportedSpeechModelError(
                    f"Layer {i} of {name} keeps {keys.shape[2]} self-attention positions after 2 tokens; the fixed "
                    "cache writes one slot per token."
                )
            out.append((keys.shape[1], keys.shape[3]))
        return tuple(out)

    self_kv = sizes(cache.self_attention_cache.layers, "self-attention")
    cross_kv = sizes(cache.cross_attention_cache.layers, "cross-attention")
    if not any(self_kv):
        raise UnsupportedSpeechModelError(f"{name}'s decoder keeps no self-attention cache in transformers' Cache.")
    if not any(cross_kv):
        raise UnsupportedSpeechModelError(
            f"{name}'s decoder keeps no cross-attention keys and values in transformers' EncoderDecoderCache."
        )
    encoder_len = next(layer.keys.shape[2] for layer, s in zip(cache.cross_attention_cache.layers, cross_kv) if s)
    return Seq2SeqLayout(self_kv, cross_kv), encoder_len, output_type


class Seq2SeqForExport(nn.Module):
    """A HF encoder-decoder model behind the two-graph contract of this module's docstring.

    `forward` serves both graphs: a floating-point first input is the encoder's (features or samples), an integer one
    the decoder's token ids.
    """

    def __init__(self, model: PreTrainedModel, encoder_input: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.layout, encoder_len, self.encoder_output_type = probe_layout(model, encoder_input)
        self._encoder_lengths = {tuple(encoder_input.shape[1:]): encoder_len}  # T_enc per encoder input shape
        parameters = inspect.signature(model.forward).parameters
        self.takes_position_ids = "decoder_position_ids" in parameters
        self.takes_attention_mask = "decoder_attention_mask" in parameters
        head = model.get_output_embeddings()
        if head is None:
            raise UnsupportedSpeechModelError(f"{type(model).__name__} has no output embedding (lm head).")
        self.last_position = LastValidPosition(head)

    @property
    def config(self):  # noqa: ANN201 - the wrapped HF config
        return self.model.config

    @property
    def export_identity(self) -> dict:
        """What, beyond config and weights, determines the exported graphs (part of the export hash)."""
        return {"layout": repr(self.layout), "position_ids": self.takes_position_ids}

    @property
    def encoder_input_name(self) -> str:
        """The HF model's audio input: `input_features` (log-mel frames) or `input_values` (samples)."""
        return encoder_input_name(self.model)

    def encoder_output_length(self, input_shape: tuple[int, ...]) -> int:
        """T_enc, the cross keys' length for one encoder input of `input_shape` (without the batch), from one run of
        the HF model (remembered per shape)."""
        shape = tuple(input_shape)
        if shape not in self._encoder_lengths:
            with torch.no_grad():
                cross = self.encode(torch.zeros((1, *shape)))
            self._encoder_lengths[shape] = cross[0].shape[2]
        return self._encoder_lengths[shape]

    def encoder_output_names(self) -> list[str]:
        return self.layout.cross_names()

    def decoder_input_names(self) -> list[str]:
        return ["input_ids", "position_ids", *self.layout.past_names(), *self.layout.cross_names()]

    def decoder_output_names(self) -> list[str]:
        state = [*self.layout.past_names(), *self.layout.cross_names()]
        return ["logits", *(f"{name}_RetainedState" for name in state)]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if inputs[0].is_floating_point():
            return self.encode(inputs[0])
        return self.decode(*inputs)

    def encode(self, encoder_input: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The cross-attention keys and values of every decoder layer that has them, in `cross_names` order."""
        cache = run_with_cache(self.model, encoder_input, decoder_start_ids(self.model, encoder_input.shape[0], 1))
        layers = cache.cross_attention_cache.layers
        return tuple(t for i, s in enumerate(self.layout.cross_kv) if s for t in (layers[i].keys, layers[i].values))

    def decode(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *buffers: torch.Tensor) -> tuple:
        """Logits at each row's last valid position, then the retained state: the self-attention cache after this
        step, and the cross keys and values as they came in."""
        layout = self.layout
        past, cross = iter(buffers[: len(layout.past_names())]), buffers[len(layout.past_names()) :]
        per_layer = [LayerBuffers((next(past), next(past))) if s else "unused" for s in layout.self_kv]
        self_cache = FixedCache(per_layer, position_ids)
        cross_iter = iter(cross)
        cross_layers = [
            CrossAttentionLayer(next(cross_iter), next(cross_iter)) if s else CrossAttentionLayer(*_empty(cross[0]))
            for s in layout.cross_kv
        ]
        cache = EncoderDecoderCache(self_cache, Cache(layers=cross_layers))
        cache.is_updated = {i: True for i in range(len(cross_layers))}  # read, never recomputed
        ctx_len = buffers[0].shape[2]
        # what the decoder would otherwise take from the encoder: only its shape is read (the cross-attention keys
        # and values come from the cache)
        hidden = cross[0].new_zeros((input_ids.shape[0], cross[0].shape[2], _hidden_size(self.model.config)))
        kwargs = {}
        if self.takes_position_ids:
            kwargs["decoder_position_ids"] = position_ids.clamp(min=0)
        if self.takes_attention_mask:
            kwargs["decoder_attention_mask"] = attention_masks(position_ids, ctx_len, buffers[0].dtype)[
                "full_attention"
            ]
        with self.last_position.at(position_ids):
            out = self.model(
                encoder_outputs=self.encoder_output_type(last_hidden_state=hidden),
                decoder_input_ids=input_ids,
                cache=cache,
                use_cache=True,
                **kwargs,
            )
        return (out.logits.float(), *self_cache.retained_state(), *cross)


def _empty(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-length keys and values for a decoder layer without cross-attention (never read)."""
    empty = like.new_zeros((like.shape[0], 1, 0, 1))
    return empty, empty


def _fields(output_type: type) -> set[str]:
    """The field names of a HF `ModelOutput` dataclass (empty for anything else)."""
    return {f.name for f in dataclasses.fields(output_type)} if dataclasses.is_dataclass(output_type) else set()


def _hidden_size(config: object) -> int:
    for name in ("d_model", "hidden_size"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    decoder = getattr(config, "decoder", None)
    return int(getattr(decoder, "hidden_size", 1))
