"""QEFFAutoModelForImageTextToText against HF `generate` on a tiny LLaVA saved with a real processor.

The model is built from config classes in code (no download): a CLIP vision tower for 28x28 images, a Llama
language model over the BERT tokenizer of all-MiniLM-L6-v2 with an `<image>` token added, and a LlavaProcessor with
a small chat template. Every architecture family (LLaVA-NeXT, Gemma3, Mistral3, InternVL, Qwen2.5-VL's M-RoPE, ...)
is checked by the sweep's CI slice (tests/test_sweep.py).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from QEfficient import QEFFAutoModelForCausalLM, QEFFAutoModelForImageTextToText
from QEfficient.transformers.models.registry import UnsupportedModelError
from QEfficient.utils.default_models import default_embedding_model

IMAGE_SIZE = 28
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
GENERATION_LEN = 10


def tiny_llava_processor() -> LlavaProcessor:
    tokenizer = AutoTokenizer.from_pretrained(default_embedding_model())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, which the "default" strategy drops
        chat_template=CHAT_TEMPLATE,
    )


def tiny_llava(processor: LlavaProcessor) -> LlavaForConditionalGeneration:
    tokenizer = processor.tokenizer
    text = AutoConfig.for_model(
        "llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        initializer_range=0.2,
        pad_token_id=0,
    )
    vision = AutoConfig.for_model(
        "clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=14,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def picture(seed: int, size: tuple[int, int] = (40, 50)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llava")
    processor = tiny_llava_processor()
    model = tiny_llava(processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    qeff = QEFFAutoModelForImageTextToText.from_pretrained(folder)
    qeff.compile(img_size=IMAGE_SIZE, prefill_seq_len=8, ctx_len=64, batch_size=2)
    qeff.folder = folder
    return model, processor, qeff


def hf_answer(model, processor, images: list, prompt: str) -> list[int]:
    """HF `generate` (greedy) on the processor's inputs for one chat prompt with its images."""
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(images=images or None, text=[text], return_tensors="pt")
    inputs.pop("token_type_ids", None)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=GENERATION_LEN, min_new_tokens=GENERATION_LEN, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_one_image_equals_hf(llava) -> None:
    model, processor, qeff = llava
    out = qeff.generate(images=picture(0), prompts="what is in the picture", generation_len=GENERATION_LEN)
    assert out.generated_ids[0] == hf_answer(model, processor, [picture(0)], "what is in the picture")
    assert out.perf_metrics.vision_s > 0
    assert isinstance(out.generated_texts[0], str)


def test_batch_and_several_images_per_prompt_equal_hf(llava) -> None:
    """Two prompts in one batch: one with two images (prefill chunks cross the image tokens), one with none."""
    model, processor, qeff = llava
    images = [[picture(1), picture(2, (60, 30))], None]
    prompts = ["compare these two pictures please", "a prompt without any image"]
    out = qeff.generate(images=images, prompts=prompts, generation_len=GENERATION_LEN)
    assert out.generated_ids[0] == hf_answer(model, processor, images[0], prompts[0])
    assert out.generated_ids[1] == hf_answer(model, processor, [], prompts[1])


def test_images_as_arrays_and_other_modes(llava) -> None:
    """A uint8 array and a grayscale or RGBA image are converted to RGB, as the processor would do."""
    model, processor, qeff = llava
    array = np.asarray(picture(3))
    gray = picture(4).convert("L")
    out = qeff.generate(images=[[array, gray]], prompts=["describe"], generation_len=GENERATION_LEN)
    assert out.generated_ids[0] == hf_answer(model, processor, [picture(3), gray.convert("RGB")], "describe")


def test_bad_images_get_clear_errors(llava) -> None:
    _, _, qeff = llava
    with pytest.raises(ValueError, match="zero size"):
        qeff.generate(images=Image.new("RGB", (0, 5)), prompts="hi")
    with pytest.raises(ValueError, match=r"shape \(8, 8, 2\)"):
        qeff.generate(images=np.zeros((8, 8, 2), dtype=np.uint8), prompts="hi")
    with pytest.raises(TypeError, match="PIL image, a file path or a numpy array"):
        qeff.generate(images=12, prompts="hi")
    with pytest.raises(FileNotFoundError, match="no file"):
        qeff.generate(images="/nonexistent/picture.png", prompts="hi")


def test_prompts_and_images_must_agree(llava) -> None:
    _, _, qeff = llava
    with pytest.raises(ValueError, match="no image token '<image>'"):
        qeff.generate(images=picture(0), prompts="no placeholder here", chat=False)
    with pytest.raises(ValueError, match="1 <image> tokens and 2 images"):
        qeff.generate(images=[[picture(0), picture(1)]], prompts=["<image> one placeholder"], chat=False)
    with pytest.raises(ValueError, match="no images were passed|image tokens but no image"):
        qeff.generate(images=None, prompts="<image> a placeholder without its image", chat=False)
    with pytest.raises(ValueError, match="2 image entries for 1 prompts|one per prompt"):
        qeff.generate(images=[picture(0), picture(1)], prompts=["a", "b", "c"])


def test_vision_program_is_compiled_for_one_geometry(llava) -> None:
    _, _, qeff = llava
    wrong = {"pixel_values": np.zeros((1, 3, 2 * IMAGE_SIZE, 2 * IMAGE_SIZE), dtype=np.float32)}
    with pytest.raises(ValueError, match="compiled for image inputs"):
        qeff.image_features(wrong)


def test_single_program_equals_hf(llava) -> None:
    """`kv_offload=False`: the vision encoder inside the prefill graph of one program gives the same tokens; a prompt
    longer than the prefill graph, or images of another geometry, get clear errors."""
    model, processor, qeff = llava
    single = QEFFAutoModelForImageTextToText.from_pretrained(qeff.folder, kv_offload=False)
    single.compile(img_size=IMAGE_SIZE, prefill_seq_len=32, ctx_len=64)
    out = single.generate(images=[picture(6), None], prompts=["what is this", "no image here"], generation_len=10)
    assert out.generated_ids[0] == hf_answer(model, processor, [picture(6)], "what is this")
    assert out.generated_ids[1] == hf_answer(model, processor, [], "no image here")
    with pytest.raises(ValueError, match="prefill_seq_len=32"):
        single.generate(images=picture(6), prompts="a long prompt " * 12, generation_len=2)
    with pytest.raises(ValueError, match="compiled for"):
        single.generate(images=[[picture(6), picture(7)]], prompts=["two images"], generation_len=2)
    with pytest.raises(ValueError, match="batch_size=1"):
        single.compile(img_size=IMAGE_SIZE, prefill_seq_len=32, ctx_len=64, batch_size=2)


def test_causal_lm_class_points_to_the_image_text_class(llava, tmp_path) -> None:
    model, _, _ = llava
    model.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="QEFFAutoModelForImageTextToText"):
        QEFFAutoModelForCausalLM.from_pretrained(tmp_path)


def test_qeff_infer_with_an_image(llava, tmp_path) -> None:
    """`qeff infer --image` prints the same answer as HF `generate`."""
    model, processor, qeff = llava
    image_path = tmp_path / "picture.png"
    picture(5).save(image_path)
    command = [sys.executable, "-m", "QEfficient.cli.main", "infer", "--model", str(qeff.folder)]
    command += ["--image", str(image_path), "--prompt", "what is this", "--generation-len", str(GENERATION_LEN)]
    command += ["--prompt-len", "8", "--ctx-len", "64", "--img-size", str(IMAGE_SIZE)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected_ids = hf_answer(model, processor, [picture(5)], "what is this")
    expected = processor.tokenizer.decode(expected_ids, skip_special_tokens=True)
    assert f"answer: {expected.strip()}" in done.stdout
    assert "vision" in done.stdout


def test_qeff_validate_image_text(llava) -> None:
    """`qeff validate` on a vision-language folder: HF generate vs the compiled programs, exact tokens."""
    _, _, qeff = llava
    command = [sys.executable, "-m", "QEfficient.cli.main", "validate", "--model", str(qeff.folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "language program" in done.stdout and "overall: PASS" in done.stdout


# ---- a cross-attention model: Mllama (Llama 3.2 Vision) ------------------------------------------------------------

MLLAMA_IMAGE_SIZE = 28  # one tile: 2 x 2 patches of 14 (+ the class token)
MLLAMA_TEMPLATE = CHAT_TEMPLATE.replace("<image>", "<|image|>")


def tiny_mllama_processor():  # noqa: ANN201 - MllamaProcessor
    from transformers import MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(default_embedding_model())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
    tokenizer.bos_token = tokenizer.cls_token
    tokenizer.chat_template = MLLAMA_TEMPLATE
    image_processor = MllamaImageProcessorPil(
        size={"height": MLLAMA_IMAGE_SIZE, "width": MLLAMA_IMAGE_SIZE}, max_image_tiles=4
    )
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=MLLAMA_TEMPLATE)


def tiny_mllama(processor):  # noqa: ANN001, ANN201 - MllamaForConditionalGeneration
    """A tiny Mllama: a 1 + 1 layer vision tower over up to 4 tiles, a 3-layer language model whose layer 1 is a
    cross-attention layer. Its tanh gates (HF initialises them to zero, closed) are opened, so images matter."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_global_layers": 1,
        "attention_heads": 4,
        "image_size": MLLAMA_IMAGE_SIZE,
        "patch_size": 14,
        "max_num_tiles": 4,
        "intermediate_layers_indices": [0],
        "vision_output_dim": 64,  # the last hidden state and one intermediate layer's (2 x 32)
    }
    text = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "cross_attention_layers": [1],
        "vocab_size": len(processor.tokenizer),
        "max_position_embeddings": 256,
        "pad_token_id": 0,
        "bos_token_id": processor.tokenizer.cls_token_id,
        "eos_token_id": None,  # generation runs to its length, in HF as here
    }
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image|>")
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=image_token)
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("gate") and parameter.numel() == 1:
                parameter.fill_(0.75)
    return model


@pytest.fixture(scope="module")
def mllama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-mllama")
    processor = tiny_mllama_processor()
    model = tiny_mllama(processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    qeff = QEFFAutoModelForImageTextToText.from_pretrained(folder)
    qeff.compile(img_size=MLLAMA_IMAGE_SIZE, prefill_seq_len=8, ctx_len=64, batch_size=2)
    qeff.folder = folder
    return model, processor, qeff


def hf_mllama_answer(model, processor, image, prompt: str, chat: bool = True) -> list[int]:  # noqa: ANN001
    """HF `generate` (greedy) on MllamaProcessor's inputs (pixel values, aspect ratios, cross-attention mask)."""
    text = prompt
    if chat:
        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(images=[image] if image is not None else None, text=[text], return_tensors="pt")
    inputs.pop("token_type_ids", None)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=GENERATION_LEN, min_new_tokens=GENERATION_LEN, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_mllama_one_image_equals_hf(mllama) -> None:
    """Cross-attention keys and values from the vision program, retained by the language program: HF's tokens."""
    model, processor, qeff = mllama
    assert {"past_cross_key.1", "past_cross_value.1"} <= set(qeff.language.program.state_names())
    assert {"past_cross_key.1", "past_cross_value.1"} <= qeff.language.program.in_place_state  # never copied
    out = qeff.generate(images=picture(0), prompts="what is in the picture", generation_len=GENERATION_LEN)
    expected = hf_mllama_answer(model, processor, picture(0), "what is in the picture")
    assert out.generated_ids[0] == expected
    assert expected != hf_mllama_answer(model, processor, picture(1), "what is in the picture")  # the image matters
    assert out.perf_metrics.vision_s > 0


def test_mllama_batch_with_a_text_only_prompt_equals_hf(mllama) -> None:
    """A batch of two: one prompt with an image, one without (zero cross keys and mask: HF skips those layers)."""
    model, processor, qeff = mllama
    prompts = ["describe it", "a prompt without any image"]
    out = qeff.generate(images=[picture(2, (60, 30)), None], prompts=prompts, generation_len=GENERATION_LEN)
    assert out.generated_ids[0] == hf_mllama_answer(model, processor, picture(2, (60, 30)), prompts[0])
    assert out.generated_ids[1] == hf_mllama_answer(model, processor, None, prompts[1])


def test_mllama_text_before_the_image_and_any_aspect_ratio(mllama) -> None:
    """Tokens before the image token read no image (a zero mask row); the prefill chunks cross the image token; a wide
    image (another aspect ratio, more tiles than the compiled example's) runs on the same vision program."""
    model, processor, qeff = mllama
    prompt = "here is a long question about the picture <|image|> what do you see"
    wide = picture(3, (30, 100))
    out = qeff.generate(images=wide, prompts=prompt, chat=False, generation_len=GENERATION_LEN)
    assert out.generated_ids[0] == hf_mllama_answer(model, processor, wide, prompt, chat=False)


def test_mllama_errors(mllama) -> None:
    model, _, qeff = mllama
    with pytest.raises(UnsupportedModelError, match="kv_offload=False is not implemented"):
        QEFFAutoModelForImageTextToText(model, kv_offload=False)
    with pytest.raises(ValueError, match="exactly the compiled number of images"):
        qeff.generate(images=[[picture(0), picture(1)]], prompts=["two images"])
    with pytest.raises(ValueError, match="needs its cross_attention_mask"):
        qeff.generate_ids([[5, 6, qeff.image_token_id, 7]], [qeff.example_image_inputs(MLLAMA_IMAGE_SIZE)])


def test_mllama_continuous_batching_equals_hf(mllama) -> None:
    """Continuous batching: each prompt's cross keys and values go into the cache row it takes, which a text-only
    prompt (zeros there) reuses after an image prompt."""
    model, processor, qeff = mllama
    cb = QEFFAutoModelForImageTextToText.from_pretrained(qeff.folder, continuous_batching=True)
    cb.compile(img_size=MLLAMA_IMAGE_SIZE, prefill_seq_len=8, ctx_len=64, full_batch_size=2)
    images = [picture(4), picture(5, (50, 20)), None]
    prompts = ["what is this", "and this one", "no picture here"]
    out = cb.generate(images=images, prompts=prompts, generation_len=GENERATION_LEN)
    for image, prompt, got in zip(images, prompts, out.generated_ids):
        assert got == hf_mllama_answer(model, processor, image, prompt)


def test_qeff_validate_mllama(mllama) -> None:
    """`qeff validate` on a cross-attention model compares its vision program's keys and values, then the tokens."""
    _, _, qeff = mllama
    command = [sys.executable, "-m", "QEfficient.cli.main", "validate", "--model", str(qeff.folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "vision program" in done.stdout and "overall: PASS" in done.stdout
