"""ONNX Runtime's block-quantised MatMul kernels on one decode row, one node per session: what the pieces of an int4
program cost on this machine (the shapes are SmolLM2-135M's).

    python benchmarks/matmul_nbits_kernels.py

Each case is a one-node graph run on a [1, 1, K] input with 2 threads; the figure is the median of 5 interleaved
rounds of 300 runs, in microseconds, and includes ONNX Runtime's per-run overhead (the `Concat` case is about that
overhead alone). The rows compare: 4 against 8 bits (the LM head), with and without integer zero points, the extra
reduction rows of exact grids (`QEfficient/backends/exact_grids.py`), and the block-sum node and `Concat` those
rows need.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def matmul_nbits(k: int, n: int, bits: int = 4, zero_points: bool = False) -> tuple[onnx.NodeProto, list]:
    blocks = k // 32
    inputs = ["A", "B", "S"]
    initializers = [
        numpy_helper.from_array(RNG.integers(0, 256, (n, blocks, 32 * bits // 8), dtype=np.uint8), "B"),
        numpy_helper.from_array((RNG.random(n * blocks) * 0.01).astype(np.float32), "S"),
    ]
    if zero_points:
        initializers.append(numpy_helper.from_array(RNG.integers(0, 256, n * ((blocks + 1) // 2), dtype=np.uint8), "Z"))
        inputs.append("Z")
    node = helper.make_node(
        "MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=32, accuracy_level=4
    )
    return node, initializers


def session(node: onnx.NodeProto, initializers: list, widths: list[int]) -> ort.InferenceSession:
    names = ["A", "A2"][: len(widths)]
    graph = helper.make_graph(
        [node],
        "case",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, w]) for name, w in zip(names, widths)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    cases = {
        "LM head K576 N49152, 4 bits": (*matmul_nbits(576, 49152), [576]),
        "LM head K576 N49152, 8 bits": (*matmul_nbits(576, 49152, bits=8), [576]),
        "packed QKV K576 N960, 4 bits": (*matmul_nbits(576, 960), [576]),
        "packed QKV, integer zero points": (*matmul_nbits(576, 960, zero_points=True), [576]),
        "packed QKV, 64 offset rows (K640)": (*matmul_nbits(640, 960), [640]),
        "down K1536 N576, 4 bits": (*matmul_nbits(1536, 576), [1536]),
        "down, 128 offset rows (K1664)": (*matmul_nbits(1664, 576), [1664]),
        "block sums K576 N32": (*matmul_nbits(576, 32), [576]),
        "block sums K1536 N64": (*matmul_nbits(1536, 64), [1536]),
        "Concat(x, s, s), 576 + 2 x 32": (helper.make_node("Concat", ["A", "A2", "A2"], ["Y"], axis=-1), [], [576, 32]),
    }
    sessions = {name: (session(node, inits, widths), widths) for name, (node, inits, widths) in cases.items()}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(5):
        for name, (sess, widths) in sessions.items():
            feed = {n: RNG.random((1, 1, w), dtype=np.float32) for n, w in zip(["A", "A2"], widths)}
            for _ in range(20):
                sess.run(None, feed)
            samples = []
            for _ in range(300):
                start = time.perf_counter()
                sess.run(None, feed)
                samples.append(time.perf_counter() - start)
            times[name].append(statistics.median(samples) * 1e6)
    print("| case | µs per run |\n|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
