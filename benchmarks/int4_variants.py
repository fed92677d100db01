"""int4 variants on SmolLM2-135M-Instruct: perplexity (and decode speed) of weight-only quantisation schemes.

    python benchmarks/int4_variants.py            # about 6 minutes on 2 cores

Each variant quantises the same exported fp32 graph, is compiled by the ONNX Runtime backend and scored on the
first 200 tokens of `QEfficient/generation/eval_text.py` by teacher forcing (`QEfficient.generation.quality`).
The first two are `compile(weights="int4")` with and without `exact_grids`; the others quantise the graph before
compile. The min-max variant with float zero points is an experiment kept here (not a compile option): it is as
accurate as exact grids but ONNX Runtime has no fast CPU kernel for float zero points.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import types
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def minmax_float_zero_points(model: onnx.ModelProto, block: int = 32) -> None:
    """MatMul(A, constant B [K, N]) -> MatMulNBits, 4 bits, per-block min-max scale and float zero point."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2 or weight.dims[0] % block:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)
        k, n = w.shape
        blocks = w.reshape(k // block, block, n)
        low, high = blocks.min(axis=1), blocks.max(axis=1)
        scale = np.where(high > low, (high - low) / 15, np.float32(1)).astype(np.float32)
        q = np.clip(np.rint((blocks - low[:, None]) / scale[:, None]), 0, 15).astype(np.uint8).transpose(2, 0, 1)
        names = [f"{node.name}_q4", f"{node.name}_scales", f"{node.name}_zp"]
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(q[..., 0::2] | (q[..., 1::2] << 4)), names[0]),
                numpy_helper.from_array(np.ascontiguousarray(scale.T).reshape(-1), names[1]),
                numpy_helper.from_array(
                    np.ascontiguousarray((-low / scale).T).reshape(-1).astype(np.float32), names[2]
                ),
            ]
        )
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], *names],
                list(node.output),
                domain="com.microsoft",
                K=k,
                N=n,
                bits=4,
                block_size=block,
                accuracy_level=4,
            )
        )
    del graph.node[:]
    graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def ort_quantizer(**kwargs):  # noqa: ANN003, ANN201
    def apply(model: onnx.ModelProto) -> onnx.ModelProto:
        from onnxruntime.quantization import matmul_nbits_quantizer as mq

        algo = kwargs.pop("algo", None)
        q = mq.MatMulNBitsQuantizer(model, bits=4, block_size=32, accuracy_level=4, algo_config=algo, **kwargs)
        q.process()
        quantized = q.model.model
        for opset in quantized.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = 17
        return quantized

    return apply


def main() -> None:
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.backends.onnxruntime import OnnxRuntimeBackend
    from QEfficient.generation.eval_text import EVAL_TEXT
    from QEfficient.generation.quality import perplexity
    from QEfficient.generation.text_generation import TextGenerator
    from QEfficient.utils.default_models import default_causal_lm

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    model = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm())
    model.export(ctx_len=256)
    ids = model.tokenizer(EVAL_TEXT)["input_ids"][:200]
    lm_head = [
        n.name for n in onnx.load(str(model.onnx_path), load_external_data=False).graph.node if "lm_head" in n.name
    ]

    def float_zp(m: onnx.ModelProto) -> onnx.ModelProto:
        minmax_float_zero_points(m)
        return m

    def unchanged(m: onnx.ModelProto) -> onnx.ModelProto:
        return m

    # name -> (what quantises the graph before compile, compile options)
    variants = {
        "fp32": (unchanged, {}),
        "exact grids (the compile default)": (unchanged, {"weights": "int4"}),
        "symmetric RTN, block 32 (`exact_grids=False`)": (unchanged, {"weights": "int4", "exact_grids": False}),
        "asymmetric RTN (integer zero points)": (
            ort_quantizer(is_symmetric=False, op_types_to_quantize=("MatMul", "Gather")),
            {},
        ),
        "symmetric, embeddings and lm_head kept fp32": (
            ort_quantizer(is_symmetric=True, op_types_to_quantize=("MatMul",), nodes_to_exclude=lm_head),
            {},
        ),
        "min-max blocks with float zero points": (float_zp, {}),
        "ORT HQQ (float zero points)": (
            ort_quantizer(op_types_to_quantize=("MatMul",), algo=mq.HQQWeightOnlyQuantConfig(block_size=32, bits=4)),
            {},
        ),
    }
    backend = OnnxRuntimeBackend()
    specs = [{"batch_size": 1, "seq_len": 32}, {"batch_size": 1, "seq_len": 1}]
    print("| int4 variant | perplexity | decode tokens/s |\n|---|---:|---:|")
    for name, (quantize, options) in variants.items():
        folder = Path(tempfile.mkdtemp(prefix="qeff-int4-"))
        try:
            graph = quantize(onnx.load(str(model.onnx_path)))
            (folder / "graph").mkdir()
            onnx.save_model(
                graph, str(folder / "graph/model.onnx"), save_as_external_data=True, location="model.onnx.data"
            )
            (folder / "program").mkdir()
            meta = backend.compile(folder / "graph/model.onnx", folder / "program", specs, dict(options))
            program = backend.open(folder / "program", meta)
            scored = perplexity(
                types.SimpleNamespace(program=program, compile_config={"ctx_len": 256, "batch_size": 1}), ids
            )
            generator = TextGenerator(program, model.tokenizer, 32, 256, 1)
            generator.generate([ids[:24]], 4)
            speed = generator.generate([ids[:24]], 64).perf_metrics.decode_tokens_per_s
            print(f"| {name} | {scored:.2f} | {speed:.1f} |", flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
