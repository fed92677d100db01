"""Perplexity by teacher forcing through decode steps equals HF's one-forward perplexity; greedy agreement."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from QEfficient import QEFFAutoModelForCausalLM
from QEfficient.generation.eval_text import EVAL_TEXT
from QEfficient.generation.quality import greedy_agreement, hf_perplexity, perplexity
from tests.tiny_models import tiny_decoder


@pytest.fixture(scope="module")
def compiled(minilm_path: str) -> tuple[QEFFAutoModelForCausalLM, list[int], float]:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    ids = tokenizer(EVAL_TEXT)["input_ids"][:48]
    hf = tiny_decoder("llama")
    reference = hf_perplexity(hf, ids)  # before wrapping: the untouched HF model
    model = QEFFAutoModelForCausalLM(hf)
    model.compile(prefill_seq_len=8, ctx_len=64, batch_size=1)
    return model, ids, reference


def test_perplexity_matches_hf(compiled) -> None:
    model, ids, reference = compiled
    assert len(ids) == 48
    ours = perplexity(model, ids)
    assert ours == pytest.approx(reference, rel=1e-4)
    assert 1.0 < ours < 1e6


def test_too_long_text_is_a_clear_error(compiled) -> None:
    model, ids, _ = compiled
    with pytest.raises(ValueError, match="ctx_len is 64"):
        perplexity(model, (ids * 2)[:64])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(model, ids[:1])


def test_eval_text_is_long_enough(minilm_path: str) -> None:
    words = EVAL_TEXT.split()
    assert 220 <= len(words) <= 300
    assert len(AutoTokenizer.from_pretrained(minilm_path)(EVAL_TEXT)["input_ids"]) > 200


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1, 2, 3, 4], [1, 2, 3, 4], (4, 1.0)),
        ([1, 2, 3, 4], [1, 2, 9, 4], (2, 0.75)),
        ([5, 2, 3, 4], [1, 2, 3, 4], (0, 0.75)),
        ([1, 2, 3, 4], [1, 2], (2, 0.5)),
        ([], [], (0, 1.0)),
        ([7], [], (0, 0.0)),
    ],
)
def test_greedy_agreement(a: list[int], b: list[int], expected: tuple[int, float]) -> None:
    assert greedy_agreement(a, b) == expected
    assert greedy_agreement(b, a) == expected
