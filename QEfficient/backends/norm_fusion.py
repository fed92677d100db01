"""Residual add + RMSNorm as one ONNX Runtime `SkipSimplifiedLayerNormalization`.

A pre-norm decoder layer adds each block's output to the residual stream and normalises the sum for the next block:
`Add(x, y)` then `SimplifiedLayerNormalization(sum, gamma)` once ONNX Runtime's optimiser has recognised the RMSNorm.
`com.microsoft::SkipSimplifiedLayerNormalization` computes both in one kernel, and gives the sum as its fourth
output for the residual stream. ONNX Runtime's own fusion leaves the pair alone when the sum has other readers, which
in a residual stream it always has; this pass runs on the optimised graph instead. The kernel wants its two inputs
of one shape, so a pair is fused only when both inputs have the same fully known shape in the exported graph
(`graph_shapes.inferred_shapes`, taken before the optimiser, which keeps these tensors' names).
"""

from __future__ import annotations

import onnx
from onnx import helper

from QEfficient.backends.graph_edit import set_nodes

CONTRIB_DOMAIN = "com.microsoft"


def fuse_skip_norms(model: onnx.ModelProto, shapes: dict[str, list[int | None]]) -> int:
    """Fuse every `Add` → `SimplifiedLayerNormalization` (last axis) pair of `model` whose add inputs have one known
    shape into a `SkipSimplifiedLayerNormalization` (in place); returns how many."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    constants = {t.name for t in graph.initializer}
    fused: dict[str, onnx.NodeProto] = {}  # add output -> the fused node, which takes the add's place
    dropped: set[str] = set()  # outputs of the norms taken over
    for norm in graph.node:
        if norm.op_type != "SimplifiedLayerNormalization" or norm.domain not in ("", "ai.onnx") or len(norm.input) < 2:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in norm.attribute}
        if attributes.get("axis", -1) != -1 or len(norm.output) > 1 and any(norm.output[1:]):
            continue
        add = producer.get(norm.input[0])
        if add is None or add.op_type != "Add" or add.output[0] in fused or add.output[0] in outputs:
            continue
        if norm.input[1] not in constants:  # the fused node runs where the add did: gamma must be there already
            continue
        first, second = (shapes.get(name) for name in add.input)
        if not first or first != second or None in first:
            continue
        fused[add.output[0]] = helper.make_node(
            "SkipSimplifiedLayerNormalization",
            [add.input[0], add.input[1], norm.input[1]],
            [norm.output[0], "", "", add.output[0]],
            domain=CONTRIB_DOMAIN,
            name=f"{norm.name}.skip",
            epsilon=attributes.get("epsilon", 1e-5),
        )
        dropped.add(norm.output[0])
    if not fused:
        return 0
    set_nodes(graph, (fused.get(node.output[0], node) for node in graph.node if node.output[0] not in dropped))
    if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return len(fused)
