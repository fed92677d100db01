"""Weights already on a quantisation grid (a GGUF checkpoint's Q4_1 / Q4_0 / Q8_0 blocks, dequantised to fp32) are
kept on it exactly by `compile(weights="int4" | "int8")` (`QEfficient/backends/exact_grids.py`), and weights that
never were quantised are left to the quantiser."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from QEfficient import QEFFAutoModelForCausalLM
from QEfficient.backends.exact_grids import affine_4bit_grid, keep_exact_grids, symmetric_8bit_grid
from tests.program_checks import PROMPT, last_logits, op_counts
from tests.tiny_models import tiny_decoder

BLOCK = 32


def q4_1(w: np.ndarray) -> np.ndarray:
    """`w` [rows, K] on GGUF Q4_1's grid, as llama.cpp quantises and transformers dequantises it: per block of 32
    along a row, fp16 d = (max - min) / 15 and m = min, w = m + d * q with q in 0..15."""
    blocks = w.reshape(w.shape[0], -1, BLOCK)
    low, high = blocks.min(axis=-1, keepdims=True), blocks.max(axis=-1, keepdims=True)
    d = ((high - low) / 15).astype(np.float16).astype(np.float32)
    m = low.astype(np.float16).astype(np.float32)
    q = np.clip(np.rint((blocks - low) / np.where(d > 0, d, 1)), 0, 15)
    return (m + d * q).reshape(w.shape).astype(np.float32)


def q4_0(w: np.ndarray) -> np.ndarray:
    """GGUF Q4_0: w = d * (q - 8), d = (the signed value of largest magnitude) / -8, q in 0..15."""
    blocks = w.reshape(w.shape[0], -1, BLOCK)
    extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)
    d = (extreme / -8).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint(blocks / np.where(d != 0, d, 1)) + 8, 0, 15)
    return (d * (q - 8)).reshape(w.shape).astype(np.float32)


def q8_0(w: np.ndarray) -> np.ndarray:
    """GGUF Q8_0: w = d * q, d = max |w| / 127 (fp16), q integer in [-127, 127]."""
    blocks = w.reshape(w.shape[0], -1, BLOCK)
    d = (np.abs(blocks).max(axis=-1, keepdims=True) / 127).astype(np.float16).astype(np.float32)
    return (d * np.rint(blocks / np.where(d > 0, d, 1))).reshape(w.shape).astype(np.float32)


def test_grids_are_found_and_ordinary_weights_are_not() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(48, 128)).astype(np.float32)  # [rows, K]: blocks run along K

    def blocks(matrix: np.ndarray) -> np.ndarray:  # as the graph holds it: [K, rows] -> [K / 32, 32, rows]
        return matrix.T.reshape(-1, BLOCK, matrix.shape[0])

    for snapped in (q4_1(w), q4_0(w)):
        q, step, low = affine_4bit_grid(blocks(snapped))
        assert np.array_equal(low[:, None] + step[:, None] * q, blocks(snapped))
    q8, scale = symmetric_8bit_grid(blocks(q8_0(w)))
    assert np.array_equal((q8.astype(np.float32) - 128) * scale[:, None], blocks(q8_0(w)))
    assert affine_4bit_grid(blocks(w)) is None and symmetric_8bit_grid(blocks(w)) is None
    assert affine_4bit_grid(blocks(q8_0(w))) is None  # 8-bit data has more than 16 levels per block
    nearly = q4_1(w) + 1e-3 * rng.normal(size=w.shape).astype(np.float32)
    assert affine_4bit_grid(blocks(nearly)) is None


def matmul_bits(model: QEFFAutoModelForCausalLM) -> list[int]:
    """The `bits` of every MatMulNBits of the compiled program, sorted."""
    graph = onnx.load(str(model.program_path / "model.onnx"), load_external_data=False).graph
    return sorted(next(a.i for a in n.attribute if a.name == "bits") for n in graph.node if n.op_type == "MatMulNBits")


@pytest.fixture(scope="module")
def gguf_like() -> tuple[QEFFAutoModelForCausalLM, torch.nn.Module]:
    """A tiny llama whose linear layers are on Q4_1's grid (one on Q4_0's) and embedding and LM head on Q8_0's."""
    hf = tiny_decoder("llama")
    with torch.no_grad():
        for name, module in hf.named_modules():
            if isinstance(module, torch.nn.Linear):
                snap = q8_0 if name == "lm_head" else q4_0 if name.endswith("layers.0.mlp.down_proj") else q4_1
                module.weight.copy_(torch.from_numpy(snap(module.weight.numpy())))
        table = hf.model.embed_tokens.weight
        table.copy_(torch.from_numpy(q8_0(table.numpy())))
    return QEFFAutoModelForCausalLM(hf), hf


def test_int4_keeps_gguf_grids_exactly(gguf_like) -> None:
    model, hf = gguf_like
    model.compile(prefill_seq_len=16, ctx_len=64)
    reference = last_logits(model)
    errors = {}
    for exact in (False, True):
        # fp32 compute (accuracy_level=0), so that the difference is the weights' alone
        model.compile(prefill_seq_len=16, ctx_len=64, weights="int4", accuracy_level=0, exact_grids=exact)
        errors[exact] = np.abs(last_logits(model) - reference).max() / np.abs(reference).max()
    ops, bits = op_counts(model.program_path), matmul_bits(model)
    # 2 layers x 4 packed MatMuls: 7 on Q4_1 (each with its block sums: a 4-bit MatMulNBits and a Concat), one on
    # Q4_0 (offsets in whole steps: no extra rows); the LM head and the embedding table at 8 bits
    assert bits == [4] * (7 + 7 + 1) + [8] and ops["Concat"] >= 7 and ops["GatherBlockQuantized"] == 1
    assert errors[True] < 5e-4 and errors[False] > 0.1, errors  # measured: 5e-5 and 0.7

    # with int8 compute (the default) the tokens are HF's on these weights
    model.compile(prefill_seq_len=16, ctx_len=64, weights="int4")
    assert model.program.manifest["options"]["exact_grids"] is True
    ids = torch.tensor([PROMPT])
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    out = model.generate(None, [PROMPT], generation_len=16)
    assert out.generated_ids[0] == expected[0, len(PROMPT) :].tolist()


def test_int8_keeps_8bit_grids_and_leaves_4bit_ones_to_the_quantiser(gguf_like) -> None:
    model, _ = gguf_like
    model.compile(prefill_seq_len=16, ctx_len=64, weights="int8")
    # the Q8_0 table and LM head kept, the 8 Q4_1 / Q4_0 MatMuls quantised to 8 bits (no offset rows)
    assert op_counts(model.program_path)["GatherBlockQuantized"] == 1 and matmul_bits(model) == [8] * 9


def test_weights_never_quantised_are_left_to_the_quantiser() -> None:
    model = QEFFAutoModelForCausalLM(tiny_decoder("llama"))
    graph = onnx.load(str(model.export()))
    assert not keep_exact_grids(graph, bits=4, block=BLOCK, accuracy_level=4)


def test_exact_grids_must_be_a_bool(gguf_like) -> None:
    model, _ = gguf_like
    with pytest.raises(ValueError, match="exact_grids must be True or False; got 'yes'"):
        model.compile(prefill_seq_len=16, ctx_len=64, weights="int4", exact_grids="yes")


def test_cli_requantize_sets_exact_grids_false() -> None:
    from QEfficient.cli.main import _weights, build_parser

    parser = build_parser()
    assert _weights(parser.parse_args(["infer", "--weights", "int4"]))["exact_grids"] is True
    assert _weights(parser.parse_args(["infer", "--weights", "int4", "--requantize"]))["exact_grids"] is False
    assert _weights(parser.parse_args(["compile", "--weights", "int8", "--requantize"]))["exact_grids"] is False
    with pytest.raises(ValueError, match="--requantize applies to quantised weights: add --weights int4"):
        _weights(parser.parse_args(["infer", "--requantize"]))
