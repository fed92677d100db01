"""Tensor shapes of an exported graph, for the graph rewrites that must check them (`attention_fusion.py`,
`norm_fusion.py`).

ONNX shape inference leaves most dims of a dynamic graph unknown: they are computed from the input shapes at run
time. Giving each symbolic input dim a distinct sentinel size lets data-propagating inference resolve them (the number
of query heads of a `view(B, S, -1, D)`, say), and a dim equal to a sentinel is then known to be that symbol.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

# Distinct sizes given to the graph's symbolic dims, so that an inferred size can be told apart.
_SENTINELS = (1009, 1013, 1019, 1021, 1031, 1033, 1039, 1049)


def inferred_shapes(model: onnx.ModelProto) -> tuple[dict[str, list[int | None]], set[int]]:
    """Every tensor's shape with the graph's symbolic input dims set to distinct sentinel sizes (data-propagating
    shape inference then resolves the dims the graph computes from them, e.g. the number of query heads), and the
    sentinels."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    # weights stored outside the graph become inputs of their declared shapes; small constants (split sizes, ...)
    # stay, as shape inference reads their values
    external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    names = {t.name for t in external}
    kept = [t for t in probe.graph.initializer if t.name not in names]
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(kept)
    probe.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in external)
    del probe.graph.value_info[:]
    sentinels: dict[str, int] = {}
    for value in probe.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                symbol = dim.dim_param
                sentinels.setdefault(symbol, _SENTINELS[len(sentinels) % len(_SENTINELS)] + 100 * len(sentinels))
                dim.dim_value = sentinels[symbol]
    inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes, set(sentinels.values())
