"""The vision program of a vision-language model: HF's own image path (`get_image_features`, or, for cross-attention
models, the cross-attention keys and values its layers compute from the vision tokens) as a static graph for one
image geometry (docs/image_text_to_text.md)."""


from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache

from QEfficient.base.modeling_qeff import SINGLE_GRAPH, QEFFBaseModel
from QEfficient.base.pytorch_transforms import FloatTransform
from QEfficient.transformers.models.image_inputs import (
    IMAGE,
    PER_TOKEN_INPUTS,
    Modality,
    features_function,
    features_parameters,
    text_inputs,
)
from QEfficient.transformers.models.registry import UnsupportedModelError

logger = logging.getLogger(__name__)


class VisionEncoderForExport(nn.Module):
    """`(image inputs...) -> image_features [N, H]`: HF's `get_image_features` (vision tower and projector), the
    per-image outputs concatenated in order, as the language model's merge consumes them.

    The floating-point inputs (`pixel_values`) are graph inputs; the integer ones describe the images' geometry
    (`image_sizes`, `image_grid_thw`, ...), which HF's Python code turns into shapes, so they are fixed at export
    (`geometry`) and the program checks that the images it runs have the same."""

    def __init__(self, model: nn.Module, modality: Modality = IMAGE) -> None:
        """`modality`: which features function runs (`get_image_features`, or `get_audio_features` for an audio
        LLM's encoder program, which is the same graph over audio inputs)."""
        super().__init__()
        self.model = model
        self.modality = modality
        self.input_names: list[str] = []
        self.geometry: dict[str, torch.Tensor] = {}

    @property
    def config(self) -> Any:
        return self.model.config

    def take_inputs(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Split example inputs: the graph's inputs (floating point, and text ids and masks, which are each prompt's
        data) are returned in order; the other integer inputs describe the geometry and are fixed (`geometry`)."""
        text = text_inputs(tensors)
        graph = {name: t for name, t in tensors.items() if t.is_floating_point() or name in text}
        self.geometry = {name: t for name, t in tensors.items() if name not in graph}
        self.input_names = list(graph)
        return graph

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`image_features [N, H]`, then each extra field of the output (`extra_fields`) as `[N, L, H]`."""
        return tuple(self.outputs(*inputs).values())

    def outputs(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{"image_features": [N, H], <extra field>: [N, L, H], ...}`, the graph's outputs by name."""
        kwargs = {**dict(zip(self.input_names, inputs)), **self.geometry}
        function = features_function(self.model, self.modality)
        if "sample" in (features_parameters(self.model, self.modality) or ()):  # a VAE's noise off: its mean
            kwargs["sample"] = False
        with eager_vision_attention(self.model), with_adapter(self.model):
            out = function(**kwargs, return_dict=True)
        return {"image_features": self._features(out), **extra_image_fields(out)}

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


@contextlib.contextmanager
def with_adapter(model: nn.Module) -> Iterator[None]:
    """The model's registered adapter (docs/adding_a_model.md) for the duration of the block, as the language program
    applies it: its replacements cover the vision tower's modules too (Llama4's real-valued rotary embeddings)."""
    from QEfficient.transformers.models.adapters import adapter_for

    adapter = adapter_for(model)
    if adapter is None:
        yield
        return
    with adapter.applied(model):
        yield


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

    def __init__(
        self, model: nn.Module, module: VisionEncoderForExport | None = None, modality: Modality = IMAGE
    ) -> None:
        """`module`: the graph's module (default `VisionEncoderForExport(model, modality)`)."""
        super().__init__(module or VisionEncoderForExport(model, modality))
        self.example_shapes: dict[str, tuple[int, ...]] = {}
        self.geometry: dict[str, np.ndarray] = {}  # the integer image inputs the graph was exported for
        self.features_dim: int | None = None  # width of image_features, known once exported
        self.extra_fields: dict[str, tuple[int, ...]] = {}  # per-token fields beside the features: name -> [L, H]

    @property
    def model_name(self) -> str:
        suffix = "vision" if self.model.modality == IMAGE else self.model.modality.name
        return f"{type(self.model.model).__name__}-{suffix}"

    def export(self, export_dir: str | Path | None = None, image_inputs: dict[str, np.ndarray] | None = None) -> Path:
        """Export for the image inputs `image_inputs` (a processor's output for the compiled image size)."""
        if image_inputs is None:
            raise ValueError("The vision encoder is exported for example image inputs: export(image_inputs=...).")
        tensors = {name: torch.from_numpy(np.asarray(value)) for name, value in image_inputs.items()}
        example = self.model.take_inputs(tensors)
        self.example_shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        self.geometry = {name: t.numpy() for name, t in self.model.geometry.items()}
        with torch.no_grad():
            features, *extras = self.model.outputs(*example.values()).items()
        self.features_dim = int(features[1].shape[-1])
        self.extra_fields = {name: tuple(value.shape[1:]) for name, value in extras}
        if len({int(value.shape[0]) for _, value in (features, *extras)}) != 1:
            raise UnsupportedModelError(
                f"{self.model_name}'s vision output fields {list(self.extra_fields)} do not have one row per image "
                "token."
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
        image_inputs = self.fit_text_inputs(image_inputs)
        self.check_geometry(image_inputs)
        feed = {name: np.asarray(image_inputs[name]) for name in self.model.input_names}
        outputs = self.program.run(feed)
        return {name: outputs[name] for name in self.output_names}

    def fit_text_inputs(self, image_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Text ids and masks (InstructBLIP's Q-Former instruction) padded to the compiled length: ids with 0 and the
        mask with 0, so the padding is masked out. A text longer than compiled is a clear error."""
        fitted = dict(image_inputs)
        text = text_inputs(self.example_shapes)
        for name, shape in self.example_shapes.items():
            if name not in text or name not in image_inputs:
                continue
            value = np.asarray(image_inputs[name])
            length, compiled = value.shape[-1], shape[-1]
            if length > compiled:
                raise ValueError(
                    f"{name} has {length} tokens; the {self.model.modality.name} encoder is compiled for at most "
                    f"{compiled}. Compile with example inputs whose {name} is at least {length} long."
                )
            mask = name.replace("input_ids", "attention_mask")
            if length < compiled and mask not in self.example_shapes:
                raise ValueError(f"{name} has {length} tokens but the encoder is compiled for exactly {compiled}.")
            pad = [(0, 0)] * (value.ndim - 1) + [(0, compiled - length)]
            fitted[name] = np.pad(value, pad)
        return fitted

    def check_geometry(self, image_inputs: dict[str, np.ndarray]) -> None:
        """A clear error unless the inputs have the compiled shapes and geometry (the integer inputs' values)."""
        shapes = {name: tuple(np.shape(value)) for name, value in image_inputs.items()}
        mismatch = shapes != self.example_shapes
        what = "image" if self.model.modality == IMAGE else self.model.modality.name
        detail = f"{what} inputs {self.example_shapes}; these give {shapes}"
        for name, value in self.geometry.items() if not mismatch else ():
            given = np.asarray(image_inputs[name])
            if not np.array_equal(given, value):
                mismatch = True
                detail = f"{name} = {_summary(value)}; these have {_summary(given)}"
                break
        if not mismatch:
            return
        if self.model.modality == IMAGE:
            raise ValueError(
                f"The vision encoder is compiled for {detail}. Compile for this image size and count "
                "(compile(img_size=..., num_images=...)), or resize the images."
            )
        raise ValueError(
            f"The {what} encoder is compiled for {detail}. Compile for this clip length "
            "(compile(audio_seconds=...)), or cut or pad the clip to the compiled length."
        )

    def pytorch(self, image_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The same outputs from the PyTorch module, for any image inputs (for validation)."""
        module = VisionEncoderForExport(self.model.model, self.model.modality)
        tensors = {name: torch.from_numpy(np.asarray(value)) for name, value in image_inputs.items()}
        graph = module.take_inputs(tensors)
        with torch.no_grad():
            outputs = module(*graph.values())
        return {name: value.numpy() for name, value in zip(self.output_names, outputs)}


def _summary(value: np.ndarray) -> str:
    """An integer input's values as a short text: the list when small, else its shape and sum."""
    value = np.asarray(value)
    return str(value.tolist()) if value.size <= 16 else f"an array of shape {value.shape} summing to {value.sum()}"


class QEFFCrossAttentionVisionEncoder(QEFFVisionEncoder):
    """The vision program of a cross-attention vision-language model: the images' cross-attention keys and values of
    every cross-attention layer (`CrossAttentionVisionForExport`), a static graph for one image count. `run` gives
    `{"cross_key.{i}": [n, H_kv, T, D], "cross_value.{i}": ...}`."""

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


