"""Large constant MatMul weights split into column blocks: `compile(..., split_weights_mb=16)`.

ONNX Runtime reads each weight from the external data file (memory-mapped) and then pre-packs it into its own
buffer; while it packs one tensor, both copies are resident. The largest tensor therefore sets the peak memory of
opening a program above what it holds afterwards: SmolLM2-135M's LM head, `[576, 49152]` fp32, is 113 MB, which a
generate run's peak carries on top of the 538 MB of weights. A MatMul whose weight is larger than the limit becomes
one MatMul per block of output columns and a Concat of their outputs. Each output column is still the same dot
product over the same reduction axis, so the results are unchanged; only the peak of opening the program drops.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from QEfficient.backends.graph_edit import set_nodes, write_with_weights

DEFAULT_SPLIT_WEIGHTS_MB = 16


def _oversized(model: onnx.ModelProto, max_bytes: int) -> dict[str, onnx.TensorProto]:
    """Weights (by name) of MatMuls to split: 2-D constants over `max_bytes` that only that MatMul reads."""
    initializers = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    found = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        weight = initializers[node.input[1]]
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(weight.data_type).itemsize
        if len(weight.dims) == 2 and math.prod(weight.dims) * itemsize > max_bytes and readers[weight.name] == 1:
            found[weight.name] = weight
    return found


def split_large_weights(source: Path, target: Path, max_mb: float) -> Path | None:
    """Write `source` with every MatMul weight over `max_mb` MB split into column blocks into `target`
    (`model.onnx` + `model.onnx.data`) and return its path; None (nothing written) if no weight is that large."""
    max_bytes = int(max_mb * 1e6)
    if not _oversized(onnx.load(str(source), load_external_data=False), max_bytes):
        return None
    model = onnx.load(str(source))
    oversized = _oversized(model, max_bytes)
    nodes = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in oversized:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(oversized[node.input[1]])
        blocks = np.array_split(np.arange(weight.shape[1]), math.ceil(weight.nbytes / max_bytes))
        outputs = []
        for i, columns in enumerate(blocks):
            name = f"{node.input[1]}.columns{i}"
            block = np.ascontiguousarray(weight[:, columns[0] : columns[-1] + 1])
            model.graph.initializer.append(numpy_helper.from_array(block, name))
            outputs.append(f"{node.output[0]}.columns{i}")
            block_node = helper.make_node("MatMul", [node.input[0], name], outputs[-1:], name=f"{node.name}.columns{i}")
            nodes.append(block_node)
        nodes.append(helper.make_node("Concat", outputs, list(node.output), axis=-1, name=f"{node.name}.concat"))
    set_nodes(model.graph, nodes, [t for t in model.graph.initializer if t.name not in oversized])
    return write_with_weights(model, target)
