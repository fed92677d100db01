"""Large MatMul weights split into column blocks at compile time (`split_weights_mb`): the program gives the same
logits and tokens, and its biggest weight is under the limit."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from QEfficient import QEFFAutoModelForCausalLM
from tests.program_checks import PROMPT, last_logits, op_counts
from tests.tiny_models import tiny_decoder


def largest_matmul_weight(program_dir) -> int:
    graph = onnx.load(str(program_dir / "model.onnx"), load_external_data=False).graph
    weights = {t.name: math.prod(t.dims) * 4 for t in graph.initializer}
    return max(weights.get(n.input[1], 0) for n in graph.node if n.op_type in ("MatMul", "FusedMatMul"))


def test_split_weights_give_the_same_program_output() -> None:
    model = QEFFAutoModelForCausalLM(tiny_decoder("llama"))
    whole = model.compile(prefill_seq_len=16, ctx_len=32, split_weights_mb=0)
    reference, tokens = last_logits(model), model.generate(prompts=[PROMPT], generation_len=8).generated_ids
    whole_ops, biggest = op_counts(whole), largest_matmul_weight(whole)

    limit_mb = biggest / 3 / 1e6  # every weight over a third of the largest is split
    split = model.compile(prefill_seq_len=16, ctx_len=32, split_weights_mb=limit_mb)
    assert split != whole
    assert largest_matmul_weight(split) <= limit_mb * 1e6
    assert op_counts(split)["Concat"] > whole_ops["Concat"]
    np.testing.assert_allclose(last_logits(model), reference, rtol=0, atol=1e-6)
    assert model.generate(prompts=[PROMPT], generation_len=8).generated_ids == tokens


def test_split_weights_option_is_checked() -> None:
    model = QEFFAutoModelForCausalLM(tiny_decoder("llama"))
    with pytest.raises(ValueError, match="split_weights_mb must be a number of MB >= 0"):
        model.compile(prefill_seq_len=16, ctx_len=32, split_weights_mb=-1)
