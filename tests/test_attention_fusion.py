"""Fused attention (ONNX Runtime `GroupQueryAttention`) and packed weights: the same numbers as the standard-op graph.

Exact greedy tokens against HF with fusion on (the default) are tests/test_causal_lm.py's; here the fused program is
compared with the unfused one step by step, on ragged rows, and the cases that must not fuse are checked.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from QEfficient import QEFFAutoModelForCausalLM
from QEfficient.backends import open_program
from tests.program_checks import op_counts
from tests.tiny_models import tiny_decoder

PREFILL, CTX = 8, 32


def gqa_attributes(program_dir) -> dict:
    graph = onnx.load(str(program_dir / "model.onnx"), load_external_data=False).graph
    node = next(n for n in graph.node if n.op_type == "GroupQueryAttention")
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def run_steps(program, steps) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Logits of each (input_ids, position_ids) step, and the cache after the last one."""
    batch = steps[0][0].shape[0]
    state = program.new_state({"batch_size": batch, "seq_len": 1})
    logits = [program.run_with_state({"input_ids": i, "position_ids": p}, state)["logits"] for i, p in steps]
    return logits, state.numpy()


def ragged_steps(batch: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two prefill chunks of rows 11 and 3 tokens long (right-padded), then decode steps, one of them with row 1
    idle (position -1)."""
    rng = np.random.default_rng(0)
    lengths = [11, 3][:batch]
    ids = rng.integers(1, 1000, size=(batch, 2 * PREFILL))
    positions = np.full((batch, 2 * PREFILL), -1)
    for row, n in enumerate(lengths):
        positions[row, :n] = np.arange(n)
    steps = [(ids[:, c : c + PREFILL], positions[:, c : c + PREFILL]) for c in (0, PREFILL)]
    for t in range(4):
        decode_positions = np.array([[n + t] for n in lengths])
        if t == 2 and batch > 1:
            decode_positions[1, 0] = -1
        steps.append((rng.integers(1, 1000, size=(batch, 1)), decode_positions))
    return steps


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma2", "phi3"])
def test_fused_program_matches_standard_ops(model_type: str) -> None:
    """Rotary in the kernel (llama, phi3's packed QKV), biases (qwen2), sliding windows and softcapping (gemma2)."""
    model = QEFFAutoModelForCausalLM(tiny_decoder(model_type))
    fused_dir = model.compile(prefill_seq_len=PREFILL, ctx_len=CTX, batch_size=2)
    assert model.program.manifest["fused_attention"] == ["past_key.0", "past_key.1"]
    assert "ScatterElements" not in op_counts(fused_dir) and op_counts(fused_dir)["GroupQueryAttention"] == 2
    plain_dir = model.compile(
        prefill_seq_len=PREFILL, ctx_len=CTX, batch_size=2, fuse_attention=False, pack_weights=False
    )
    assert model.program.manifest["fused_attention"] == [] and "GroupQueryAttention" not in op_counts(plain_dir)

    steps = ragged_steps()
    fused_logits, fused_cache = run_steps(open_program(fused_dir), steps)
    plain_logits, plain_cache = run_steps(open_program(plain_dir), steps)
    valid = [(row >= 0).any(axis=1) for _, row in steps]  # rows with a token in the step; the others are padding
    for got, expected, rows in zip(fused_logits, plain_logits, valid):
        np.testing.assert_allclose(got[rows], expected[rows], atol=2e-5, rtol=1e-5)
    for row, written in enumerate([11 + 4, 3 + 2]):  # row 1 was idle in its third decode step
        for name in fused_cache:
            np.testing.assert_allclose(
                fused_cache[name][row, :, :written], plain_cache[name][row, :, :written], atol=2e-5, rtol=1e-5
            )


def test_rotary_packed_projections_and_norms_are_fused() -> None:
    model = QEFFAutoModelForCausalLM(tiny_decoder("llama"))
    program_dir = model.compile(prefill_seq_len=PREFILL, ctx_len=CTX)
    attributes = gqa_attributes(program_dir)
    assert attributes["do_rotary"] == 1 and attributes["num_heads"] == 4 and attributes["kv_num_heads"] == 2
    ops = op_counts(program_dir)
    # per layer: the packed QKV and gate/up MatMuls, o_proj, down_proj; plus the LM head. No rotary, no cache scatter
    assert ops["MatMul"] + ops["FusedMatMul"] == 2 * 4 + 1
    assert not {"Neg", "Slice", "ScatterElements", "Softmax"} & set(ops)
    # every residual add and the RMSNorm after it are one kernel (all but the first norm, which reads the embedding)
    assert ops["SkipSimplifiedLayerNormalization"] == 4 and ops["SimplifiedLayerNormalization"] == 1
    assert model.program.in_place_state == set(model.program.state_names())


def test_fused_program_refuses_positions_it_cannot_compute() -> None:
    model = QEFFAutoModelForCausalLM(tiny_decoder("llama"))
    model.compile(prefill_seq_len=PREFILL, ctx_len=CTX)
    program = model.program
    state = program.new_state({"batch_size": 1, "seq_len": PREFILL})
    ids = np.ones((1, PREFILL), dtype=np.int64)
    left_padded = np.array([[-1, -1, -1, 0, 1, 2, 3, 4]])
    with pytest.raises(ValueError, match="row 0 is .*valid tokens first, at consecutive positions"):
        program.run_with_state({"input_ids": ids, "position_ids": left_padded}, state)
    gap = np.array([[0, 1, 2, 4, -1, -1, -1, -1]])
    with pytest.raises(ValueError, match="fuse_attention=False"):
        program.run_with_state({"input_ids": ids, "position_ids": gap}, state)
    with pytest.raises(ValueError, match="out of range for the cache of ctx_len 32"):
        program.run_with_state({"input_ids": ids[:, :1], "position_ids": np.array([[CTX]])}, state)


@pytest.mark.parametrize(
    "compile_args, reason",
    [
        ({"ctx_len": 30}, "ctx_len not a multiple of prefill_seq_len"),
        ({"fuse_attention": False}, "turned off"),
    ],
)
def test_graphs_that_keep_standard_attention(compile_args: dict, reason: str) -> None:
    model = QEFFAutoModelForCausalLM(tiny_decoder("llama"))
    model.compile(prefill_seq_len=PREFILL, **{"ctx_len": CTX, **compile_args})
    assert model.program.manifest["fused_attention"] == [], reason
    assert model.program.in_place_state == set(model.program.state_names())  # the scatters still write in place


def test_bad_fusion_options() -> None:
    model = QEFFAutoModelForCausalLM(tiny_decoder("llama"))
    with pytest.raises(ValueError, match="fuse_attention must be True or False; got 'yes'"):
        model.compile(prefill_seq_len=PREFILL, ctx_len=CTX, fuse_attention="yes")
    with pytest.raises(ValueError, match="pack_weights must be True or False; got 1"):
        model.compile(prefill_seq_len=PREFILL, ctx_len=CTX, pack_weights=1)


def test_packed_weights_give_the_same_outputs() -> None:
    model = QEFFAutoModelForCausalLM(tiny_decoder("llama"))
    steps = ragged_steps(batch=1)
    packed_dir = model.compile(prefill_seq_len=PREFILL, ctx_len=CTX, fuse_attention=False)
    assert op_counts(packed_dir)["Split"] == 4  # QKV and gate/up of each layer
    separate_dir = model.compile(prefill_seq_len=PREFILL, ctx_len=CTX, fuse_attention=False, pack_weights=False)
    assert "Split" not in op_counts(separate_dir)
    for got, expected in zip(
        run_steps(open_program(packed_dir), steps)[0], run_steps(open_program(separate_dir), steps)[0]
    ):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_continuous_batching_runs_the_kernel_on_every_cache_row() -> None:
    """With `batch_index` the step's rows are placed at their cache rows, the kernel runs on all of them (the others
    get no tokens and are left alone) and the step's rows of its output come back: a one-row prefill into cache row 2
    of 3, then a decode step of all three rows with one idle."""
    model = QEFFAutoModelForCausalLM(tiny_decoder("llama"), continuous_batching=True)
    fused_dir = model.compile(prefill_seq_len=PREFILL, ctx_len=CTX, full_batch_size=3)
    assert model.program.manifest["fused_attention"] == ["past_key.0", "past_key.1"]
    plain_dir = model.compile(prefill_seq_len=PREFILL, ctx_len=CTX, full_batch_size=3, fuse_attention=False)
    rng = np.random.default_rng(1)
    steps = []
    for row, length in ((2, 5), (0, 8)):
        positions = np.full((1, PREFILL), -1)
        positions[0, :length] = np.arange(length)
        steps.append(({"input_ids": rng.integers(1, 1000, (1, PREFILL)), "position_ids": positions}, [[row]]))
    decode = {"input_ids": rng.integers(1, 1000, (3, 1)), "position_ids": np.array([[8], [-1], [5]])}
    steps.append((decode, [[0], [1], [2]]))
    results = []
    for program_dir in (fused_dir, plain_dir):
        program = open_program(program_dir)
        state = program.new_state({"batch_size": 3, "seq_len": 1, "full_batch_size": 3})
        logits = [
            program.run_with_state({**inputs, "batch_index": np.array(rows)}, state)["logits"] for inputs, rows in steps
        ]
        results.append((logits, state.numpy()))
    (fused_logits, fused_cache), (plain_logits, plain_cache) = results
    for got, expected in zip(fused_logits[:2], plain_logits[:2]):
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(fused_logits[2][[0, 2]], plain_logits[2][[0, 2]], atol=2e-5, rtol=1e-5)
    for name in fused_cache:
        for row, written in ((0, 9), (2, 6)):
            np.testing.assert_allclose(
                fused_cache[name][row, :, :written], plain_cache[name][row, :, :written], atol=2e-5, rtol=1e-5
            )
        assert not fused_cache[name][1].any()  # the row no step used is untouched
