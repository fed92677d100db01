"""What the compile-time graph rewrites share: setting a graph's nodes (and weights), and writing a rewritten graph
with its weights as `model.onnx` + `model.onnx.data`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import onnx

GRAPH_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"


def set_nodes(
    graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto], initializers: Iterable[onnx.TensorProto] | None = None
) -> None:
    """Replace `graph`'s nodes (in this order), and its initializers when given."""
    nodes = list(nodes)
    del graph.node[:]
    graph.node.extend(nodes)
    if initializers is not None:
        initializers = list(initializers)
        del graph.initializer[:]
        graph.initializer.extend(initializers)


def write_with_weights(model: onnx.ModelProto, target: Path) -> Path:
    """`model` written into the folder `target` as `model.onnx` with its weights (tensors of 1 KB and more) in
    `model.onnx.data`; returns the graph's path."""
    target.mkdir(parents=True, exist_ok=True)
    path = target / GRAPH_FILE
    onnx.save_model(model, str(path), save_as_external_data=True, location=WEIGHTS_FILE, size_threshold=1024)
    return path
