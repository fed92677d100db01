"""`Seq2SeqForExport`: a HF encoder-decoder model (speech-to-text, image-to-text) as two fixed-shape graphs
(docs/speech_to_text.md, docs/image_text_to_text.md).

    encoder: (encoder inputs [B, ...], the floating-point one first)
             -> (cross_key.0, cross_value.0, ... [, encoder_attention_mask])    each [B, H, T_enc, D]; mask [B, T_enc]
    decoder: (input_ids [B,S], position_ids [B,S] [, encoder_attention_mask [B, T_enc]], past_key.0, past_value.0, ...,
              cross_key.0, cross_value.0, ...)
             -> (logits [B,1,V], past_key.0_RetainedState, ..., cross_key.0_RetainedState, ...)

The encoder inputs are whatever the HF model's encoder takes: audio (`input_features` or `input_values`), an image
(`pixel_values`, Pix2Struct's `flattened_patches` with its `attention_mask`), or an image with text ids
(Florence-2's `input_ids`, `pixel_values`, `attention_mask`). When the decoder's cross-attention is masked (the
encoder took an `attention_mask`, or its output carries one, as UDOP's), the encoder graph also returns that mask
over the encoder's output positions, `encoder_attention_mask`, and the decoder graph takes it at every step.

Both go through transformers' own interfaces, with no model-specific code:

- The encoder graph runs the HF model once (its encoder, then its decoder on one start token) with an
  `EncoderDecoderCache` of two `DynamicCache`s: the decoder's cross-attention layers fill the cross-attention cache
  with their keys and values, which are read back as the outputs. What else the decoder computes is unused and
  leaves the graph. The cross keys and values are therefore computed once per input (clip or image), by the
  model's own code.
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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.modeling_outputs import BaseModelOutput

from QEfficient.transformers.cache_utils import FixedCache, LastValidPosition, LayerBuffers, attention_masks

CROSS_KEY = "cross_key"
CROSS_VALUE = "cross_value"
ENCODER_MASK = "encoder_attention_mask"  # the cross-attention mask over the encoder's output positions [B, T_enc]


class UnsupportedEncoderDecoderError(ValueError):
    """The model does not fit the generic encoder-decoder mechanism."""


UnsupportedSpeechModelError = UnsupportedEncoderDecoderError  # the name the speech classes have always raised


class CrossAttentionLayer(CacheLayerMixin):
    """One decoder layer's cross-attention keys and values `[B, H, T_enc, D]`, computed once per input by the
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
        raise UnsupportedEncoderDecoderError(
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
    raise UnsupportedEncoderDecoderError(
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
    raise UnsupportedEncoderDecoderError(
        f"{type(model).__name__} takes {model.main_input_name!r}, neither audio features nor samples; it is not a "
        "speech-to-text model."
    )


AUDIO_INPUTS = ("input_features", "input_values")

EncoderInputs = Mapping[str, torch.Tensor]


def as_encoder_inputs(model: PreTrainedModel, encoder_input: torch.Tensor | EncoderInputs) -> dict[str, torch.Tensor]:
    """The encoder inputs by the HF model's keyword: a dict as it is, the floating-point input first (the graph
    tells the encoder from the decoder by it); a single tensor is the audio input (`encoder_input_name`)."""
    if isinstance(encoder_input, torch.Tensor):
        return {encoder_input_name(model): encoder_input}
    inputs = dict(encoder_input)
    floating = [name for name, t in inputs.items() if t.is_floating_point()]
    if not floating:
        raise UnsupportedEncoderDecoderError(
            f"The encoder inputs of {type(model).__name__} ({', '.join(inputs)}) hold no floating-point input (audio "
            "or pixels); an encoder on token ids alone is a text encoder-decoder, not handled here."
        )
    parameters = inspect.signature(model.forward).parameters
    unknown = [name for name in inputs if name not in parameters]
    if unknown:
        raise UnsupportedEncoderDecoderError(
            f"{type(model).__name__}.forward takes no {', '.join(map(repr, unknown))}; its encoder inputs are among "
            f"{', '.join(p for p in parameters if p not in ('kwargs', 'labels'))}."
        )
    return {floating[0]: inputs.pop(floating[0]), **inputs}


def run_with_cache(
    model: PreTrainedModel, encoder_input: torch.Tensor | EncoderInputs, decoder_ids: torch.Tensor
) -> Cache:
    """Run the HF model (encoder, then decoder on `decoder_ids`) with an `EncoderDecoderCache` of `DynamicCache`s;
    return the cache it filled."""
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    inputs = as_encoder_inputs(model, encoder_input)
    out = model(**inputs, decoder_input_ids=decoder_ids, cache=cache, use_cache=True)
    filled = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
    if not isinstance(filled, EncoderDecoderCache):
        raise UnsupportedEncoderDecoderError(
            f"{type(model).__name__} does not keep its decoder's keys and values in transformers' "
            f"EncoderDecoderCache (it returned {type(filled).__name__})."
        )
    return filled


@dataclass(frozen=True)
class EncoderOutputInfo:
    """What the decoder graph needs to know of the encoder's output: its class (handed to the model as
    `encoder_outputs`), the shape (without the batch; -1 for the encoder output length) of each tensor it holds
    (`last_hidden_state`, and e.g. PP-FormulaNet's `pooler_output`, which its decoder reads instead), and whether it
    carries its own `attention_mask` (UDOP's: text and image positions)."""

    output_type: type
    fields: tuple[tuple[str, tuple[int, ...]], ...]
    has_mask: bool


def probe_layout(
    model: PreTrainedModel, encoder_input: torch.Tensor | EncoderInputs
) -> tuple[Seq2SeqLayout, int, EncoderOutputInfo]:
    """Which decoder layers keep self-attention and cross-attention keys and values, and their sizes, by running HF
    with a `DynamicCache` on two start tokens; T_enc, the cross keys' length for this encoder input; and what the
    encoder's output is (what the decoder graph hands the model as `encoder_outputs`)."""
    name = type(model).__name__
    seen: list[Any] = []
    hook = model.get_encoder().register_forward_hook(lambda module, args, output: seen.append(output))
    inputs = {k: v[:1] for k, v in as_encoder_inputs(model, encoder_input).items()}
    try:
        with torch.no_grad():
            cache = run_with_cache(model, inputs, decoder_start_ids(model, 1, 2))
    finally:
        hook.remove()
    output = seen[0] if seen else None
    fields = _fields(type(output))
    output_type = type(output) if "last_hidden_state" in fields else BaseModelOutput
    mask = getattr(output, "attention_mask", None) if "attention_mask" in fields else None

    def sizes(layers: list, what: str) -> tuple[tuple[int, int] | None, ...]:
        out = []
        for i, layer in enumerate(layers):
            keys = getattr(layer, "keys", None) if getattr(layer, "is_initialized", False) else None
            if keys is None or not isinstance(keys, torch.Tensor) or keys.dim() != 4:
                out.append(None)
                continue
            values = layer.values
            if values.shape[:3] != keys.shape[:3]:
                raise UnsupportedEncoderDecoderError(
                    f"Layer {i} of {name} caches {what} keys {tuple(keys.shape)} and values {tuple(values.shape)} "
                    "of different shapes; the graph contract keeps [B, H, T, D] pairs."
                )
            if what == "self-attention" and keys.shape[2] != 2:
                raise UnsupportedEncoderDecoderError(
                    f"Layer {i} of {name} keeps {keys.shape[2]} self-attention positions after 2 tokens; the fixed "
                    "cache writes one slot per token."
                )
            out.append((keys.shape[1], keys.shape[3]))
        return tuple(out)

    self_kv = sizes(cache.self_attention_cache.layers, "self-attention")
    cross_kv = sizes(cache.cross_attention_cache.layers, "cross-attention")
    if not any(self_kv):
        raise UnsupportedEncoderDecoderError(f"{name}'s decoder keeps no self-attention cache in transformers' Cache.")
    if not any(cross_kv):
        raise UnsupportedEncoderDecoderError(
            f"{name}'s decoder keeps no cross-attention keys and values in transformers' EncoderDecoderCache."
        )
    encoder_len = next(layer.keys.shape[2] for layer, s in zip(cache.cross_attention_cache.layers, cross_kv) if s)
    tensors: dict[str, torch.Tensor] = {}
    if output_type is not BaseModelOutput:
        tensors = {
            f: getattr(output, f)
            for f in _fields(output_type)
            if f != "attention_mask" and isinstance(getattr(output, f, None), torch.Tensor)
        }
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        tensors = {"last_hidden_state": output[0]}
    if not tensors:
        tensors = {"last_hidden_state": torch.zeros((1, encoder_len, _hidden_size(model.config)))}
    shapes = tuple(
        (f, tuple(-1 if d == encoder_len and axis == 0 else d for axis, d in enumerate(t.shape[1:])))
        for f, t in tensors.items()
    )
    info = EncoderOutputInfo(output_type, shapes, isinstance(mask, torch.Tensor))
    return Seq2SeqLayout(self_kv, cross_kv), encoder_len, info


class Seq2SeqForExport(nn.Module):
    """A HF encoder-decoder model behind the two-graph contract of this module's docstring.

    `encoder_input`: example encoder inputs, one tensor (the audio input) or a dict by the HF model's keywords (the
    floating-point input first: `forward` serves both graphs, and a floating-point first input is the encoder's,
    an integer one the decoder's token ids).
    """

    def __init__(self, model: PreTrainedModel, encoder_input: torch.Tensor | EncoderInputs) -> None:
        super().__init__()
        self.model = model
        inputs = as_encoder_inputs(model, encoder_input)
        self.encoder_input_names = list(inputs)
        self.encoder_input_dtypes = {name: t.dtype for name, t in inputs.items()}
        self.layout, encoder_len, self.encoder_info = probe_layout(model, inputs)
        self.encoder_output_type = self.encoder_info.output_type
        # T_enc per encoder input shapes (without the batch)
        self._encoder_lengths = {self._shape_key(inputs): encoder_len}
        parameters = inspect.signature(model.forward).parameters
        self.takes_position_ids = "decoder_position_ids" in parameters
        self.takes_attention_mask = "decoder_attention_mask" in parameters
        # how the decoder's cross-attention is masked: by the encoder output's own mask (UDOP), by the encoder's
        # `attention_mask` input (Pix2Struct, Florence-2), or not at all (Whisper, ViT encoders)
        if self.encoder_info.has_mask:
            self.encoder_mask: str | None = "output"
        elif "attention_mask" in inputs and "attention_mask" in parameters:
            self.encoder_mask = "input"
        else:
            self.encoder_mask = None
        head = model.get_output_embeddings()
        if head is None:
            raise UnsupportedEncoderDecoderError(f"{type(model).__name__} has no output embedding (lm head).")
        self.last_position = LastValidPosition(head)

    @staticmethod
    def _shape_key(inputs: EncoderInputs) -> tuple:
        return tuple((name, tuple(t.shape[1:])) for name, t in inputs.items())

    @property
    def config(self):  # noqa: ANN201 - the wrapped HF config
        return self.model.config

    @property
    def export_identity(self) -> dict:
        """What, beyond config and weights, determines the exported graphs (part of the export hash)."""
        return {
            "layout": repr(self.layout),
            "position_ids": self.takes_position_ids,
            "encoder_inputs": self.encoder_input_names,
            "encoder_mask": self.encoder_mask,
        }

    @property
    def encoder_input_name(self) -> str:
        """The HF model's main encoder input (the floating-point one): `input_features` (log-mel frames),
        `input_values` (samples), `pixel_values`, `flattened_patches`, ..."""
        return self.encoder_input_names[0]

    def encoder_output_length(self, input_shape: tuple[int, ...] | Mapping[str, Any]) -> int:
        """T_enc, the cross keys' length for one encoder input of `input_shape` (without the batch), from one run of
        the HF model (remembered per shape). Several inputs: a dict by name of shapes, or of one row's example
        arrays (run as they are: token ids must hold what the model expects, e.g. its image tokens)."""
        given = input_shape if isinstance(input_shape, Mapping) else {self.encoder_input_name: tuple(input_shape)}
        rows = {}
        for name in self.encoder_input_names:
            value = given[name]
            if isinstance(value, (tuple, list, torch.Size)):
                rows[name] = torch.zeros((1, *value), dtype=self.encoder_input_dtypes[name])
            else:
                rows[name] = torch.as_tensor(value, dtype=self.encoder_input_dtypes[name])[None]
        key = self._shape_key(rows)
        if key not in self._encoder_lengths:
            with torch.no_grad():
                cross = self.encode(*rows.values())
            self._encoder_lengths[key] = cross[0].shape[2]
        return self._encoder_lengths[key]

    def encoder_output_names(self) -> list[str]:
        return [*self.layout.cross_names(), *([ENCODER_MASK] if self.encoder_mask else [])]

    def decoder_input_names(self) -> list[str]:
        mask = [ENCODER_MASK] if self.encoder_mask else []
        return ["input_ids", "position_ids", *mask, *self.layout.past_names(), *self.layout.cross_names()]

    def decoder_output_names(self) -> list[str]:
        state = [*self.layout.past_names(), *self.layout.cross_names()]
        return ["logits", *(f"{name}_RetainedState" for name in state)]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if inputs[0].is_floating_point():
            return self.encode(*inputs)
        return self.decode(*inputs)

    def encode(self, *encoder_inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The cross-attention keys and values of every decoder layer that has them, in `cross_names` order, then
        the encoder attention mask `[B, T_enc]` (int64) where the cross-attention is masked."""
        inputs = dict(zip(self.encoder_input_names, encoder_inputs))
        seen: list[Any] = []
        hook = None
        if self.encoder_mask == "output":
            hook = self.model.get_encoder().register_forward_hook(lambda module, args, output: seen.append(output))
        try:
            start = decoder_start_ids(self.model, encoder_inputs[0].shape[0], 1)
            cache = run_with_cache(self.model, inputs, start)
        finally:
            if hook is not None:
                hook.remove()
        layers = cache.cross_attention_cache.layers
        cross = tuple(t for i, s in enumerate(self.layout.cross_kv) if s for t in (layers[i].keys, layers[i].values))
        if self.encoder_mask == "output":
            return (*cross, seen[0].attention_mask.ne(0).to(torch.int64))
        if self.encoder_mask == "input":
            return (*cross, inputs["attention_mask"].ne(0).to(torch.int64))
        return cross

    def decode(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *buffers: torch.Tensor) -> tuple:
        """Logits at each row's last valid position, then the retained state: the self-attention cache after this
        step, and the cross keys and values as they came in."""
        encoder_mask = None
        if self.encoder_mask:
            encoder_mask, buffers = buffers[0], buffers[1:]
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
        # what the decoder would otherwise take from the encoder, of the encoder output's shapes: only their shapes
        # are read (the cross-attention keys and values come from the cache)
        batch, encoder_len = input_ids.shape[0], cross[0].shape[2]
        placeholders = {
            name: cross[0].new_zeros((batch, *(encoder_len if d == -1 else d for d in shape)))
            for name, shape in self.encoder_info.fields
        }
        kwargs: dict[str, Any] = {}
        if self.takes_position_ids:
            kwargs["decoder_position_ids"] = position_ids.clamp(min=0)
        if self.takes_attention_mask:
            kwargs["decoder_attention_mask"] = attention_masks(position_ids, ctx_len, buffers[0].dtype)[
                "full_attention"
            ]
        if self.encoder_mask == "output":
            placeholders["attention_mask"] = encoder_mask
        elif self.encoder_mask == "input":
            kwargs["attention_mask"] = encoder_mask
        encoder_outputs = self.encoder_output_type(**placeholders)
        with self.last_position.at(position_ids):
            out = self.model(
                encoder_outputs=encoder_outputs, decoder_input_ids=input_ids, cache=cache, use_cache=True, **kwargs
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
