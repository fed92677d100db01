"""Weight-only quantisation at compile time (`weights="int8" | "int4"`): the compiled graphs use ONNX Runtime's
block-quantised ops and stay close to fp32; bad options fail with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from QEfficient import QEFFAutoModel, QEFFAutoModelForCausalLM
from tests.program_checks import PROMPT, last_logits, op_counts
from tests.tiny_models import tiny_decoder


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def llama() -> QEFFAutoModelForCausalLM:
    return QEFFAutoModelForCausalLM(tiny_decoder("llama"))


def test_causal_lm_int8_and_int4_stay_close_to_fp32(llama: QEFFAutoModelForCausalLM) -> None:
    llama.compile(prefill_seq_len=16, ctx_len=64)
    reference = last_logits(llama)
    fp32_ops = op_counts(llama.program_path)
    weight_matmuls = fp32_ops.get("MatMul", 0) + fp32_ops.get("FusedMatMul", 0)

    # Tiny random weights are the worst case for 4 bits (no outliers, no structure): the test checks that each
    # precision is near fp32 and int8 nearer than int4; quality on real weights is tests/test_smollm2.py's.
    similarities = {}
    for weights, least in (("int8", 0.99), ("int4", 0.7)):
        llama.compile(prefill_seq_len=16, ctx_len=64, weights=weights)
        ops = op_counts(llama.program_path)
        # attention is fused (GroupQueryAttention), so every MatMul left multiplies by a weight, and all are quantised
        assert llama.program.manifest["fused_attention"] and ops.get("MatMulNBits", 0) == weight_matmuls
        assert ("GatherBlockQuantized" in ops) == (weights == "int4")  # int4 embeddings; int8 keeps fp32 ones
        assert llama.program.manifest["options"]["weights"] == weights
        similarities[weights] = cosine(last_logits(llama), reference)
        assert similarities[weights] >= least
        out = llama.generate(None, [PROMPT], generation_len=8)
        assert len(out.generated_ids[0]) == 8
    assert similarities["int8"] > similarities["int4"]


def test_bad_weight_options_are_clear_errors(llama: QEFFAutoModelForCausalLM) -> None:
    with pytest.raises(ValueError, match="weights must be one of fp32, int8, int4; got 'int3'"):
        llama.compile(prefill_seq_len=16, ctx_len=64, weights="int3")
    with pytest.raises(ValueError, match="block_size must be a power of two >= 16"):
        llama.compile(prefill_seq_len=16, ctx_len=64, weights="int4", block_size=20)
    with pytest.raises(ValueError, match=r"Unknown ONNX Runtime compile option\(s\) \['mxfp6'\]"):
        llama.compile(prefill_seq_len=16, ctx_len=64, mxfp6=True)


def test_encoder_int8_embeddings(tiny_encoder_dirs) -> None:
    model = QEFFAutoModel.from_pretrained(str(tiny_encoder_dirs["bert"]), pooling="mean", normalize=True)
    sentences = ["a first sentence", "and a somewhat longer second sentence"]
    reference = model.encode(sentences)
    model.compile(seq_len=[16], batch_size=2, weights="int8")
    quantised = model.encode(sentences, batch_size=2)
    ops = op_counts(model.program_path)  # an encoder's int8 is dynamic int8 (tests/test_encoder_int8.py)
    assert ops.get("DynamicQuantizeMatMul", 0) + ops.get("MatMulInteger", 0) > 0
    assert min(cosine(a, b) for a, b in zip(quantised, reference)) >= 0.99
