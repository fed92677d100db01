"""Sweep check for vision-language models: HF `generate` on a prompt with an image = QEfficient's two programs.

Each check builds the tiny model with HF (its vision tower scaled to small images), makes the image inputs the
model's own image processor makes for a random picture (random `pixel_values` of the vision config's shape when
the model has no PIL image processor), asks HF for the image features to know how many image tokens the prompt
needs, runs HF `generate` greedily on text + image tokens + text, saves the model, loads it through
`QEFFAutoModelForImageTextToText.from_pretrained` and compares the greedy tokens of the compiled vision and
language programs (prefill chunked across the image tokens) with HF's.

A cross-attention model (Mllama) has one image token per image and the processor's `cross_attention_mask`, built here
with the processor module's own functions; its tanh gates, which HF initialises closed (zero), are opened so that the
image changes the answer.
"""

from __future__ import annotations

import importlib
import inspect
import tempfile
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForImageTextToText
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from QEfficient.sweep.runner import (
    FAIL,
    HF_CANNOT_BUILD,
    HF_CANNOT_RUN,
    PASS,
    UNSUPPORTED,
    StageFailure,
    SweepRow,
    load_stage,
    run_stage,
)
from QEfficient.sweep.tiny_configs import VOCAB
from QEfficient.utils.errors import first_line

GENERATION_LEN = 16
PREFILL_SEQ_LEN = 8
PATCHES_PER_SIDE = 4  # tiny images: 4 x 4 patches
VIDEO_FRAMES = 4  # frames of a video model's tiny video (InstructBLIP-Video's prompt holds 4 x its query tokens)

# Values that must agree with the tiny image (PATCHES_PER_SIDE patches a side), per model type.
IMAGE_OVERRIDES: dict[str, dict[str, Any]] = {
    "gemma3": {"mm_tokens_per_image": 4},  # pooled 2 x 2 from the 4 x 4 patches
    "shieldgemma2": {"mm_tokens_per_image": 4},
    "paligemma": {"projection_dim": 64, "vision_config": {"projection_dim": 64}},  # the projector: tiny text width
    "vipllava": {"vision_feature_layers": [-2, -1]},  # layers of the 2-layer tiny tower
    "llama4": {"vision_config": {"intermediate_size": 256}},  # the pixel-shuffle MLP's input: 64 / 0.5**2
    # the projector's input: the last hidden state and one intermediate layer's, concatenated (2 x 64)
    "mllama": {"vision_config": {"vision_output_dim": 128}},
}


def tiny_image_config(model_type: str):  # noqa: ANN201 - PreTrainedConfig
    """The sweep's tiny config with a small image: `PATCHES_PER_SIDE` patches a side."""
    from QEfficient.sweep.tiny_configs import tiny_config

    config = tiny_config(model_type)
    vision = getattr(config, "vision_config", None)
    patch, size = getattr(vision, "patch_size", None), getattr(vision, "image_size", None)
    overrides = dict(IMAGE_OVERRIDES.get(model_type, {}))
    if isinstance(patch, (list, tuple)) and isinstance(size, (list, tuple)):
        vision_size: Any = [PATCHES_PER_SIDE * p for p in patch]
    elif isinstance(patch, int) and isinstance(size, int):
        vision_size = PATCHES_PER_SIDE * patch
    else:
        vision_size = None
    if vision_size is not None:
        overrides["vision_config"] = {**overrides.get("vision_config", {}), "image_size": vision_size}
    if getattr(vision, "window_size", None) and isinstance(patch, int):  # Qwen2.5-VL's window, in pixels
        merge = getattr(vision, "spatial_merge_size", 1) or 1
        overrides["vision_config"] = {**overrides.get("vision_config", {}), "window_size": 2 * patch * merge}
    for name in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
        if hasattr(config, name) and getattr(config, name) is None:  # left to the checkpoint: give it one
            overrides[name] = VOCAB - 11
    if _uses_multimodal_rope(model_type) and "mrope_section" not in (_text_rope(config) or {"mrope_section": 0}):
        # M-RoPE models read a default sized for their full head when the config names no sections
        from QEfficient.sweep.tiny_configs import HEAD_DIM

        text = config.get_text_config(decoder=True)
        factor = _text_rope(config).get("partial_rotary_factor", getattr(text, "partial_rotary_factor", 1.0)) or 1.0
        pairs = int(HEAD_DIM * factor) // 2  # rotary pairs of the tiny head
        sections = [pairs - 2 * (pairs // 4), pairs // 4, pairs // 4]
        overrides["text_config"] = {"rope_parameters": {**_text_rope(config), "mrope_section": sections}}
    return tiny_config(model_type, **overrides) if overrides else config


def _text_rope(config: Any) -> dict | None:
    rope = getattr(config.get_text_config(decoder=True), "rope_parameters", None)
    return dict(rope) if isinstance(rope, dict) else None


def _uses_multimodal_rope(model_type: str) -> bool:
    """Whether the model type's base model computes multimodal rotary positions (`get_rope_index`)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    name = MODEL_MAPPING_NAMES.get(model_type)
    return isinstance(name, str) and hasattr(getattr(transformers, name, None), "get_rope_index")


def _processor_family(model_type: str) -> str | None:
    """The model type whose folder defines `model_type`'s processor class, e.g. "qwen3_vl" for "qwen3_vl_moe"."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    processor_class = getattr(transformers, name, None) if isinstance(name, str) else None
    if processor_class is None:
        return None
    return processor_class.__module__.split(".")[-2]


def tiny_image_side(config: Any) -> int:
    """The tiny image's side: the vision config's image size, else `PATCHES_PER_SIDE` merged patches."""
    vision = getattr(config, "vision_config", None)
    size = getattr(vision, "image_size", None)
    size = size[0] if isinstance(size, (list, tuple)) else size
    if isinstance(size, int):
        return size
    patch = getattr(vision, "patch_size", None)
    merge = getattr(vision, "spatial_merge_size", None) or 1
    return PATCHES_PER_SIDE * patch * merge if isinstance(patch, int) else 64


def _image_processor(model_type: str, config: Any) -> Any:
    """The model type's PIL image processor, sized for the tiny vision config; None when it has none."""
    from transformers.models.auto import image_processing_auto

    names = image_processing_auto.IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    if names is None:  # a model type that shares its family's processor (Qwen3-VL-MoE uses Qwen3-VL's)
        names = image_processing_auto.IMAGE_PROCESSOR_MAPPING_NAMES.get(_processor_family(model_type) or "")
    name = names.get("pil") if isinstance(names, dict) else None
    if name is None:
        return None
    processor_class = image_processing_auto.get_image_processor_class_from_name(name)
    if processor_class is None:
        return None
    defaults = processor_class()
    vision = getattr(config, "vision_config", None)
    size = tiny_image_side(config)
    # the processor's patching must be the tower's: patch, merge and temporal patch sizes from the vision config
    patching = {
        "patch_size": getattr(vision, "patch_size", None),
        "merge_size": getattr(vision, "spatial_merge_size", None),
        "temporal_patch_size": getattr(vision, "temporal_patch_size", None),
    }
    patching = {k: v for k, v in patching.items() if isinstance(v, int) and getattr(defaults, k, None) is not None}
    if getattr(defaults, "do_image_splitting", None):  # Idefics3's tiles: one image is one tile here
        patching["do_image_splitting"] = False
    sized = {}
    for attribute in ("size", "crop_size", "max_image_size"):
        value = getattr(defaults, attribute, None)
        fields = value.items() if isinstance(value, dict) else vars(value).items() if value is not None else ()
        # edges become the tiny image's side; pixel counts (Qwen2-VL's min/max pixels) its area
        sized[attribute] = {k: size * size if v >= 3000 else size for k, v in fields if isinstance(v, int)}
    processor = processor_class(**{k: v for k, v in sized.items() if v}, **patching)
    return processor


def _picture(config: Any) -> Any:
    """The random tiny picture (a PIL image of the tiny image side)."""
    from PIL import Image

    size = tiny_image_side(config)
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def tiny_image_inputs(model_type: str, config: Any, model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Image inputs for one random picture, as the model's image processor makes them."""
    from QEfficient.transformers.models.image_inputs import (
        VIDEO,
        features_parameters,
        image_inputs_of,
        text_inputs,
        visual_modality,
    )

    processor = _image_processor(model_type, config)
    vision = getattr(config, "vision_config", None)
    size = tiny_image_side(config)
    if processor is None:
        channels = getattr(vision, "num_channels", 3) or 3
        generator = torch.Generator().manual_seed(0)
        frames = (VIDEO_FRAMES,) if visual_modality(model) == VIDEO else ()  # a video: [1, frames, C, H, W]
        inputs = {"pixel_values": torch.randn(1, *frames, channels, size, size, generator=generator).numpy()}
    else:
        inputs = image_inputs_of(processor(images=[_picture(config)], return_tensors="np"), model)
    # text the image features depend on (InstructBLIP's Q-Former instruction): a few random tokens
    for name in text_inputs(features_parameters(model, visual_modality(model)) or ()):
        if name.endswith("input_ids"):
            inputs[name] = np.random.default_rng(5).integers(8, 40, (1, 6))
        else:  # its attention mask
            inputs[name] = np.ones((1, 6), dtype=np.int64)
    return inputs


def cross_attention_mask(model_type: str, config: Any, ids: list[int], token: int) -> np.ndarray:
    """`cross_attention_mask [1, len(ids), images, tiles]` for the tiny picture, as the model's processor builds it:
    with its processor module's `get_cross_attention_token_mask` and `convert_sparse_cross_attention_mask_to_dense`
    (each image token opens its image's valid tiles from there on)."""
    processor = _image_processor(model_type, config)
    family = _processor_family(model_type) or model_type
    module = importlib.import_module(f"transformers.models.{family}.processing_{family}")
    num_tiles = processor(images=[_picture(config)], return_tensors="np")["num_tiles"]
    spans = [module.get_cross_attention_token_mask(ids, token)]
    return module.convert_sparse_cross_attention_mask_to_dense(
        spans, num_tiles=num_tiles, max_num_tiles=processor.max_image_tiles, length=len(ids)
    )


def open_closed_gates(model: torch.nn.Module) -> None:
    """Give tanh gates that HF initialises closed (one-element `*gate` parameters at zero: Mllama's gated
    cross-attention and tile embeddings) a value, so that what they gate changes the output."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("gate") and parameter.numel() == 1 and not parameter.any():
                parameter.fill_(0.75)


def _hf_feature_count(model: torch.nn.Module, image_inputs: dict[str, np.ndarray]) -> int:
    from QEfficient.transformers.models.image_inputs import visual_modality
    from QEfficient.transformers.models.vision_encoder import VisionEncoderForExport

    encoder = VisionEncoderForExport(model, visual_modality(model))
    tensors = {name: torch.from_numpy(value) for name, value in image_inputs.items()}
    graph = encoder.take_inputs(tensors)
    with torch.no_grad():
        return int(encoder(*graph.values())[0].shape[0])


def _hf_generate(model: torch.nn.Module, ids: list[int], image_inputs: dict[str, np.ndarray]) -> list[int]:
    from QEfficient.transformers.implementations import absent_image_outputs
    from QEfficient.transformers.models.causal_lm_wrapper import bidirectional_prefix
    from QEfficient.transformers.models.image_inputs import placeholder_token_id, visual_modality

    token = placeholder_token_id(model.config, visual_modality(model))
    inputs = {name: torch.from_numpy(value) for name, value in image_inputs.items()}
    input_ids = torch.tensor([ids])
    parameters = inspect.signature(model.forward).parameters
    for name in ("mm_token_type_ids", "token_type_ids"):  # 1 marks image tokens, as the processors make them
        if name in parameters:
            inputs[name] = (input_ids == token).int()
    if "token_type_ids" in parameters and bidirectional_prefix(model):  # PaliGemma's processor: 0 marks the prompt
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    with torch.no_grad(), absent_image_outputs():  # transformers 5.24's Llama4 forward reads a missing field
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            **inputs,
            max_new_tokens=GENERATION_LEN,
            min_new_tokens=GENERATION_LEN,
            do_sample=False,
        )
    return out[0, len(ids) :].tolist()


def _refuses_single_program(load: Any, folder: str) -> None:
    """kv_offload=False must be refused with UnsupportedModelError for a cross-attention model."""
    from QEfficient.transformers.models.registry import UnsupportedModelError

    try:
        load(folder, kv_offload=False)
    except UnsupportedModelError:
        return
    raise AssertionError("kv_offload=False was not refused for a cross-attention model")


def check_image_text_to_text(model_type: str) -> SweepRow:
    """HF `generate` == the compiled vision + language programs, exact greedy tokens."""
    from QEfficient.sweep.checks import randomize_zero_matrices
    from QEfficient.transformers.models.causal_lm_wrapper import UnsupportedCausalLMError, cross_attention_layers
    from QEfficient.transformers.models.image_inputs import placeholder_token_id, visual_modality
    from QEfficient.transformers.models.image_text_to_text import (
        QEFFAutoModelForImageTextToText,
        check_image_text_supported,
    )
    from QEfficient.transformers.models.registry import UnsupportedModelError

    row = SweepRow("image-text-to-text", model_type, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[model_type])
    try:
        config = run_stage("tiny config", HF_CANNOT_BUILD, tiny_image_config, model_type)
        if getattr(config, "is_encoder_decoder", False):  # image-to-text encoder-decoders: QEFFImageEncoderDecoder
            from QEfficient.sweep.checks_image_seq2seq import check_image_seq2seq

            return check_image_seq2seq(row)
        torch.manual_seed(0)
        hf = run_stage(
            "HF build", HF_CANNOT_BUILD, AutoModelForImageTextToText.from_config, config, dtype=torch.float32
        )
        randomize_zero_matrices(hf, config)
        open_closed_gates(hf)
        hf.eval()
        row.architecture = type(hf).__name__
        try:
            check_image_text_supported(hf)
        except UnsupportedModelError as exc:
            raise StageFailure(UNSUPPORTED, "transform", first_line(exc)) from exc
        token = placeholder_token_id(config, visual_modality(hf))
        image_inputs = run_stage("image inputs", HF_CANNOT_BUILD, tiny_image_inputs, model_type, config, hf)
        cross = bool(cross_attention_layers(hf))
        if cross:  # one image token per image; its images enter through cross-attention
            count = int(np.shape(image_inputs["pixel_values"])[1])
        else:
            count = run_stage("HF image features", HF_CANNOT_RUN, _hf_feature_count, hf, image_inputs)
        generator = torch.Generator().manual_seed(1234)
        text = torch.randint(8, VOCAB - 40, (9,), generator=generator).tolist()
        ids = text[:3] + [token] * count + text[3:]
        if cross:
            mask = run_stage(
                "cross-attention mask", HF_CANNOT_BUILD, cross_attention_mask, model_type, config, ids, token
            )
            image_inputs = {**image_inputs, "cross_attention_mask": mask}
        expected = run_stage("HF generate", HF_CANNOT_RUN, _hf_generate, hf, ids, image_inputs)
        with tempfile.TemporaryDirectory(prefix=f"qeff-sweep-{model_type}-") as folder:
            run_stage("save", HF_CANNOT_BUILD, hf.save_pretrained, folder)
            del hf
            unsupported = (UnsupportedModelError, UnsupportedCausalLMError)
            qeff = load_stage(QEFFAutoModelForImageTextToText.from_pretrained, folder, unsupported=unsupported)
            ctx_len = len(ids) + GENERATION_LEN + PREFILL_SEQ_LEN
            # prefill chunks across the image tokens, except for a prefix-LM, whose prompt is one bidirectional block
            prefill_seq_len = len(ids) if qeff.language.model.prefix_lm else PREFILL_SEQ_LEN
            run_stage(
                "compile",
                FAIL,
                qeff.compile,
                image_inputs=image_inputs,
                prefill_seq_len=prefill_seq_len,
                ctx_len=ctx_len,
            )
            got = run_stage("generate", FAIL, qeff.generate_ids, [ids], [image_inputs], GENERATION_LEN)[0]
            load = QEFFAutoModelForImageTextToText.from_pretrained
            if cross:  # kv_offload=False is refused with a clear error (docs/image_text_to_text.md)
                run_stage("kv_offload=False refused", FAIL, _refuses_single_program, load, folder)
                got_single = expected
            else:  # the single program (kv_offload=False): the whole prompt in its prefill graph
                single = run_stage("load (kv_offload=False)", FAIL, load, folder, kv_offload=False)
                run_stage(
                    "compile (kv_offload=False)",
                    FAIL,
                    single.compile,
                    image_inputs=image_inputs,
                    prefill_seq_len=len(ids),
                    ctx_len=ctx_len,
                )
                got_single = run_stage(
                    "generate (kv_offload=False)", FAIL, single.generate_ids, [ids], [image_inputs], GENERATION_LEN
                )[0]
    except StageFailure as failure:
        row.status, row.stage, row.reason = failure.status, failure.stage, failure.reason
        return row
    same = sum(a == b for a, b in zip(got, expected))
    if got == expected and got_single == expected:
        modes = "kv_offload=True; kv_offload=False refused" if cross else "both modes"
        row.status, row.detail = PASS, f"{same}/{len(expected)} tokens, {modes} ({count} image tokens)"
    elif got == expected:
        first = next((i for i, (a, b) in enumerate(zip(got_single, expected)) if a != b), 0)
        row.status, row.stage = FAIL, "tokens (kv_offload=False)"
        row.reason = f"first difference at new token {first}: {got_single[first : first + 3]} vs HF"
    else:
        first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        row.status, row.stage = FAIL, "tokens"
        row.reason = (
            f"first difference at new token {first}: {got[first : first + 3]} vs HF {expected[first : first + 3]}"
        )
    return row
