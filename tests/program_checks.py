"""What several test files check on a compiled causal LM: the op types of its graph and its logits after a prompt."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx

from QEfficient import QEFFAutoModelForCausalLM

PROMPT = [5, 17, 42, 8, 99, 23, 64, 11, 7, 30]


def op_counts(program_dir: Path) -> collections.Counter:
    """How many nodes of each op type the compiled program's graph has."""
    graph = onnx.load(str(program_dir / "model.onnx"), load_external_data=False).graph
    return collections.Counter(node.op_type for node in graph.node)


def last_logits(model: QEFFAutoModelForCausalLM) -> np.ndarray:
    """Logits after prefilling PROMPT (one chunk) on the compiled program."""
    program = model.program
    state = program.new_state({"batch_size": 1, "seq_len": 1})
    ids = np.array([PROMPT + [0] * (16 - len(PROMPT))])
    positions = np.array([list(range(len(PROMPT))) + [-1] * (16 - len(PROMPT))])
    return program.run_with_state({"input_ids": ids, "position_ids": positions}, state)["logits"][0, -1]
