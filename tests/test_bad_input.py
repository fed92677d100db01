"""Bad input gets a clear error that names the problem and the fix."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from QEfficient import QEFFAutoModel
from QEfficient.transformers.models.registry import SUPPORTED_ENCODER_MODEL_TYPES, UnsupportedModelError


def test_missing_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        QEFFAutoModel.from_pretrained(tmp_path / "no-such-model")


def test_unknown_hub_id_fails_fast_offline() -> None:
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="not in the HF cache"):
        QEFFAutoModel.from_pretrained("some-org/some-model-that-is-not-cached")
    assert time.perf_counter() - start < 10


def test_unsupported_architecture_lists_supported(tmp_path) -> None:
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError) as info:
        QEFFAutoModel.from_pretrained(tmp_path)
    message = str(info.value)
    assert "'llama'" in message and "QEFFAutoModelForCausalLM" in message
    assert all(t in message for t in SUPPORTED_ENCODER_MODEL_TYPES)
    with pytest.raises(UnsupportedModelError):
        QEFFAutoModel(LlamaForCausalLM(config))


def test_unknown_pooling(tiny_encoder_dirs) -> None:
    with pytest.raises(ValueError, match="Unknown pooling 'median'.*mean, avg, max, cls"):
        QEFFAutoModel.from_pretrained(tiny_encoder_dirs["bert"], pooling="median")


def test_bad_callable_pooling(tiny_encoder_dirs) -> None:
    with pytest.raises(ValueError, match="must return a \\[B, H\\] tensor"):
        QEFFAutoModel.from_pretrained(tiny_encoder_dirs["bert"], pooling=lambda h, m: h)


def test_normalize_without_pooling(tiny_encoder_dirs) -> None:
    with pytest.raises(ValueError, match="normalize=True needs a pooling"):
        QEFFAutoModel.from_pretrained(tiny_encoder_dirs["bert"], normalize=True)


@pytest.fixture(scope="module")
def small_program(tiny_encoder_dirs) -> QEFFAutoModel:
    model = QEFFAutoModel.from_pretrained(tiny_encoder_dirs["bert"], pooling="mean")
    model.compile(seq_len=[8, 16], batch_size=2)
    return model


def test_text_longer_than_compiled(small_program: QEFFAutoModel) -> None:
    long_text = "word " * 40
    with pytest.raises(ValueError, match="more than the largest compiled seq_len 16.*truncate=True"):
        small_program.encode(["short", long_text])
    truncated = small_program.encode(["short", long_text], truncate=True)
    assert truncated.shape == (2, 32)
    ids = small_program.tokenizer(long_text, truncation=True, max_length=16, return_tensors="np")
    direct = small_program.generate(ids, runtime="pytorch")["sentence_embedding"][0]
    torch.testing.assert_close(torch.from_numpy(truncated[1]), torch.from_numpy(direct), atol=1e-5, rtol=0)


def test_empty_list(small_program: QEFFAutoModel) -> None:
    with pytest.raises(ValueError, match="empty list"):
        small_program.encode([])


def test_non_string_input(small_program: QEFFAutoModel) -> None:
    with pytest.raises(TypeError, match="string or a list of strings"):
        small_program.encode([1, 2])


def test_shape_outside_specialisations(small_program: QEFFAutoModel) -> None:
    import numpy as np

    with pytest.raises(ValueError, match="match no compiled specialisation"):
        small_program.program.run({"input_ids": np.ones((3, 5), np.int64), "attention_mask": np.ones((3, 5), np.int64)})


def test_seq_len_beyond_model_limit(tiny_encoder_dirs) -> None:
    model = QEFFAutoModel.from_pretrained(tiny_encoder_dirs["bert"])
    with pytest.raises(ValueError, match="exceeds the model's maximum sequence length 512"):
        model.compile(seq_len=[128, 1024])
    with pytest.raises(ValueError, match="positive int"):
        model.compile(seq_len=0)


def test_generate_before_compile(tiny_encoder_dirs) -> None:
    model = QEFFAutoModel.from_pretrained(tiny_encoder_dirs["bert"])
    with pytest.raises(RuntimeError, match=r"call \.compile"):
        model.generate({"input_ids": [[101, 102]], "attention_mask": [[1, 1]]})


def test_unexportable_attention_is_replaced(tiny_encoder_dirs, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        model = QEFFAutoModel.from_pretrained(tiny_encoder_dirs["bert"], attn_implementation="flash_attention_2")
    assert model.hf_model.config._attn_implementation == "sdpa"
    assert "cannot be exported" in caplog.text
