"""Inputs of vision-language models: images as the processors take them, the processor's image outputs, the image
placeholder token, and the sizes a vision program is compiled for."""


from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from QEfficient.transformers.models.registry import UnsupportedModelError

logger = logging.getLogger(__name__)


# Processor outputs that belong to the text, not to the images.
TEXT_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "position_ids"})
DEFAULT_IMG_SIZE = 448
# Processor outputs of a cross-attention model that are per text token (the language program's), not the images'.
PER_TOKEN_INPUTS = frozenset({"cross_attention_mask"})



@dataclasses.dataclass(frozen=True)
class Modality:
    """What a placeholder-token multimodal model's encoder program computes and where the result goes: HF's features
    function (on the model or its inner `model`) and the config fields naming the placeholder token."""

    name: str
    features_function: str
    token_fields: tuple[str, ...]


IMAGE = Modality("image", "get_image_features", ("image_token_id", "image_token_index"))
AUDIO = Modality("audio", "get_audio_features", ("audio_token_id", "audio_token_index"))
VIDEO = Modality("video", "get_video_features", ("video_token_id", "video_token_index"))


def visual_modality(model: nn.Module) -> Modality:
    """IMAGE for a model with `get_image_features`; VIDEO for one with `get_video_features` only (InstructBLIP-Video,
    whose prompt holds video placeholder tokens)."""
    if features_function(model, IMAGE) is None and features_function(model, VIDEO) is not None:
        return VIDEO
    return IMAGE


def features_function(model: nn.Module, modality: Modality = IMAGE) -> Any:
    """HF's features function of a multimodal model (`get_image_features`, `get_audio_features`; on the model, or on
    its inner `model`); None if none."""
    function = getattr(model, modality.features_function, None)
    inner = getattr(model, "model", None)
    return function if callable(function) else getattr(inner, modality.features_function, None)


def features_parameters(model: nn.Module, modality: Modality) -> list[str] | None:
    """The inputs the features function names (looking through a `(*args, **kwargs)` delegate to the inner model's),
    None when it names none."""
    for owner in (model, getattr(model, "model", None)):
        function = getattr(owner, modality.features_function, None)
        if not callable(function):
            continue
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names = [n for n, p in inspect.signature(function).parameters.items() if p.kind in kinds]
        if names:
            return names
    return None


def placeholder_token_id(config: Any, modality: Modality = IMAGE) -> int:
    """The placeholder token that a multimodal model's images (or audio) replace in the prompt."""
    for name in modality.token_fields:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    fields = " / ".join(f"`{name}`" for name in modality.token_fields)
    raise UnsupportedModelError(
        f"{type(config).__name__} names no {modality.name} token ({fields}): its {modality.name} input does not "
        "replace placeholder tokens of the prompt, which is the mechanism implemented."
    )


def text_inputs(names: Iterable[str]) -> set[str]:
    """The integer encoder inputs among `names` that carry text (InstructBLIP's `qformer_input_ids` and the
    `qformer_attention_mask` beside it): each prompt's data, graph inputs, unlike the integers that describe an
    image's geometry (a pixel mask included)."""
    names = set(names)
    ids = {n for n in names if n.endswith("input_ids")}
    return ids | {n.replace("input_ids", "attention_mask") for n in ids} & names


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



def load_processor(source: str) -> Any:
    """The processor saved with a model folder (None when there is none)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError, ImportError) as exc:
        logger.info("No processor found with %s (%s); pass processor= where it is needed.", source, exc)
        return None


def size_pair(size: int | tuple[int, int] | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def default_img_size(config: Any) -> int:
    vision = getattr(config, "vision_config", None)
    size = getattr(vision, "image_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if isinstance(size, int) and size > 0 else DEFAULT_IMG_SIZE


def images_in(inputs: dict[str, np.ndarray], default: int) -> int:
    """How many images example inputs hold when every input is per image (the leading dimension); else `default`."""
    leading = {np.shape(v)[0] for v in inputs.values() if np.ndim(v)}
    return leading.pop() if len(leading) == 1 else default


def per_image_groups(shapes: dict[str, tuple], compiled: dict[str, tuple], num_images: int) -> bool:
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
