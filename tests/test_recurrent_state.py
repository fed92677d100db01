"""Retained recurrent state (docs/recurrent_state.md): state-space and linear-attention models on tiny random
configs, greedy tokens equal to HF `generate` through the prefill and decode graphs."""

from __future__ import annotations

import onnx
import pytest
from transformers import AutoModelForCausalLM

from QEfficient import QEFFAutoModelForCausalLM
from QEfficient.sweep.checks import build_tiny, sweep_prompts
from QEfficient.validation import _hf_greedy, validate_causal_lm

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    long, short = sweep_prompts()  # 17 and 5 token ids
    return [long, short, long[3:12]]


def tiny(model_type: str):
    return build_tiny(AutoModelForCausalLM, model_type)[1]


def test_mamba_graphs_and_single_chunk_prefill(prompts) -> None:
    """Mamba-1's scan cannot continue from a stored state: two graphs, prompts prefilled in one chunk."""
    hf = tiny("mamba")
    expected = [_hf_greedy(hf, p, NEW_TOKENS) for p in prompts]
    model = QEFFAutoModelForCausalLM(hf)
    assert model.model.has_recurrent_state and not model.model.prefill_continues
    model.compile(prefill_seq_len=20, ctx_len=64, batch_size=2)
    assert set(model.onnx_paths) == {"prefill", "decode"}
    graph = onnx.load(str(model.onnx_paths["decode"]), load_external_data=False)
    names = [i.name for i in graph.graph.input]
    assert names[:4] == ["input_ids", "position_ids", "past_conv.0", "past_recurrent.0"]
    assert "past_recurrent.0_RetainedState" in [o.name for o in graph.graph.output]
    assert "past_key.0" not in names  # no attention layer, no KV cache

    out = model.generate(None, prompts, generation_len=NEW_TOKENS)  # rows of 17 and 5, then 9: left-padded to 20
    assert out.generated_ids == expected

    model.compile(prefill_seq_len=8, ctx_len=64, batch_size=1)
    with pytest.raises(ValueError, match=r"Prompt 0 has 17 tokens but prefill_seq_len is 8.*prefill_seq_len >= 17"):
        model.generate(None, prompts[:1], generation_len=4)
    assert model.generate(None, prompts[1:2], generation_len=NEW_TOKENS).generated_ids == expected[1:2]
    with pytest.raises(ValueError, match=r"recurrent state.*give one prefill_seq_len, not \[8, 20\]"):
        model.compile(prefill_seq_len=(8, 20), ctx_len=64)


def test_mamba2_chunked_prefill_and_continuous_batching(prompts) -> None:
    """Mamba2's SSD scan continues from a stored state: prompts longer than prefill_seq_len run in chunks, and the
    prefill graph scatters one prompt's state into a continuous-batching slot."""
    hf = tiny("mamba2")
    expected = [_hf_greedy(hf, p, NEW_TOKENS) for p in prompts]
    model = QEFFAutoModelForCausalLM(hf)
    assert model.model.prefill_continues
    model.compile(prefill_seq_len=4, ctx_len=64, batch_size=2)
    assert model.generate(None, prompts[:2], generation_len=NEW_TOKENS).generated_ids == expected[:2]

    batched = QEFFAutoModelForCausalLM(hf, continuous_batching=True)
    batched.compile(prefill_seq_len=4, ctx_len=64, full_batch_size=2)
    assert batched.generate(None, prompts, generation_len=NEW_TOKENS).generated_ids == expected


@pytest.mark.parametrize("model_type", ["falcon_h1", "qwen3_next"])
def test_hybrids_validate_in_every_stage(model_type: str, prompts) -> None:
    """A parallel hybrid (KV cache and state in one layer) and a gated-delta-rule hybrid (`solve_triangular`):
    HF == transformed PyTorch == ONNX Runtime == compiled program, chunked prefill included."""
    report = validate_causal_lm(QEFFAutoModelForCausalLM(tiny(model_type)), prompts[:2], generation_len=NEW_TOKENS)
    assert report.passed, report.table()
