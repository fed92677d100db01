"""ONNX Runtime's dynamic int8 quantisation (`quantize_dynamic`) on the exported all-MiniLM-L6-v2 graph: speed of one
batch of 32 x 24 tokens and cosine to fp32: per-tensor and per-channel weights, and per-channel with the FFN output
projections (whose inputs, GELU outputs, have the widest range) kept fp32 -- the last is what an encoder's
`compile(weights="int8")` builds (`QEfficient/backends/quantization.py`, `quantize_dynamic_int8`), whose compiled
programs (fp32 and int8) are the last two rows. Prints the CPU and its vector flags: the int8 speed depends on them.

    python benchmarks/embeddings_dynamic_int8.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from QEfficient import QEFFAutoModel
from QEfficient.backends.quantization import activation_fed_matmuls
from QEfficient.cli.bench import cpu_name, vector_flags
from QEfficient.utils.default_models import default_embedding_model


def main() -> None:
    model = QEFFAutoModel.from_pretrained(str(default_embedding_model()), pooling="mean", normalize=True)
    graphs = {"fp32": model.export()}
    folder = Path(tempfile.mkdtemp(prefix="qeff-dynamic-int8-"))
    ffn_out = activation_fed_matmuls(onnx.load(str(graphs["fp32"])))  # the 6 FFN output projections
    variants = {
        "dynamic int8, per-tensor weights": (False, []),
        "dynamic int8, per-channel weights": (True, []),
        "dynamic int8, per-channel, FFN output projections fp32": (True, ffn_out),
    }
    for index, (name, (per_channel, kept)) in enumerate(variants.items()):
        graphs[name] = folder / f"{index}.onnx"
        quantize_dynamic(
            str(graphs["fp32"]),
            str(graphs[name]),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=kept,
        )
    for weights in ("fp32", "int8"):  # the compiled programs: offline-optimised, packed Q/K/V
        program = QEFFAutoModel.from_pretrained(str(default_embedding_model()), pooling="mean", normalize=True)
        directory = program.compile(
            seq_len="dynamic", batch_size=32, **({} if weights == "fp32" else {"weights": weights})
        )
        graphs[f"compile(weights={weights!r}) program"] = directory / "model.onnx"
    print(f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores usable; vector flags: {vector_flags()}")
    print(f"onnxruntime {ort.__version__}\n")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    ids = np.random.default_rng(0).integers(1000, 20000, (32, 24)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    outputs = {}
    print("| graph | ms per batch (median of 30) | min cosine to fp32 |\n|---|---:|---:|")
    for name, path in graphs.items():
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(3):
            outputs[name] = session.run(None, feeds)[0]
        times = []
        for _ in range(30):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
        cosine = float((outputs[name] * outputs["fp32"]).sum(axis=1).min())
        print(f"| {name} | {sorted(times)[15] * 1000:.1f} | {cosine:.4f} |")


if __name__ == "__main__":
    main()
