"""Sweep check for image-to-text encoder-decoders (`QEFFImageEncoderDecoder`): exact greedy tokens against HF.

The check builds the tiny model with HF (`AutoModelForImageTextToText.from_config`, with the few values per model type
that the tiny config must agree on), makes two images' encoder inputs of the kind it takes (`pixel_values` of the
vision config's size; Pix2Struct's `flattened_patches` and `attention_mask` from its own image processor, padded
patches included; Florence-2's image tokens and text ids with `pixel_values`), runs HF `generate` on each alone, saves
the model, loads it through `load_image_encoder_decoder` (what `QEFFAutoModelForImageTextToText.from_pretrained` hands
an encoder-decoder to) and validates every stage (`validate_image_seq2seq`: transformed PyTorch, the exported graphs
in ONNX Runtime and the compiled program, both images in one `generate`).

Architectures outside the mechanism come back as `unsupported` with the reason (a decoder that does not keep its keys
and values in transformers' `EncoderDecoderCache`, encoder inputs the check cannot make).
"""

from __future__ import annotations

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

GENERATION_LEN = 12
IMAGE_SIDE = 64  # tiny images: 4 x 4 patches of 16 pixels
MAX_PATCHES = 64  # Pix2Struct's patches per image (its processor's max_patches)
TEXT_TOKENS = 5  # an encoder's text prompt after the image tokens
TINY_DECODER_START = 1  # a composite config (VisionEncoderDecoderConfig) names no start token: the tiny one's
TINY_WIDTH = 64  # the tiny configs' hidden size

# Values the tiny config must agree on, per model type: the image size (4 x 4 patches), the vision tower's output
# width that the decoder's cross-attention reads (PP-FormulaNet), the head width (Pix2Struct's d_kv is not derived
# from its hidden size: 4 heads x 16 = the tiny width).
OVERRIDES: dict[str, dict[str, Any]] = {
    "vision-encoder-decoder": {"encoder": {"image_size": IMAGE_SIDE}},
    "pp_formulanet": {
        "vision_config": {"image_size": IMAGE_SIDE, "decoder_hidden_size": TINY_WIDTH, "mlp_dim": 2 * TINY_WIDTH}
    },
    "pix2struct": {"text_config": {"d_kv": 16}, "vision_config": {"d_kv": 16}},
    # DaViT at a tiny width, projected to the text width
    "florence2": {
        "vision_config": {
            "projection_dim": TINY_WIDTH,
            "depths": [1, 1, 1, 1],
            "embed_dim": [16, 32, 32, TINY_WIDTH],
            "num_heads": [1, 2, 2, 4],
            "num_groups": [1, 2, 2, 4],
        }
    },
    # SigLIP at 4 x 4 patches, pooled to 2 x 2 image tokens
    "t5gemma2": {"encoder": {"vision_config": {"image_size": IMAGE_SIDE}, "mm_tokens_per_image": 4}},
    "udop": {"image_size": IMAGE_SIDE},  # its config holds the image size itself
}


def tiny_seq2seq_config(model_type: str):  # noqa: ANN201 - PreTrainedConfig
    """The sweep's tiny config of an image-to-text encoder-decoder, with `OVERRIDES`."""
    from QEfficient.sweep.checks_image_text import tiny_image_config
    from QEfficient.sweep.tiny_configs import tiny_config

    if model_type in OVERRIDES:
        return tiny_config(model_type, **OVERRIDES[model_type])
    return tiny_image_config(model_type)


def _picture(height: int, width: int, seed: int) -> Any:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def tiny_seq2seq_inputs(model_type: str, model: torch.nn.Module) -> list[dict[str, np.ndarray]]:
    """Two images' encoder inputs (each without the batch axis) of the kind the model's encoder takes."""
    from QEfficient.transformers.models.image_seq2seq import ImageInputError, default_image_inputs, encoder_input_names

    names = encoder_input_names(model)
    if names[0] == "flattened_patches":  # Pix2Struct: its processor's patches of a wide picture (padded patches)
        from transformers.models.auto import image_processing_auto

        pil = image_processing_auto.IMAGE_PROCESSOR_MAPPING_NAMES[model_type]["pil"]
        processor = image_processing_auto.get_image_processor_class_from_name(pil)(max_patches=MAX_PATCHES)
        rows = []
        for seed in (0, 1):
            made = processor(images=[_picture(IMAGE_SIDE // 3, IMAGE_SIDE, seed)], return_tensors="np")
            rows.append({name: np.asarray(made[name][0]) for name in names if name in made})
        return [{k: v.astype(np.float32 if k == "flattened_patches" else np.int64) for k, v in r.items()} for r in rows]
    if names == ["pixel_values"]:
        shape = default_image_inputs(model)["pixel_values"].shape
    else:
        vision = getattr(model.config, "vision_config", None) or model.config
        side = getattr(vision, "image_size", None) or IMAGE_SIDE
        shape = (getattr(vision, "num_channels", 3) or 3, side, side)
    generator = np.random.default_rng(4321)
    rows = [{"pixel_values": generator.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    if "input_ids" in names:  # the image tokens (as many as the image's features), if any, and a text prompt
        text = torch.randint(8, VOCAB - 40, (2, TEXT_TOKENS), generator=torch.Generator().manual_seed(1234))
        image_tokens = _image_tokens(model, rows[0]["pixel_values"])
        for row, words in zip(rows, text.tolist()):
            ids = image_tokens + words
            row["input_ids"] = np.array(ids, dtype=np.int64)
            if "attention_mask" in names:
                row["attention_mask"] = np.ones(len(ids), dtype=np.int64)
            if "bbox" in names:  # UDOP: each token's box, [x0, y0, x1, y1] in 0..1000
                corners = np.sort(generator.integers(0, 1000, (len(ids), 2, 2)), axis=1)
                row["bbox"] = corners.transpose(0, 2, 1).reshape(len(ids), 4)[:, [0, 2, 1, 3]].astype(np.int64)
    missing = [name for name in names if name not in rows[0] and name not in ("attention_mask", "visual_bbox")]
    if missing:
        raise ImageInputError(f"the check makes no {', '.join(missing)} for {type(model).__name__}")
    return rows


def _image_tokens(model: torch.nn.Module, pixel_values: np.ndarray) -> list[int]:
    """The image's placeholder tokens in the encoder's text (Florence-2, T5Gemma2): one per image feature; none for
    a model whose config names no image token (UDOP's encoder appends the image's patches itself)."""
    from QEfficient.transformers.models.image_inputs import placeholder_token_id
    from QEfficient.transformers.models.registry import UnsupportedModelError

    try:
        token = placeholder_token_id(model.config)
    except UnsupportedModelError:
        return []
    with torch.no_grad():
        features = model.get_image_features(pixel_values=torch.from_numpy(pixel_values[None]))
    features = getattr(features, "pooler_output", features)
    return [token] * (int(features.shape[1]) if features.dim() == 3 else int(features.shape[0]))


def check_image_seq2seq(
    row: SweepRow, hf_model: torch.nn.Module | None = None, image_inputs: list[dict[str, np.ndarray]] | None = None
) -> SweepRow:
    """An image-text-to-text encoder-decoder, tiny: HF `generate`'s greedy tokens == `QEFFImageEncoderDecoder` at
    every stage, exactly. `hf_model` / `image_inputs` (two images' encoder inputs): default the check's own."""
    from QEfficient.transformers.encoder_decoder_cache import UnsupportedEncoderDecoderError
    from QEfficient.transformers.models.image_seq2seq import (
        ImageInputError,
        QEFFImageEncoderDecoder,
        load_image_encoder_decoder,
    )
    from QEfficient.validation import validate_image_seq2seq

    model_type = row.model_type
    row.architecture = row.architecture or MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(model_type, "?")
    try:
        if hf_model is None:
            config = run_stage("tiny config", HF_CANNOT_BUILD, tiny_seq2seq_config, model_type)
            torch.manual_seed(0)
            hf_model = run_stage(
                "HF build", HF_CANNOT_BUILD, AutoModelForImageTextToText.from_config, config, dtype=torch.float32
            )
            hf_model.eval()
        row.architecture = type(hf_model).__name__
        generation = hf_model.generation_config
        if generation.decoder_start_token_id is None and generation.bos_token_id is None:
            generation.decoder_start_token_id = TINY_DECODER_START
        if image_inputs is None:
            try:
                image_inputs = tiny_seq2seq_inputs(model_type, hf_model)
            except (UnsupportedEncoderDecoderError, ImageInputError) as exc:
                raise StageFailure(UNSUPPORTED, "encoder input", first_line(exc)) from exc
            except ImportError as exc:  # a processor dependency (UDOP's OCR needs pytesseract)
                raise StageFailure(HF_CANNOT_BUILD, "image inputs", first_line(exc)) from exc
        from QEfficient.transformers.models.image_seq2seq import hf_image_generate_ids

        run_stage("HF generate", HF_CANNOT_RUN, hf_image_generate_ids, hf_model, image_inputs[0], GENERATION_LEN)
        with tempfile.TemporaryDirectory(prefix=f"qeff-sweep-{model_type}-") as folder:
            run_stage("save", HF_CANNOT_BUILD, hf_model.save_pretrained, folder)
            del hf_model
            qeff = load_stage(
                load_image_encoder_decoder,
                folder,
                {"image_inputs": image_inputs[0]},
                unsupported=(UnsupportedEncoderDecoderError,),
            )
            if not isinstance(qeff, QEFFImageEncoderDecoder):
                raise StageFailure(FAIL, "load", f"not handed to QEFFImageEncoderDecoder (got {type(qeff).__name__})")
            report = validate_image_seq2seq(qeff, image_inputs, GENERATION_LEN)
    except StageFailure as failure:
        row.status, row.stage, row.reason = failure.status, failure.stage, failure.reason
        return row
    failed = next((s for s in report.stages if not s.passed), None)
    if failed is not None:
        row.status = HF_CANNOT_RUN if failed.stage == "HF generate" else FAIL
        row.stage, row.reason = failed.stage, failed.error or f"tokens equal to HF: {failed.detail}"
        return row
    detail = report.stages[-1].detail
    row.status, row.detail = PASS, f"{detail} tokens, encoder-decoder ({', '.join(qeff.encoder_examples)})"
    return row
