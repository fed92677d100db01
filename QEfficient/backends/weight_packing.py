"""MatMuls that read the same input packed into one: `compile(..., pack_weights=True)`.

A transformer layer multiplies one normalised hidden state by several weights: the query, key and value projections,
and the gate and up projections of a gated MLP. Each MatMul is a separate kernel launch that streams its own weight;
on a CPU, where a decode step is a few hundred such launches, fewer and larger ones use the cores better (measured
with int4 weights, whose MatMuls are short). The weights of MatMuls that share their input (and their reduction size)
are concatenated along the output columns into one MatMul, followed by a Split into the original outputs. Every
output column is still the same dot product over the same inputs, and block-wise quantisation quantises each column
on its own, so the results are unchanged. A packed query/key/value projection is also what fused attention reads as
one packed input (`attention_fusion.py`), without the Split.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from QEfficient.backends.graph_edit import set_nodes, write_with_weights


def _groups(model: onnx.ModelProto) -> list[list[onnx.NodeProto]]:
    """MatMuls to pack: per input, those whose weight is a 2-D fp32 constant read by that MatMul alone, when there
    are at least two with the same reduction size."""
    initializers = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        for name in node.input:
            readers[name] += 1
    by_input: dict[tuple[str, int], list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in initializers:
            continue
        weight = initializers[node.input[1]]
        if len(weight.dims) == 2 and weight.data_type == TensorProto.FLOAT and readers[weight.name] == 1:
            by_input[(node.input[0], weight.dims[0])].append(node)
    return [nodes for nodes in by_input.values() if len(nodes) > 1]


def pack_weights(source: Path, target: Path) -> Path | None:
    """Write `source` with every group of MatMuls that share an input packed into one MatMul and a Split into `target`
    (`model.onnx` + `model.onnx.data`) and return its path; None (nothing written) if no MatMuls share an input."""
    if not _groups(onnx.load(str(source), load_external_data=False)):
        return None
    model = onnx.load(str(source))
    initializers = {t.name: t for t in model.graph.initializer}
    replaced: dict[str, list[onnx.NodeProto]] = {}  # first MatMul of a group (by output) -> its packed nodes
    dropped = set()
    for group in _groups(model):
        first = group[0]
        weights = [numpy_helper.to_array(initializers[node.input[1]]) for node in group]
        packed_name = f"{first.input[1]}.packed"
        sizes_name = f"{packed_name}.split"
        model.graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), packed_name))
        model.graph.initializer.append(numpy_helper.from_array(np.array([w.shape[1] for w in weights]), sizes_name))
        packed_output = f"{first.output[0]}.packed"
        replaced[first.output[0]] = [
            helper.make_node("MatMul", [first.input[0], packed_name], [packed_output], name=f"{first.name}.packed"),
            helper.make_node(
                "Split", [packed_output, sizes_name], [n.output[0] for n in group], axis=-1, name=f"{first.name}.split"
            ),
        ]
        dropped.update(node.output[0] for node in group)
    nodes = []
    for node in model.graph.node:
        nodes += replaced.get(node.output[0], [])
        if node.output[0] not in dropped:
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    set_nodes(model.graph, nodes, [t for t in model.graph.initializer if t.name in used])
    return write_with_weights(model, target)
