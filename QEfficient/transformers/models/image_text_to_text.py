"""Vision-language models: `QEFFAutoModelForImageTextToText` (docs/image_text_to_text.md).

Two programs by default (`kv_offload=True`, as the reference system does):

- the **vision encoder**: the processor's image inputs (`pixel_values`, and `image_sizes`, `image_grid_thw`, ... where
  the model takes them) -> `image_features [N, H]`, HF's own `get_image_features` (vision tower and projector) with
  its per-image outputs concatenated; a static graph for the compiled image geometry;
- the **language model**: the causal-LM program of `QEFFAutoModelForCausalLM` (fixed-size retained KV cache, chunked
  prefill, decode) with one more per-token input, `image_embeds [B, S, H + 1]`: the image feature that replaces each
  image token's embedding and a flag column set to 1 there (zeros for the other tokens). The graph hands HF the
  features at its image-token positions as `mm_encoder_outputs`, so HF merges them into the input embeddings exactly
  as its `generate` does.

`kv_offload=False`: one program holding both (the reference system's single-QPC mode), `QEFFImageTextSingleProgram`.

Any model whose HF class takes `mm_encoder_outputs` (81 of transformers' 100 image-text-to-text architectures)
goes through the same code; nothing here is specific to one architecture.

**Cross-attention models** (Mllama: the forward takes `cross_attention_states` and `cross_attention_mask`, the text
config names `cross_attention_layers`) take their images through cross-attention layers instead of placeholder
tokens. Their vision program gives every cross-attention layer's keys and values over the images' vision tokens,
`cross_key.{i}` / `cross_value.{i}` `[n, H_kv, T, D]` (the model's own vision path and its language model run once on
a dummy token with a `DynamicCache`, whose cross layers are read back); the language program retains them as
`past_cross_key.{i}` / `past_cross_value.{i}`, which the host writes into a prompt's cache row before its prefill, and
takes the per-token rows of `cross_attention_mask`, which HF's forward prepares.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForImageTextToText, DynamicCache

from QEfficient.base.modeling_qeff import SINGLE_GRAPH, QEFFBaseModel
from QEfficient.base.pytorch_transforms import FloatTransform
from QEfficient.transformers.loading import load_pretrained, prepare_for_export
from QEfficient.transformers.models.causal_lm import QEFFAutoModelForCausalLM
from QEfficient.transformers.models.modeling_auto import DEFAULT_CTX_LEN
from QEfficient.transformers.models.registry import UnsupportedModelError

logger = logging.getLogger(__name__)

# Processor outputs that belong to the text, not to the images.
TEXT_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "position_ids"})
DEFAULT_IMG_SIZE = 448
# Processor outputs of a cross-attention model that are per text token (the language program's), not the images'.
PER_TOKEN_INPUTS = frozenset({"cross_attention_mask"})


def image_token_id(config: Any) -> int:
    """The placeholder token that a vision-language model's images replace in the prompt."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise UnsupportedModelError(
        f"{type(config).__name__} names no image token (`image_token_id` / `image_token_index`): its images do not "
        "replace placeholder tokens of the prompt, which is what QEFFAutoModelForImageTextToText implements."
    )


def check_image_text_supported(model: nn.Module) -> None:
    """A clear error for a vision-language model outside the generic mechanisms (features that replace image tokens,
    or cross-attention keys and values)."""
    from QEfficient.transformers.models.causal_lm_wrapper import cross_attention_layers

    name = type(model).__name__
    forward = inspect.signature(model.forward).parameters
    cross = bool(cross_attention_layers(model))
    if not cross and ("mm_encoder_outputs" not in forward or not hasattr(model, "get_image_features")):
        raise UnsupportedModelError(
            f"{name} does not take precomputed image features (`mm_encoder_outputs`) or has no "
            "`get_image_features`, nor cross-attention states (`cross_attention_states`, `cross_attention_mask` and "
            "the text config's `cross_attention_layers`): its images enter the language model another way (an "
            "encoder-decoder, its own cross-attention inputs), which QEFFAutoModelForImageTextToText does not "
            "implement yet."
        )
    required = forward.get("pixel_values")
    if required is not None and required.default is inspect.Parameter.empty:
        raise UnsupportedModelError(
            f"{name} requires `pixel_values` in every forward (its language model does not run on text alone), so "
            "its images cannot be encoded once by a separate vision program."
        )
    if getattr(model.config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{name} is an encoder-decoder model; only decoder language models are supported.")
    from QEfficient.transformers.models.causal_lm_wrapper import bidirectional_image_blocks

    if "token_type_ids" in forward and bidirectional_image_blocks(model) is None:
        raise UnsupportedModelError(
            f"{name} reads `token_type_ids` to change its attention (a prefix attended bidirectionally); the masks "
            "implement causal attention and Gemma3's bidirectional image blocks."
        )
    image_token_id(model.config)


def image_inputs_of(encoded: dict[str, Any], model: nn.Module | None = None) -> dict[str, np.ndarray]:
    """The image part of a processor's output (everything but the text inputs), as numpy arrays; with `model`, only
    what its forward takes (processors also return bookkeeping such as Gemma3's `num_crops`)."""
    accepted = set(inspect.signature(model.forward).parameters) if model is not None else None
    arrays = {}
    for name, value in encoded.items():
        if name in TEXT_INPUTS or value is None or (accepted is not None and name not in accepted):
            continue
        arrays[name] = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return arrays


def as_rgb_image(image: Any, index: int = 0) -> Any:
    """A PIL RGB image from a PIL image, a path or a `[H, W]` / `[H, W, 3|4]` array; clear errors otherwise."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image {index}: no file at {path}.")
        image = Image.open(path)
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(
                f"Image {index} is an array of shape {image.shape}; expected [H, W] or [H, W, C] with C in 1, 3, 4."
            )
        if image.size == 0:
            raise ValueError(f"Image {index} is empty (shape {image.shape}).")
        array = image if image.dtype == np.uint8 else np.clip(np.asarray(image) * 255.0, 0, 255).astype(np.uint8)
        image = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[2] == 1 else array)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Image {index} is a {type(image).__name__}; give a PIL image, a file path or a numpy array.")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"Image {index} has zero size ({image.width}x{image.height}).")
    if image.mode != "RGB":
        try:
            converted = image.convert("RGB")
        except (ValueError, OSError) as exc:
            raise ValueError(
                f"Image {index} is in mode {image.mode!r}, which cannot be converted to RGB ({exc}); convert it first."
            ) from exc
        logger.info("Image %d: converted from mode %s to RGB.", index, image.mode)
        image = converted
    return image


class VisionEncoderForExport(nn.Module):
    """`(image inputs...) -> image_features [N, H]`: HF's `get_image_features` (vision tower and projector), the
    per-image outputs concatenated in order, as the language model's merge consumes them.

    The floating-point inputs (`pixel_values`) are graph inputs; the integer ones describe the images' geometry
    (`image_sizes`, `image_grid_thw`, ...), which HF's Python code turns into shapes, so they are fixed at export
    (`geometry`) and the program checks that the images it runs have the same."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.input_names: list[str] = []
        self.geometry: dict[str, torch.Tensor] = {}

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`image_features [N, H]`, then each extra field of the output (`extra_fields`) as `[N, L, H]`."""
        kwargs = {**dict(zip(self.input_names, inputs)), **self.geometry}
        with eager_vision_attention(self.model):
            out = self.model.get_image_features(**kwargs, return_dict=True)
        extras = extra_image_fields(out)
        return (self._features(out), *extras.values())

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        # what the language model's merge reads: the projected per-image features (`pooler_output`), or, for a model
        # that projects inside its forward (Llama4), the vision tower's `last_hidden_state`
        features = out.pooler_output if getattr(out, "pooler_output", None) is not None else out
        features = getattr(features, "last_hidden_state", features)
        if isinstance(features, (list, tuple)):
            features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
        return features.reshape(-1, features.shape[-1]).float()


@contextlib.contextmanager
def eager_attention(model: nn.Module, text: bool = True) -> Iterator[None]:
    """Eager attention in the model's configs (the main one and every sub-config; with `text=False` the vision tower's
    only, every sub-config but the text one) for the duration of the block: it traces to plain ops everywhere (sdpa
    with grouped heads does not export), with the same arithmetic."""
    text_config = model.config.get_text_config(decoder=True)
    configs = [model.config] if text else []
    configs += [
        c
        for name in getattr(model.config, "sub_configs", {})
        if (c := getattr(model.config, name, None)) is not None and (text or c is not text_config)
    ]
    configs = [c for c in configs if hasattr(c, "_attn_implementation")]
    saved = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        for config, value in zip(configs, saved):
            config._attn_implementation = value


def eager_vision_attention(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Eager attention in the vision tower (every sub-config but the text one) for the duration of the block."""
    return eager_attention(model, text=False)


# Fields of a vision output that are not per-token features of the merge.
_NOT_FEATURES = frozenset({"last_hidden_state", "pooler_output", "hidden_states", "attentions"})


def extra_image_fields(out: Any) -> dict[str, torch.Tensor]:
    """Per-token fields of a vision output beside the features, each `[N, L, H]`: lists over L layers of per-image
    `[n_i, H]` tensors (or of `[N, H]` tensors), such as Qwen3-VL's `deepstack_features`, which the language model
    adds to its hidden states at the image positions."""
    fields = {}
    items = out.items() if hasattr(out, "items") else ()
    for name, value in items:
        if name in _NOT_FEATURES or not isinstance(value, (list, tuple)) or not value:
            continue
        layers = [torch.cat(list(v)) if isinstance(v, (list, tuple)) else v for v in value]
        if all(isinstance(layer, torch.Tensor) for layer in layers):
            fields[name] = torch.stack([layer.reshape(-1, layer.shape[-1]) for layer in layers], dim=1).float()
    return fields


class CrossAttentionVisionForExport(VisionEncoderForExport):
    """`(image inputs...) -> cross_key.{i}, cross_value.{i}` `[n, H_kv, T, D]` for every cross-attention layer i of a
    cross-attention vision-language model (Mllama), computed by the model's own code: its forward runs the vision path
    (vision tower and projector give `cross_attention_states`) and its language model on one dummy token with a
    `DynamicCache`, whose cross-attention layers then hold their keys and values (projected and normalised as the
    model does). The rest of that language-model run leaves the graph, unused.

    Every image input is a graph input, the integer ones too (Mllama's `aspect_ratio_ids` / `aspect_ratio_mask` are
    looked up and multiplied, never turned into shapes), so one program runs images of any aspect ratio."""

    def __init__(self, model: nn.Module, layers: Sequence[int]) -> None:
        super().__init__(model)
        self.layers = tuple(layers)

    @property
    def output_names(self) -> list[str]:
        return [f"{kind}.{i}" for i in self.layers for kind in ("cross_key", "cross_value")]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = {**dict(zip(self.input_names, inputs)), **self.geometry}
        cache = DynamicCache(config=self.model.config.get_text_config(decoder=True))
        ids = torch.zeros((inputs[0].shape[0], 1), dtype=torch.int64)
        with eager_attention(self.model):
            self.model(input_ids=ids, cache=cache, use_cache=True, **kwargs)
        out = []
        for i in self.layers:
            layer = cache.layers[i]
            if not getattr(layer, "is_initialized", False) or layer.keys.dim() != 4:
                raise UnsupportedModelError(
                    f"Cross-attention layer {i} of {type(self.model).__name__} left no keys and values in "
                    "transformers' Cache when run with images, so they cannot be computed by the vision program."
                )
            out += [layer.keys.float(), layer.values.float()]
        return tuple(out)


class QEFFVisionEncoder(QEFFBaseModel):
    """The vision program of a vision-language model: a static graph for one image geometry."""

    _pytorch_transforms: ClassVar[list] = [FloatTransform]

    def __init__(self, model: nn.Module, module: VisionEncoderForExport | None = None) -> None:
        """`module`: the graph's module (default `VisionEncoderForExport(model)`)."""
        super().__init__(module or VisionEncoderForExport(model))
        self.example_shapes: dict[str, tuple[int, ...]] = {}
        self.geometry: dict[str, np.ndarray] = {}  # the integer image inputs the graph was exported for
        self.features_dim: int | None = None  # width of image_features, known once exported
        self.extra_fields: dict[str, tuple[int, ...]] = {}  # per-token fields beside the features: name -> [L, H]

    @property
    def model_name(self) -> str:
        return f"{type(self.model.model).__name__}-vision"

    def export(self, export_dir: str | Path | None = None, image_inputs: dict[str, np.ndarray] | None = None) -> Path:
        """Export for the image inputs `image_inputs` (a processor's output for the compiled image size)."""
        if image_inputs is None:
            raise ValueError("The vision encoder is exported for example image inputs: export(image_inputs=...).")
        tensors = {name: torch.from_numpy(np.asarray(value)) for name, value in image_inputs.items()}
        example = {name: t for name, t in tensors.items() if t.is_floating_point()}
        self.model.geometry = {name: t for name, t in tensors.items() if not t.is_floating_point()}
        self.model.input_names = list(example)
        self.example_shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        self.geometry = {name: t.numpy() for name, t in self.model.geometry.items()}
        with torch.no_grad():
            outputs = self.model(*example.values())
            extras = extra_image_fields(
                self.model.model.get_image_features(**{**example, **self.model.geometry}, return_dict=True)
            )
        self.features_dim = int(outputs[0].shape[-1])
        self.extra_fields = {name: tuple(value.shape[1:]) for name, value in extras.items()}
        rows = {int(o.shape[0]) for o in outputs}
        if len(rows) != 1:
            raise UnsupportedModelError(
                f"{self.model_name}'s vision output fields {list(extras)} do not have one row per image token."
            )
        return self._export(example, self.output_names, {}, export_dir)

    @property
    def output_names(self) -> list[str]:
        return ["image_features", *(f"image_{name}" for name in self.extra_fields)]

    def compile(
        self,
        image_inputs: dict[str, np.ndarray] | None = None,
        backend: str = "onnxruntime",
        compile_dir: str | Path | None = None,
        **backend_options: Any,
    ) -> Path:
        """Export for `image_inputs` (if not done) and compile; returns the program directory."""
        if image_inputs is not None or self.onnx_path is None:
            self.export(image_inputs=image_inputs)
        return self._compile({SINGLE_GRAPH: [{}]}, backend=backend, compile_dir=compile_dir, **backend_options)

    def run(self, image_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`{"image_features": [N, H], "image_<field>": [N, L, H] ...}` for image inputs of the compiled geometry."""
        self.check_geometry(image_inputs)
        feed = {name: np.asarray(image_inputs[name]) for name in self.model.input_names}
        outputs = self.program.run(feed)
        return {name: outputs[name] for name in self.output_names}

    def check_geometry(self, image_inputs: dict[str, np.ndarray]) -> None:
        """A clear error unless the image inputs have the compiled shapes and geometry."""
        shapes = {name: tuple(np.shape(value)) for name, value in image_inputs.items()}
        if shapes != self.example_shapes:
            raise ValueError(
                f"The vision encoder is compiled for image inputs {self.example_shapes}; these images give {shapes}. "
                "Compile for this image size and count (compile(img_size=..., num_images=...)), or resize the images."
            )
        for name, value in self.geometry.items():
            if not np.array_equal(np.asarray(image_inputs[name]), value):
                raise ValueError(
                    f"The vision encoder is compiled for images with {name} = {value.tolist()}; these images have "
                    f"{np.asarray(image_inputs[name]).tolist()}. Compile for this image size (compile(img_size=...)) "
                    "or resize the images."
                )

    def pytorch(self, image_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The same outputs from the PyTorch module, for any image inputs (for validation)."""
        module = VisionEncoderForExport(self.model.model)
        tensors = {name: torch.from_numpy(np.asarray(value)) for name, value in image_inputs.items()}
        module.geometry = {name: t for name, t in tensors.items() if not t.is_floating_point()}
        module.input_names = [name for name, t in tensors.items() if t.is_floating_point()]
        with torch.no_grad():
            outputs = module(*(tensors[name] for name in module.input_names))
        return {name: value.numpy() for name, value in zip(self.output_names, outputs)}


class QEFFCrossAttentionVisionEncoder(QEFFVisionEncoder):
    """The vision program of a cross-attention vision-language model: the images' cross-attention keys and values of
    every cross-attention layer (`CrossAttentionVisionForExport`), a static graph for one image count."""

    def __init__(self, model: nn.Module, layers: Sequence[int]) -> None:
        super().__init__(model, CrossAttentionVisionForExport(model, layers))
        self.cross_shapes: dict[int, tuple[int, int, int]] = {}  # layer -> (H_kv, T, D), known once exported
        self.mask_shape: tuple[int, ...] = ()  # the cross_attention_mask rows' (n_images, n_tiles)

    @property
    def layers(self) -> tuple[int, ...]:
        return self.model.layers

    @property
    def output_names(self) -> list[str]:
        return self.model.output_names

    def prepare(self, image_inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Fix the input names and the output shapes for example image inputs (a processor's output for the compiled
        image count, `pixel_values [1, n_images, n_tiles, C, H, W]`); returns them as tensors."""
        tensors = {n: torch.from_numpy(np.asarray(v)) for n, v in image_inputs.items() if n not in PER_TOKEN_INPUTS}
        self.model.geometry = {}
        self.model.input_names = list(tensors)
        self.example_shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        pixels = tensors.get("pixel_values")
        if pixels is None or pixels.dim() < 3:
            raise UnsupportedModelError(
                f"{self.model_name} takes no `pixel_values [batch, images, tiles, ...]`, so the cross-attention mask "
                "rows' (images, tiles) layout is unknown."
            )
        with torch.no_grad():
            outputs = self.model(*tensors.values())
        self.cross_shapes = {i: tuple(int(n) for n in k.shape[1:]) for i, k in zip(self.layers, outputs[::2])}
        self.mask_shape = tuple(int(n) for n in pixels.shape[1:3])
        tokens = {shape[1] for shape in self.cross_shapes.values()}
        if len(tokens) != 1 or tokens.pop() % int(np.prod(self.mask_shape)):
            raise UnsupportedModelError(
                f"{self.model_name}'s cross-attention keys {self.cross_shapes} do not cover the images' "
                f"{self.mask_shape} (images, tiles) in equal parts, as HF's cross-attention mask expects."
            )
        return tensors

    def export(self, export_dir: str | Path | None = None, image_inputs: dict[str, np.ndarray] | None = None) -> Path:
        """Export for the image inputs `image_inputs` (a processor's output for the compiled image count)."""
        if image_inputs is None:
            raise ValueError("The vision encoder is exported for example image inputs: export(image_inputs=...).")
        example = self.prepare(image_inputs)
        return self._export(example, self.output_names, {}, export_dir)

    def run(self, image_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`{"cross_key.{i}": [n, H_kv, T, D], "cross_value.{i}": ...}` for image inputs of the compiled shapes."""
        self.check_geometry(image_inputs)
        feed = {name: np.asarray(image_inputs[name]) for name in self.model.input_names}
        outputs = self.program.run(feed)
        return {name: outputs[name] for name in self.output_names}

    def check_geometry(self, image_inputs: dict[str, np.ndarray]) -> None:
        """A clear error unless the image inputs have the compiled shapes (the image count above all)."""
        shapes = {name: tuple(np.shape(v)) for name, v in image_inputs.items() if name in self.example_shapes}
        if shapes != self.example_shapes:
            raise ValueError(
                f"The vision encoder is compiled for image inputs {self.example_shapes}; these images give {shapes}. "
                f"A cross-attention model's prompt with images has exactly the compiled number of images "
                f"({self.mask_shape[0] if self.mask_shape else '?'}): its text tokens before the image attend to "
                "every vision token, so the count changes the answer. Compile with num_images=..."
            )

    def pytorch(self, image_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The same outputs from the PyTorch module (for validation)."""
        tensors = {n: torch.from_numpy(np.asarray(v)) for n, v in image_inputs.items() if n in self.example_shapes}
        with torch.no_grad():
            outputs = self.model(*(tensors[name] for name in self.model.input_names))
        return {name: value.numpy() for name, value in zip(self.output_names, outputs)}


class ImageTextForExport(nn.Module):
    """The vision encoder and the language model in one module, for the single program (`kv_offload=False`).

    Two graphs are traced from it: **prefill** `(input_ids, position_ids, image_embeds, [image_<field>...],
    [rope_offsets], <image inputs>..., past...)` runs the vision encoder and hands each image token its feature row
    (the k-th image token of the flattened batch the k-th row) to the language model; **decode** takes the language
    model's own inputs. The two are told apart by their number of inputs.
    """

    def __init__(self, vision: VisionEncoderForExport, language: nn.Module) -> None:
        super().__init__()
        self.vision = vision
        self.language = language

    @property
    def config(self) -> Any:
        return self.language.config

    @property
    def export_identity(self) -> dict[str, Any]:
        return {"language": self.language.export_identity, "vision_inputs": list(self.vision.input_names)}

    def language_inputs_before_past(self) -> int:
        """How many language inputs come before the past buffers: ids, positions, image_embeds, fields, rope."""
        return 3 + len(self.language.image_fields) + (1 if self.language.rope_rows else 0)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        head = self.language_inputs_before_past()
        n_past = len(self.language.past_names())
        if len(inputs) == head + n_past:  # decode: the language model alone
            return self.language(*inputs)
        language, images, past = inputs[:head], inputs[head : len(inputs) - n_past], inputs[len(inputs) - n_past :]
        input_ids = language[0]
        outputs = self.vision(*images)  # image_features [N, H], then the extra fields [N, L, H]
        is_image = (input_ids == self.language.image_token_id).reshape(-1)
        index = (is_image.long().cumsum(0) - 1).clamp(min=0)
        per_token = []
        # image_embeds take the features and a flag column of ones; the extra fields take their rows
        outputs = (torch.cat([outputs[0], outputs[0].new_ones((outputs[0].shape[0], 1))], dim=-1), *outputs[1:])
        for given, rows in zip(language[2 : 3 + len(self.language.image_fields)], outputs):
            gathered = rows[index].reshape(*input_ids.shape, *rows.shape[1:])
            keep = is_image.reshape(*input_ids.shape, *([1] * (rows.dim() - 1)))
            per_token.append(torch.where(keep, gathered, given))
        return self.language(*language[:2], *per_token, *language[3 + len(self.language.image_fields) :], *past)


class QEFFImageTextSingleProgram(QEFFBaseModel):
    """`kv_offload=False`: one program whose prefill graph runs the vision encoder and the language model and whose
    decode graph is the language model (docs/image_text_to_text.md). Prompts run one at a time, each prefilled in one
    chunk, with images of the compiled geometry."""

    def __init__(self, vision: QEFFVisionEncoder, language: QEFFAutoModelForCausalLM) -> None:
        super().__init__(ImageTextForExport(vision.model, language.model))
        self.vision = vision
        self.language = language

    @property
    def model_name(self) -> str:
        return f"{type(self.language.hf_model).__name__}-single"

    def export(self, export_dir: str | Path | None = None) -> Path:
        """Export the prefill and decode graphs (call `compile`, which knows the shapes)."""
        raise ValueError("The single program is exported by compile(...): it needs the image inputs and the shapes.")

    def compile(
        self,
        image_inputs: dict[str, np.ndarray],
        prefill_seq_len: int,
        ctx_len: int,
        backend: str = "onnxruntime",
        **backend_options: Any,
    ) -> Path:
        """Export (cached) and compile both graphs for one prompt of up to `prefill_seq_len` tokens and these images."""
        from QEfficient.base.modeling_qeff import GraphExport

        self.vision.export(image_inputs=image_inputs)  # fixes the geometry and the output fields
        self.language.model.image_features_dim = self.vision.features_dim
        self.language.model.image_fields = dict(self.vision.extra_fields)
        self.language.ctx_len = ctx_len
        decode = self.language._graph_export(1, ctx_len)
        prefill = self.language._graph_export(prefill_seq_len, ctx_len)
        names = self.vision.model.input_names
        images = {n: torch.from_numpy(np.asarray(v)) for n, v in image_inputs.items() if n in names}
        past = {n: t for n, t in prefill.example_inputs.items() if n.startswith("past_")}
        head = {n: t for n, t in prefill.example_inputs.items() if not n.startswith("past_")}
        count = int(self.vision.pytorch(image_inputs)["image_features"].shape[0])
        head["input_ids"] = head["input_ids"][:1].clone()
        head["position_ids"] = torch.arange(prefill_seq_len).unsqueeze(0)
        head["input_ids"][0, 1 : 1 + min(count, prefill_seq_len - 1)] = self.language.model.image_token_id
        head = {n: t[:1] for n, t in head.items()}
        past = {n: t[:1] for n, t in past.items()}
        static = {n: {0: "batch_size"} for n in (*head, *past, *prefill.output_names)}
        graphs = {
            "prefill": GraphExport({**head, **images, **past}, prefill.output_names, static),
            "decode": GraphExport(decode.example_inputs, decode.output_names, decode.dynamic_axes),
        }
        self._export_graphs(graphs)
        specs = {"prefill": [{"batch_size": 1}], "decode": [{"batch_size": 1}]}
        settings = {
            "prefill_seq_len": prefill_seq_len,
            "ctx_len": ctx_len,
            "batch_size": 1,
            "full_batch_size": None,
            "eos_token_ids": self.language.eos_token_ids(),
            "left_padding": False,
            "single_chunk_prefill": True,
            "token_inputs": self.language.token_inputs,
        }
        program = self._compile(specs, backend=backend, metadata={"generation": settings}, **backend_options)
        self.program.load_all()
        return program


class QEFFAutoModelForImageTextToText:
    """Vision-language models (LLaVA, LLaVA-NeXT, Gemma3, Mistral3, InternVL, Llama4, Qwen2.5-VL, ...; Mllama through
    its cross-attention layers).

    ```python
    model = QEFFAutoModelForImageTextToText.from_pretrained(path)           # kv_offload=True: two programs
    model.compile(img_size=336, prefill_seq_len=128, ctx_len=1024)
    out = model.generate(images=[image], prompts=["What is in this picture?"], generation_len=64)
    out.generated_texts
    ```

    `generate` applies the processor's chat template (`chat=True`), runs the vision program on the images, and
    drives the language program with the features at the image-token positions. Greedy tokens equal HF
    `generate`'s.
    """

    _hf_auto_class: ClassVar[Any] = AutoModelForImageTextToText

    def __init__(
        self,
        model: nn.Module,
        kv_offload: bool = True,
        continuous_batching: bool = False,
        processor: Any = None,
        pretrained_model_name_or_path: str | None = None,
    ) -> None:
        from QEfficient.transformers.models.causal_lm_wrapper import cross_attention_layers

        check_image_text_supported(model)
        # the cross-attention layers of a model that takes its images through cross-attention (Mllama), else ()
        self.cross_layers = cross_attention_layers(model)
        if self.cross_layers and not kv_offload:
            raise UnsupportedModelError(
                f"{type(model).__name__} takes its images through cross-attention layers: it runs as two programs "
                "(kv_offload=True, the default), the vision program computing the cross-attention keys and values "
                "that the language program retains; kv_offload=False is not implemented for such models."
            )
        if not kv_offload and continuous_batching:
            raise ValueError("kv_offload=False runs one prompt at a time: it does not take continuous_batching=True.")
        prepare_for_export(model)
        self.kv_offload = kv_offload
        self.processor = processor
        self.pretrained_model_name_or_path = pretrained_model_name_or_path
        self.image_token_id = image_token_id(model.config)
        self.hf_model = model
        if self.cross_layers:  # the language program takes cross keys and values, not features at image tokens
            self.vision: QEFFVisionEncoder = QEFFCrossAttentionVisionEncoder(model, self.cross_layers)
            self.language = QEFFAutoModelForCausalLM(model, continuous_batching=continuous_batching)
        else:
            self.vision = QEFFVisionEncoder(model)
            self.language = QEFFAutoModelForCausalLM(
                model, continuous_batching=continuous_batching, image_token_id=self.image_token_id
            )
        self.single = None if kv_offload else QEFFImageTextSingleProgram(self.vision, self.language)
        self.image_size: tuple[int, int] | None = None
        self.num_images = 1

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        kv_offload: bool = True,
        continuous_batching: bool = False,
        processor: Any = None,
        **kwargs: Any,
    ) -> QEFFAutoModelForImageTextToText:
        """Load a HF vision-language model (local folder, or hub id offline from the HF cache) and its processor
        (from the same folder, when one is saved there; else pass `processor=` to `generate`)."""
        hf_model = load_pretrained(cls._hf_auto_class, pretrained_model_name_or_path, *args, **kwargs)
        if processor is None:
            processor = _load_processor(getattr(hf_model, "name_or_path", "") or str(pretrained_model_name_or_path))
        return cls(
            hf_model,
            kv_offload=kv_offload,
            continuous_batching=continuous_batching,
            processor=processor,
            pretrained_model_name_or_path=str(pretrained_model_name_or_path),
        )

    @property
    def model_name(self) -> str:
        return type(self.hf_model).__name__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name}, kv_offload={self.kv_offload})"

    # ---- compile -------------------------------------------------------------------------------------

    def example_image_inputs(
        self, img_size: int | tuple[int, int] | None = None, num_images: int = 1, processor: Any = None
    ) -> dict[str, np.ndarray]:
        """The processor's image inputs for `num_images` blank images of `img_size` (the vision graph's shapes)."""
        processor = processor or self.processor
        if processor is None:
            raise ValueError(
                "No processor was found with the model: pass processor= (or the example image_inputs= to compile)."
            )
        from PIL import Image

        height, width = _size_pair(img_size or _default_img_size(self.hf_model.config))
        images: list = [Image.new("RGB", (width, height), (127, 127, 127)) for _ in range(num_images)]
        image_processor = getattr(processor, "image_processor", processor)
        if self.cross_layers:  # the images of one prompt
            images = [images]
        return image_inputs_of(image_processor(images=images, return_tensors="np"), self.hf_model)

    def compile(
        self,
        img_size: int | tuple[int, int] | None = None,
        prefill_seq_len: int = 32,
        ctx_len: int = DEFAULT_CTX_LEN,
        batch_size: int = 1,
        full_batch_size: int | None = None,
        num_images: int = 1,
        image_inputs: dict[str, np.ndarray] | None = None,
        backend: str = "onnxruntime",
        skip_vision: bool = False,
        skip_lang: bool = False,
        **backend_options: Any,
    ) -> dict[str, Path]:
        """Compile the vision program for `num_images` images of `img_size` (as the processor prepares them; or for
        the example `image_inputs`) and the language program for `prefill_seq_len`, `ctx_len` and the batch.

        Returns `{"vision": dir, "language": dir}`. Images that the processor turns into inputs of the same shapes
        run on the compiled vision program one at a time where the inputs are per image (so a prompt may hold any
        number of them), else together.
        """
        paths: dict[str, Path] = {}
        if self.cross_layers:
            return self._compile_cross_attention(
                img_size,
                prefill_seq_len,
                ctx_len,
                batch_size,
                full_batch_size,
                num_images,
                image_inputs,
                backend,
                skip_vision,
                skip_lang,
                **backend_options,
            )
        if self.single is not None:  # one program: the vision encoder inside the language program's prefill
            if batch_size != 1 or full_batch_size:
                raise ValueError("kv_offload=False compiles one prompt at a time: batch_size=1, no full_batch_size.")
            inputs = image_inputs if image_inputs is not None else self.example_image_inputs(img_size, num_images)
            self.num_images = num_images if image_inputs is None else _images_in(inputs, num_images)
            self.language.compile_config = {"prefill_seq_len": prefill_seq_len, "ctx_len": ctx_len}
            paths["program"] = self.single.compile(inputs, prefill_seq_len, ctx_len, backend=backend, **backend_options)
            return paths
        if not skip_vision:
            inputs = image_inputs if image_inputs is not None else self.example_image_inputs(img_size, num_images)
            self.num_images = num_images if image_inputs is None else _images_in(inputs, num_images)
            self.image_size = _size_pair(img_size) if img_size else None
            paths["vision"] = self.vision.compile(inputs, backend=backend, **backend_options)
        if not skip_lang:
            if self.vision.onnx_path is not None:  # the features' width and extra fields, which the language takes
                self.language.model.image_features_dim = self.vision.features_dim
                self.language.model.image_fields = dict(self.vision.extra_fields)
            paths["language"] = self.language.compile(
                prefill_seq_len, ctx_len, batch_size, full_batch_size, backend=backend, **backend_options
            )
        return paths

    def _compile_cross_attention(
        self,
        img_size: int | tuple[int, int] | None,
        prefill_seq_len: int,
        ctx_len: int,
        batch_size: int,
        full_batch_size: int | None,
        num_images: int,
        image_inputs: dict[str, np.ndarray] | None,
        backend: str,
        skip_vision: bool,
        skip_lang: bool,
        **backend_options: Any,
    ) -> dict[str, Path]:
        """`compile` for a cross-attention model: the vision program for `num_images` images per prompt (the image
        inputs of one prompt), then the language program retaining the cross keys and values of that many images."""
        paths: dict[str, Path] = {}
        inputs = image_inputs if image_inputs is not None else self.example_image_inputs(img_size, num_images)
        inputs = {name: value for name, value in inputs.items() if name not in PER_TOKEN_INPUTS}
        self.image_size = _size_pair(img_size) if img_size else None
        if skip_vision:
            self.vision.prepare(inputs)
        else:
            paths["vision"] = self.vision.compile(inputs, backend=backend, **backend_options)
        self.num_images = self.vision.mask_shape[0]
        if not skip_lang:
            language = self.language
            if language.model.layout.cross_shapes != tuple(
                self.vision.cross_shapes.get(i) for i in range(language.model.layout.num_layers)
            ):
                language.model.use_cross_attention(self.vision.cross_shapes, self.vision.mask_shape)
                language.onnx_path = None  # the buffers' shapes changed: export again
            paths["language"] = language.compile(
                prefill_seq_len, ctx_len, batch_size, full_batch_size, backend=backend, **backend_options
            )
        return paths

    # ---- running -------------------------------------------------------------------------------------

    def image_features(self, image_inputs: dict[str, np.ndarray], runtime: str = "compiled") -> dict[str, np.ndarray]:
        """The vision outputs of the images in `image_inputs` (a processor's output), rows in prompt order:
        `image_features [N, H]` and any extra per-token fields; for a cross-attention model, the cross-attention
        keys and values `cross_key.{i}` / `cross_value.{i}` `[1, H_kv, T, D]` of one prompt's images."""
        run = self.vision.run if runtime == "compiled" else self.vision.pytorch
        if runtime not in ("compiled", "pytorch"):
            raise ValueError(f"runtime must be 'compiled' or 'pytorch'; got {runtime!r}.")
        if self.cross_layers:  # the cross keys and values of one prompt's images
            return run({name: v for name, v in image_inputs.items() if name not in PER_TOKEN_INPUTS})
        compiled = self.vision.example_shapes
        shapes = {name: np.shape(value) for name, value in image_inputs.items()}
        if runtime == "compiled" and shapes != compiled and _per_image(shapes, compiled, self.num_images):
            # the inputs are per image (leading dimension = images): run them in groups of the compiled count
            count = next(iter(shapes.values()))[0]
            step = self.num_images
            groups = range(0, count, step)
            parts = [run({n: np.asarray(v)[i : i + step] for n, v in image_inputs.items()}) for i in groups]
            return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        return run(image_inputs)

    def prepare(
        self,
        images: Any,
        prompt: str,
        processor: Any = None,
        chat: bool = True,
        index: int = 0,
    ) -> tuple[list[int], dict[str, np.ndarray]]:
        """Token ids of one prompt with its images (through the processor and, with `chat`, its chat template) and
        the processor's image inputs."""
        ids, encoded, has_images = self._encode(images, prompt, processor, chat, index)
        return ids, image_inputs_of(encoded, self.hf_model) if has_images else {}

    def hf_inputs(self, images: Any, prompt: str, processor: Any = None, chat: bool = True) -> dict[str, torch.Tensor]:
        """What HF `generate` takes for one prompt with its images: the processor's outputs that the model's forward
        accepts (token types included), as tensors."""
        _, encoded, _ = self._encode(images, prompt, processor, chat, 0)
        accepted = inspect.signature(self.hf_model.forward).parameters
        return {k: torch.from_numpy(np.asarray(v)) for k, v in encoded.items() if k in accepted and v is not None}

    def _encode(
        self, images: Any, prompt: str, processor: Any, chat: bool, index: int
    ) -> tuple[list[int], dict[str, Any], bool]:
        processor = processor or self.processor
        if processor is None:
            raise ValueError("generate() needs the model's processor: none was found with the model; pass processor=.")
        image_list = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
        image_list = [as_rgb_image(image, i) for i, image in enumerate(image_list)]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"Prompt {index} is empty or not a string.")
        text = prompt
        if chat:
            content = [{"type": "image"} for _ in image_list] + [{"type": "text", "text": prompt}]
            template = getattr(processor, "chat_template", None) or getattr(
                getattr(processor, "tokenizer", None), "chat_template", None
            )
            if template is None:
                raise ValueError(
                    "The processor has no chat template: pass chat=False with the image placeholders in the prompt "
                    f"(e.g. {getattr(processor, 'image_token', '<image>')!r})."
                )
            text = processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        placeholder = getattr(processor, "image_token", None)
        if image_list and not chat and placeholder and placeholder not in text:
            raise ValueError(
                f"Prompt {index} has no image token {placeholder!r} for its {len(image_list)} image(s): put one "
                "per image where the image belongs, or pass chat=True to use the chat template."
            )
        try:
            encoded = processor(images=image_list or None, text=[text], return_tensors="np")
        except ValueError as exc:
            raise ValueError(f"Prompt {index}: the processor refused the prompt and its images: {exc}") from exc
        ids = [int(t) for t in np.asarray(encoded["input_ids"])[0]]
        n_tokens = sum(t == self.image_token_id for t in ids)
        if image_list and n_tokens == 0:
            raise ValueError(
                f"Prompt {index} has {len(image_list)} image(s) but no image token (id {self.image_token_id}); put "
                f"the image placeholder {placeholder!r} in the prompt or use chat=True."
            )
        if not image_list and n_tokens:
            raise ValueError(f"Prompt {index} has image tokens but no image was given.")
        return ids, dict(encoded), bool(image_list)

    def token_features(
        self,
        ids: Sequence[int],
        features: dict[str, np.ndarray] | None,
        image_inputs: dict[str, np.ndarray] | None = None,
        index: int = 0,
        images_in_program: bool = False,
    ) -> dict[str, np.ndarray]:
        """The language program's per-token inputs of one prompt: `image_embeds` (feature row k at the k-th image
        token) and, for a model with multimodal rotary positions, `rope_offsets` (from HF's `get_rope_index`).
        `images_in_program`: the single program computes the features itself (they stay zeros here)."""
        ids = np.asarray(ids)
        positions = np.flatnonzero(ids == self.image_token_id)
        count = 0 if features is None else len(features["image_features"])
        self._check_blocks_fit_chunks(positions, index)
        if not images_in_program and len(positions) != count:
            raise ValueError(
                f"Prompt {index} has {len(positions)} image tokens but its images give {count} image features: "
                "each image needs its placeholder in the prompt (one per image), and no more."
            )
        shapes = self.language.token_inputs
        inputs = {name: np.zeros((len(ids), *shape), dtype=np.float32) for name, shape in shapes.items()}
        for name, values in (features or {}).items():  # image_features -> image_embeds (and its flag column)
            if name == "image_features":
                inputs["image_embeds"][positions, :-1] = values
                inputs["image_embeds"][positions, -1] = 1.0
            else:
                inputs[name][positions] = values
        if self.language.model.rope_rows:
            inputs["rope_offsets"] = self.rope_offsets(ids, image_inputs or {})
        return inputs

    def _check_blocks_fit_chunks(self, positions: np.ndarray, index: int) -> None:
        """A model whose images attend to themselves bidirectionally (Gemma3) needs each image's tokens in one
        prefill chunk: a token cannot read the keys of a later chunk."""
        chunk = self.language.compile_config.get("prefill_seq_len")
        if self.language.model.image_blocks is None or not len(positions) or not chunk:
            return
        starts = np.flatnonzero(np.diff(positions, prepend=-2) != 1)
        for first, last in zip(positions[starts], positions[np.r_[starts[1:] - 1, len(positions) - 1]]):
            if first // chunk != last // chunk:
                raise ValueError(
                    f"Prompt {index}: {self.model_name}'s image tokens attend to their whole image, so an image must "
                    f"lie in one prefill chunk; tokens {first}..{last} cross a chunk boundary of prefill_seq_len "
                    f"{chunk}. Compile with a prefill_seq_len that holds the prompt (e.g. {-(-(last + 1) // 64) * 64})."
                )

    def rope_offsets(self, ids: Sequence[int], image_inputs: dict[str, np.ndarray]) -> np.ndarray:
        """`[len(ids), R]`: each token's multimodal rotary position per axis minus its cache position, as HF's
        `get_rope_index` computes the positions (text-only prompts: zeros)."""
        rows = self.language.model.rope_rows
        ids_array = np.asarray(ids, dtype=np.int64)
        if not image_inputs:
            return np.zeros((len(ids_array), rows), dtype=np.float32)
        rope_index = getattr(self.hf_model, "get_rope_index", None) or self.hf_model.model.get_rope_index
        accepted = inspect.signature(rope_index).parameters
        input_ids = torch.from_numpy(ids_array)[None]
        kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(input_ids)}
        if "mm_token_type_ids" in accepted:  # 1 marks image tokens
            kwargs["mm_token_type_ids"] = (input_ids == self.image_token_id).int()
        kwargs.update({n: torch.from_numpy(np.asarray(v)) for n, v in image_inputs.items() if n in accepted})
        with torch.no_grad():
            positions = rope_index(input_ids, **{k: v for k, v in kwargs.items() if k in accepted})[0]
        offsets = positions[:, 0, :].T.numpy() - np.arange(len(ids_array))[:, None]
        return offsets.astype(np.float32)

    def generate(
        self,
        images: Any = None,
        prompts: str | Sequence[str] = (),
        processor: Any = None,
        generation_len: int | None = None,
        chat: bool = True,
        streamer: Any = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_strings: Sequence[str] = (),
    ):  # noqa: ANN201 - GenerationOutput
        """Answer `prompts` about `images` on the compiled programs (greedy unless `do_sample=True`).

        `images`: for one prompt, an image or a list of images; for several prompts, one entry (an image, a list,
        or None) per prompt. Images are PIL images, file paths or `[H, W, C]` arrays. Returns a `GenerationOutput`
        with `perf_metrics.vision_s` (the vision program's time) added.
        """
        from QEfficient.generation.sampling import SamplingParams

        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompt_list:
            raise ValueError("generate() needs at least one prompt.")
        nested = isinstance(images, (list, tuple)) and len(images) == 1 and isinstance(images[0], (list, tuple))
        if len(prompt_list) == 1 and not nested:  # one prompt: an image or a list of images
            per_prompt = [images]
        else:  # one entry per prompt
            per_prompt = list(images) if images is not None else [None] * len(prompt_list)
        if len(per_prompt) != len(prompt_list):
            raise ValueError(
                f"Got {len(per_prompt)} image entries for {len(prompt_list)} prompts; give one per prompt."
            )
        processor = processor or self.processor
        pairs = enumerate(zip(prompt_list, per_prompt))
        prepared = [self.prepare(images, prompt, processor, chat, i) for i, (prompt, images) in pairs]
        sampling = SamplingParams(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        out = self._generate_rows(
            [ids for ids, _ in prepared],
            [inputs for _, inputs in prepared],
            generation_len,
            sampling,
            stop_strings,
            streamer,
            getattr(processor, "tokenizer", processor),
        )
        out.prompts = prompt_list
        return out

    def _generate_rows(
        self,
        rows: Sequence[Sequence[int]],
        image_inputs: Sequence[dict[str, np.ndarray] | None],
        generation_len: int | None,
        sampling: Any = None,
        stop_strings: Sequence[str] = (),
        streamer: Any = None,
        tokenizer: Any = None,
        runtime: str = "compiled",
    ):  # noqa: ANN202 - GenerationOutput
        """Generate for tokenised prompts with their image inputs, on the two programs or the single one."""
        from QEfficient.generation.text_generation import TextGenerator

        rows = [[int(t) for t in ids] for ids in rows]
        if self.cross_layers:
            return self._generate_cross_attention(
                rows, image_inputs, generation_len, sampling, stop_strings, streamer, tokenizer, runtime
            )
        features, prompt_inputs, vision_s = [], [], 0.0
        for i, (ids, inputs) in enumerate(zip(rows, image_inputs)):
            if self.single is None:
                t0 = time.perf_counter()
                image_features = self.image_features(inputs, runtime) if inputs else None
                vision_s += time.perf_counter() - t0
                features.append(self.token_features(ids, image_features, inputs, i))
            else:
                features.append(self.token_features(ids, None, inputs, i, images_in_program=True))
                prompt_inputs.append(self._single_prompt_inputs(ids, inputs, i))
        if self.single is None:
            generator = self.language.text_generator(tokenizer=tokenizer)
        else:
            program = self.single.program
            generator = TextGenerator.with_settings(program, tokenizer, program.manifest["generation"])
        out = generator.generate(
            rows,
            generation_len,
            sampling,
            stop_strings,
            streamer,
            False,
            token_features=features,
            prompt_inputs=prompt_inputs or None,
        )
        out.perf_metrics.vision_s = vision_s
        out.perf_metrics.ttft_s += vision_s
        out.perf_metrics.total_s += vision_s
        return out

    def _generate_cross_attention(
        self,
        rows: list[list[int]],
        image_inputs: Sequence[dict[str, np.ndarray] | None],
        generation_len: int | None,
        sampling: Any,
        stop_strings: Sequence[str],
        streamer: Any,
        tokenizer: Any,
        runtime: str,
    ):  # noqa: ANN202 - GenerationOutput
        """`_generate_rows` for a cross-attention model: per prompt with images, the vision program's cross keys and
        values become its cache row's initial `past_cross_key.{i}` / `past_cross_value.{i}`, and the processor's
        `cross_attention_mask` its per-token input (a prompt without images: zeros for both, which gives HF's
        result with the cross-attention layers skipped)."""
        if runtime not in ("compiled", "pytorch"):
            raise ValueError(f"runtime must be 'compiled' or 'pytorch'; got {runtime!r}.")
        features, initial, vision_s = [], [], 0.0
        for i, (ids, inputs) in enumerate(zip(rows, image_inputs)):
            images = {name: v for name, v in (inputs or {}).items() if name not in PER_TOKEN_INPUTS}
            count = sum(t == self.image_token_id for t in ids)
            if not images:
                if count:
                    raise ValueError(f"Prompt {i} has image tokens but no image was given.")
                features.append(None)
                initial.append(None)
                continue
            self.vision.check_geometry(images)  # the compiled image count above all
            mask = (inputs or {}).get("cross_attention_mask")
            expected = (1, len(ids), *self.vision.mask_shape)
            if mask is None or tuple(np.shape(mask)) != expected:
                raise ValueError(
                    f"Prompt {i} needs its cross_attention_mask {expected} ([1, tokens, images, tiles], as the "
                    f"processor makes it); got {None if mask is None else tuple(np.shape(mask))}. Prompts with images "
                    f"have exactly the compiled {self.num_images} image(s)."
                )
            if count != self.num_images:
                raise ValueError(
                    f"Prompt {i} has {count} image tokens for the {self.num_images} image(s) its inputs hold: put one "
                    "image token per image in the prompt."
                )
            t0 = time.perf_counter()
            cross = self.vision.run(images) if runtime == "compiled" else self.vision.pytorch(images)
            vision_s += time.perf_counter() - t0
            initial.append({f"past_{name}": value for name, value in cross.items()})
            features.append({"cross_attention_mask": np.asarray(mask, dtype=np.float32)[0]})
        generator = self.language.text_generator(tokenizer=tokenizer)
        out = generator.generate(
            rows,
            generation_len,
            sampling,
            stop_strings,
            streamer,
            False,
            token_features=features,
            initial_state=initial,
        )
        out.perf_metrics.vision_s = vision_s
        out.perf_metrics.ttft_s += vision_s
        out.perf_metrics.total_s += vision_s
        return out

    def _single_prompt_inputs(self, ids: Sequence[int], image_inputs: dict[str, np.ndarray] | None, index: int):  # noqa: ANN202
        """The single program's prefill image inputs for one prompt (zeros of the compiled shapes for a prompt
        without images), after checking that the prompt fits one prefill chunk."""
        chunk = self.language.compile_config["prefill_seq_len"]
        if len(ids) > chunk:
            raise ValueError(
                f"Prompt {index} has {len(ids)} tokens; with kv_offload=False the vision encoder runs in the prefill "
                f"graph, which takes a whole prompt of up to prefill_seq_len={chunk} tokens. Compile with "
                f"prefill_seq_len >= {len(ids)}, or use kv_offload=True."
            )
        names = self.vision.model.input_names
        if not image_inputs:
            return {n: np.zeros(self.vision.example_shapes[n], dtype=np.float32) for n in names}
        self.vision.check_geometry(image_inputs)
        return {n: np.asarray(image_inputs[n], dtype=np.float32) for n in names}

    def generate_ids(
        self,
        input_ids: Sequence[Sequence[int]],
        image_inputs: Sequence[dict[str, np.ndarray] | None],
        generation_len: int | None = None,
        runtime: str = "compiled",
    ) -> list[list[int]]:
        """Greedy tokens for prompts already tokenised with their image placeholders expanded (as the processor
        does), with each prompt's image inputs: the path validation and the sweep use."""
        return self._generate_rows(input_ids, image_inputs, generation_len, runtime=runtime).generated_ids


def _load_processor(source: str) -> Any:
    """The processor saved with a model folder (None when there is none)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError, ImportError) as exc:
        logger.info("No processor found with %s (%s); pass processor= where it is needed.", source, exc)
        return None


def _size_pair(size: int | tuple[int, int] | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _default_img_size(config: Any) -> int:
    vision = getattr(config, "vision_config", None)
    size = getattr(vision, "image_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if isinstance(size, int) and size > 0 else DEFAULT_IMG_SIZE


def _images_in(inputs: dict[str, np.ndarray], default: int) -> int:
    """How many images example inputs hold when every input is per image (the leading dimension); else `default`."""
    leading = {np.shape(v)[0] for v in inputs.values() if np.ndim(v)}
    return leading.pop() if len(leading) == 1 else default


def _per_image(shapes: dict[str, tuple], compiled: dict[str, tuple], num_images: int) -> bool:
    """Whether inputs of `shapes` are whole groups of the compiled per-image inputs (same trailing dimensions, a
    leading dimension that is a multiple of the compiled image count)."""
    if set(shapes) != set(compiled) or not shapes:
        return False
    counts = {s[0] for s in shapes.values() if len(s)}
    if len(counts) != 1:
        return False
    count = counts.pop()
    return count % num_images == 0 and all(
        len(s) == len(compiled[n]) and s[1:] == compiled[n][1:] and compiled[n][0] == num_images
        for n, s in shapes.items()
    )
