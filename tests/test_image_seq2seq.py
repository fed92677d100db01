"""Image-to-text encoder-decoders (`QEFFImageEncoderDecoder`): a tiny ViT + TrOCR `VisionEncoderDecoderModel` built
from configs in code, greedy tokens against HF `generate` exactly, and a clear error for an image of the wrong size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import TrOCRConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

from QEfficient.transformers.models.image_seq2seq import (
    ImageInputError,
    QEFFImageEncoderDecoder,
    hf_image_generate_ids,
    load_image_encoder_decoder,
)

IMAGE = 32  # 2 x 2 patches of 16 pixels
GENERATION_LEN = 8


@pytest.fixture(scope="module")
def tiny_ved() -> VisionEncoderDecoderModel:
    encoder = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=IMAGE,
        patch_size=16,
        initializer_range=0.5,  # large weights: each image gives its own tokens
    )
    decoder = TrOCRConfig(
        vocab_size=96,
        d_model=32,
        decoder_layers=2,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=0,
        init_std=0.5,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 0, 1, 2
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config).eval()
    model.generation_config.decoder_start_token_id = 0
    model.generation_config.eos_token_id = 2
    return model


def _images(count: int, side: int = IMAGE) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{"pixel_values": rng.standard_normal((3, side, side)).astype(np.float32)} for _ in range(count)]


def test_tokens_equal_hf_generate(tiny_ved: VisionEncoderDecoderModel, tmp_path) -> None:
    images = _images(3)
    expected = [hf_image_generate_ids(tiny_ved, image, GENERATION_LEN) for image in images]
    prompt = [5, 9]  # a task prompt: HF prepends the start token, as here
    expected_prompted = hf_image_generate_ids(tiny_ved, images[0], GENERATION_LEN, decoder_prompt_ids=prompt)
    tiny_ved.save_pretrained(tmp_path)
    model = load_image_encoder_decoder(str(tmp_path), {"processor": None})
    assert isinstance(model, QEFFImageEncoderDecoder)
    model.compile(ctx_len=GENERATION_LEN + 4, batch_size=2)  # 3 images: a full round and one padded row
    assert sum(map(len, expected)) > 2 * GENERATION_LEN and len(set(map(tuple, expected))) > 1  # real tokens
    assert model.generate_ids(images, GENERATION_LEN) == expected
    out = model.generate(image_inputs=images[:1], decoder_prompt_ids=prompt, generation_len=GENERATION_LEN)
    assert out.generated_ids == [expected_prompted]
    assert out.finish_reasons[0] in ("eos", "length")


def test_wrong_image_size_is_a_clear_error(tiny_ved: VisionEncoderDecoderModel) -> None:
    model = QEFFImageEncoderDecoder(tiny_ved)  # pixel_values at the vision config's image size, [3, 32, 32]
    model.compile(ctx_len=8)
    with pytest.raises(ImageInputError, match=r"pixel_values has shape \[3, 48, 48\].*compiled for \[3, 32, 32\]"):
        model.generate(image_inputs=_images(1, side=48), generation_len=2)


def test_decoder_only_models_are_not_handed_over(tmp_path) -> None:
    from transformers import LlavaConfig

    LlavaConfig().save_pretrained(tmp_path)
    assert load_image_encoder_decoder(str(tmp_path), {}) is None


def test_qeff_infer_image_on_an_encoder_decoder(tiny_ved: VisionEncoderDecoderModel, tmp_path, capsys) -> None:
    """`qeff infer --image` hands an encoder-decoder folder (saved with its image processor) to QEFFImageEncoderDecoder
    and prints each image's text: the tokens of HF `generate` on the processor's pixels."""
    from PIL import Image
    from transformers import ViTImageProcessor

    from QEfficient.cli.main import main

    processor = ViTImageProcessor(size={"height": IMAGE, "width": IMAGE})
    tiny_ved.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    picture = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "picture.png")
    pixels = processor(images=[Image.fromarray(picture)], return_tensors="np")["pixel_values"][0]
    expected = hf_image_generate_ids(tiny_ved, {"pixel_values": pixels}, GENERATION_LEN)
    command = ["infer", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "picture.png")]
    assert main([*command, "--generation-len", str(GENERATION_LEN), "--ctx-len", "16"]) == 0
    printed = capsys.readouterr().out
    assert f"picture.png: {' '.join(map(str, expected))}" in printed, printed
