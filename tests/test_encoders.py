"""Every supported encoder family, on a tiny random config: HF ≡ transformed ≡ ONNX Runtime ≡ compiled (1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from QEfficient import QEFFAutoModel, validate
from QEfficient.transformers.embeddings.pooling import POOLING_FUNCTIONS
from tests.tiny_models import ENCODER_TYPES

SENTENCES = [
    "Hello world.",
    "A considerably longer sentence, so that the batch is padded: the quick brown fox jumps over the lazy dog.",
    "x",
    "Short one here.",
]


@pytest.mark.parametrize("model_type", ENCODER_TYPES)
@pytest.mark.parametrize("pooling", [None, "mean"])
def test_family_matches_hf(model_type: str, pooling: str | None, tiny_encoder_dirs) -> None:
    model = QEFFAutoModel.from_pretrained(tiny_encoder_dirs[model_type], pooling=pooling, normalize=pooling is not None)
    report = validate(model, sentences=SENTENCES, seq_len=[16, 32])
    print(report.table())
    assert [s.stage for s in report.stages] == ["HF PyTorch", "transformed PyTorch", "ONNX Runtime", "compiled program"]
    assert report.passed, report.table()


@pytest.mark.parametrize("pooling", ["max", "cls", "avg"])
def test_pooling_modes_match_reference(pooling: str, tiny_encoder_dirs) -> None:
    folder = tiny_encoder_dirs["bert"]
    model = QEFFAutoModel.from_pretrained(folder, pooling=pooling)
    model.compile(seq_len=[8, 32], batch_size=[1, 4])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hf = AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**batch).last_hidden_state
    mask = batch["attention_mask"]
    expected = {
        "max": torch.stack([h[m.bool()].max(0).values for h, m in zip(hidden, mask)]),
        "cls": hidden[:, 0],
        "avg": torch.stack([h[m.bool()].mean(0) for h, m in zip(hidden, mask)]),
    }[pooling].numpy()
    np.testing.assert_allclose(model.encode(SENTENCES), expected, atol=1e-5, rtol=0)
    assert POOLING_FUNCTIONS[pooling] is model.model.pooling


def test_callable_pooling_is_in_the_graph(tiny_encoder_dirs) -> None:
    def first_plus_last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        last = (mask.sum(1) - 1).clamp(min=0)
        return hidden[:, 0] + hidden[torch.arange(hidden.shape[0]), last]

    folder = tiny_encoder_dirs["bert"]
    model = QEFFAutoModel.from_pretrained(folder, pooling=first_plus_last, normalize=True)
    report = validate(model, sentences=SENTENCES, seq_len=[32])
    assert report.passed, report.table()
    assert "first_plus_last" in repr(model)


def test_hidden_states_without_pooling(tiny_encoder_dirs) -> None:
    folder = tiny_encoder_dirs["roberta"]
    model = QEFFAutoModel.from_pretrained(folder)
    model.compile(seq_len=[16, 64], batch_size=2)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    out = model.generate(batch)["last_hidden_state"]
    assert out.shape == (*batch["input_ids"].shape, 32)
    hf = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = hf(**tokenizer(SENTENCES, padding=True, return_tensors="pt")).last_hidden_state.numpy()
    valid = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(out[valid], expected[valid], atol=1e-5, rtol=0)
    tokens = model.encode(SENTENCES)
    assert [t.shape[0] for t in tokens] == batch["attention_mask"].sum(1).tolist()
    np.testing.assert_allclose(tokens[1], expected[1][valid[1]], atol=1e-5, rtol=0)


def test_pytorch_runtime_matches_compiled(tiny_encoder_dirs) -> None:
    folder = tiny_encoder_dirs["distilbert"]
    model = QEFFAutoModel.from_pretrained(folder, pooling="mean")
    model.compile(seq_len=32, batch_size=4)
    batch = AutoTokenizer.from_pretrained(folder)(SENTENCES, padding=True, return_tensors="np")
    compiled = model.generate(batch)["sentence_embedding"]
    eager = model.generate(batch, runtime="pytorch")["sentence_embedding"]
    np.testing.assert_allclose(compiled, eager, atol=1e-5, rtol=0)


def test_dynamic_seq_len_pads_only_to_the_longest(tiny_encoder_dirs) -> None:
    folder = tiny_encoder_dirs["bert"]
    model = QEFFAutoModel.from_pretrained(folder, pooling="mean", normalize=True)
    model.compile(seq_len="dynamic", batch_size=[1, 4])
    assert model.dynamic_seq_len and model.compiled_seq_lens == [512]
    report = validate(model, sentences=SENTENCES)
    assert report.passed, report.table()
    fixed = QEFFAutoModel.from_pretrained(folder, pooling="mean", normalize=True)
    fixed.compile(seq_len=[64], batch_size=4)
    np.testing.assert_allclose(model.encode(SENTENCES), fixed.encode(SENTENCES), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="positive int"):
        model.compile(seq_len="fixed")


def test_attention_implementation_is_part_of_the_cache_key(tiny_encoder_dirs) -> None:
    folder = tiny_encoder_dirs["bert"]
    eager = QEFFAutoModel.from_pretrained(folder, pooling="mean")
    sdpa = QEFFAutoModel.from_pretrained(folder, pooling="mean", attn_implementation="sdpa")
    assert eager.hf_model.config._attn_implementation == "eager"
    assert eager.model_hash != sdpa.model_hash
    assert eager.export() != sdpa.export()
