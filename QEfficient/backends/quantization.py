"""Weight-only quantisation of an exported graph for ONNX Runtime: `compile(..., weights="int8" | "int4")`.

Every MatMul with a constant weight becomes ONNX Runtime's `MatMulNBits` (block-wise, symmetric by default, one
scale per `block_size` weights along the reduction axis), the LM head included; with int4 the embedding table's
`Gather` becomes `GatherBlockQuantized` too (ONNX Runtime quantises a Gather to 4 bits only, so with int8 the
embedding stays fp32). Activations stay fp32 between ops. `accuracy_level` is `MatMulNBits`' compute precision:
4 (the default) quantises each activation row to int8 for the dot products, the fastest on CPUs; 0 computes in
fp32 from the dequantised weights.

`weights="checkpoint"` (the default for a model loaded from a GPTQ / AWQ / compressed-tensors checkpoint) writes the
checkpoint's own integers, scales and zero points as `MatMulNBits` (`checkpoint_weights.py`); with "int8" / "int4"
those weights are kept the same way, and the rest quantised.

Weights that already lie on a block quantisation grid (a GGUF checkpoint's Q8_0 / Q4_1 / Q4_0 tensors, which
transformers dequantises to fp32) are first kept on that grid exactly (`exact_grids=True`, the default;
`exact_grids.py`) instead of being quantised a second time; the quantiser then takes the rest.

`weights="int8-dynamic"` (what an encoder's `compile(weights="int8")` becomes) is ONNX Runtime's dynamic int8
quantisation instead (`quantize_dynamic_int8`): per-channel int8 weights and uint8 activations quantised at run
time, a u8 x s8 GEMM, the fast path for batches of tokens; the MatMuls that read an activation function's output
(the FFN output projections) keep fp32 weights, and the others' inputs are smoothed (SmoothQuant, calibrated on one
batch of random tokens) so that their outlier channels do not take the int8 range.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

from QEfficient.backends.exact_grids import keep_exact_grids
from QEfficient.backends.graph_edit import set_nodes, write_with_weights

WEIGHT_PRECISIONS = ("fp32", "int8", "int4", "checkpoint")
CHECKPOINT = "checkpoint"  # a pre-quantised checkpoint's own integer weights (`checkpoint_weights.py`)
DYNAMIC_INT8 = "int8-dynamic"  # dynamic int8 quantisation (`quantize_dynamic_int8`): the GEMM path, for encoders
DEFAULT_BLOCK_SIZE = 32
DEFAULT_ACCURACY_LEVEL = 4


def check_weight_options(options: dict[str, Any]) -> None:
    """Clear errors for the quantisation options of `compile`."""
    weights = options.get("weights", "fp32")
    if weights == DYNAMIC_INT8:
        given = sorted(set(options) & {"block_size", "accuracy_level", "symmetric", "exact_grids"})
        if given:
            raise ValueError(
                f"weights={DYNAMIC_INT8!r} (per-channel int8 weights, no blocks) takes none of {given}; they apply "
                "to the block-wise weights='int8' / 'int4'."
            )
        return
    if weights not in WEIGHT_PRECISIONS:
        raise ValueError(
            f"weights must be one of {', '.join(WEIGHT_PRECISIONS[:-1])}; got {weights!r} (or {CHECKPOINT!r}, a "
            "pre-quantised checkpoint's own weights, the default for a model loaded from one)."
        )
    records = options.get("checkpoint_weights")
    if records is not None and not (isinstance(records, str) and Path(records).is_file()):
        raise ValueError(f"checkpoint_weights must be the path of a checkpoint's records file; got {records!r}.")
    if weights == CHECKPOINT:
        if records is None:
            raise ValueError(
                "weights='checkpoint' keeps a pre-quantised checkpoint's own integer weights: it applies to a model "
                "loaded from a GPTQ, AWQ, compressed-tensors or FP8 checkpoint (docs/quantized_checkpoints.md)."
            )
        given = sorted(set(options) & {"block_size", "symmetric", "exact_grids"})
        if given:
            raise ValueError(
                f"weights='checkpoint' takes its groups and zero points from the checkpoint, not {given}; "
                "weights='int4' / 'int8' quantise the weights again."
            )
    block = options.get("block_size", DEFAULT_BLOCK_SIZE)
    if not isinstance(block, int) or block < 16 or block & (block - 1):
        raise ValueError(f"block_size must be a power of two >= 16 (e.g. 32, 64, 128); got {block!r}.")
    level = options.get("accuracy_level", DEFAULT_ACCURACY_LEVEL)
    if level not in (0, 1, 2, 3, 4):
        raise ValueError(f"accuracy_level must be 0 (fp32 compute), 1-3, or 4 (int8 compute); got {level!r}.")
    for key in ("symmetric", "exact_grids"):
        if not isinstance(options.get(key, True), bool):
            raise ValueError(f"{key} must be True or False; got {options[key]!r}.")


def quantize_weights(source: Path, target: Path, options: dict[str, Any]) -> Path:
    """Write `source` with its constant MatMul (and, for int4, Gather) weights quantised into `target`
    (`model.onnx` + `model.onnx.data`); returns the new graph's path."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    bits = {"int8": 8, "int4": 4}[options["weights"]]
    block = options.get("block_size", DEFAULT_BLOCK_SIZE)
    level = options.get("accuracy_level", DEFAULT_ACCURACY_LEVEL)
    model = onnx.load(str(source))
    opsets = {o.domain: o.version for o in model.opset_import}
    if options.get("exact_grids", True):
        keep_exact_grids(model, bits, block, level)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block,
        is_symmetric=options.get("symmetric", True),
        accuracy_level=level,
        op_types_to_quantize=("MatMul", "Gather") if bits == 4 else ("MatMul",),
    )
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it logs every node it skips (activation x activation MatMuls)
    try:
        quantizer.process()
    finally:
        quiet.setLevel(level)
    quantized = quantizer.model.model
    # The quantizer raises the default domain to opset 21 (for int4 tensors) without converting the other nodes;
    # the new ops live in com.microsoft, so the graph keeps the opset it was exported with.
    for opset in quantized.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.domain in opsets:
            opset.version = opsets[opset.domain]
    return write_with_weights(quantized, target)


# ---- dynamic int8 (encoders): `weights="int8-dynamic"` -----------------------------------------------------------

# Ops whose output range is the widest an activation has: a MatMul reading one (through element-wise ops) keeps fp32.
_ACTIVATION_FUNCTIONS = frozenset({"Erf", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Tanh", "Sigmoid"})
_ELEMENTWISE = frozenset({"Mul", "Add", "Sub", "Div", "Pow", "Cast", "Identity", *_ACTIVATION_FUNCTIONS})


class _NoPreprocessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def activation_fed_matmuls(model: onnx.ModelProto, depth: int = 4) -> list[str]:
    """Names of the MatMuls with a constant weight whose input is an activation function's output (found within
    `depth` element-wise ops back): the FFN output projections (GELU, GeGLU, SiLU gates) and a classifier after a
    tanh pooler. Their inputs have the widest range of any MatMul input, too wide for one int8 scale per tensor."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    constants = {i.name for i in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output
    }

    def from_activation(name: str, steps: int) -> bool:
        node = producers.get(name)
        if node is None or node.op_type not in _ELEMENTWISE:
            return False
        if node.op_type in _ACTIVATION_FUNCTIONS:
            return True
        return steps > 1 and any(from_activation(i, steps - 1) for i in node.input if i and i not in constants)

    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and node.input[1] in constants and from_activation(node.input[0], depth)
    ]


def _calibration_feeds(model: onnx.ModelProto, batch: int = 4, seq: int = 64) -> dict[str, np.ndarray]:
    """A fixed batch for the graph's inputs: random token ids (in the range of the embedding table that reads
    them), masks of ones, zeros elsewhere; free dimensions `batch` x `seq`."""
    graph = model.graph
    rng = np.random.default_rng(0)
    tables = {i.name: i.dims[0] for i in graph.initializer if len(i.dims) == 2}
    vocab = {n.input[1]: tables[n.input[0]] for n in graph.node if n.op_type == "Gather" and n.input[0] in tables}
    feeds = {}
    initializers = {i.name for i in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        kind = value.type.tensor_type
        free = iter((batch, seq))
        shape = [d.dim_value if d.HasField("dim_value") else next(free, 1) for d in kind.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)
        if value.name in vocab:
            feeds[value.name] = rng.integers(0, vocab[value.name], shape).astype(dtype)
        else:
            feeds[value.name] = (np.ones if "mask" in value.name else np.zeros)(shape, dtype)
    return feeds


def smooth_activations(
    model: onnx.ModelProto, matmuls: list[onnx.NodeProto], scratch: Path, alpha: float = 0.5
) -> list[str]:
    """SmoothQuant (Xiao et al., 2023) without a data set: move the activations' outlier channels into the weights.

    A transformer's LayerNorm outputs have a few channels tens of times larger than the rest (all-MiniLM-L6-v2: 17x
    in every layer), which one int8 scale per tensor cannot follow. For each input X of `matmuls` (MatMuls with an
    initializer weight), X's per-channel maximum `a` is measured on one batch of random tokens (the outlier channels
    are the model's, not the text's); then X becomes X / s (one `Mul`) and each weight's row j is multiplied by
    s_j = a_j ** alpha / w_j ** (1 - alpha) (w_j: the row's largest weight). The product is unchanged in exact
    arithmetic. Returns the names of the smoothed inputs."""
    import onnxruntime as ort

    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in matmuls:
        if node.input[1] in weights and len(weights[node.input[1]].dims) == 2:
            consumers.setdefault(node.input[0], []).append(node)
    if not consumers:
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in consumers
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # a failed first calibration is retried below, not an error to print
    try:
        session = ort.InferenceSession(
            str(write_with_weights(probe, scratch)), options, providers=["CPUExecutionProvider"]
        )
        try:
            values = session.run(list(consumers), _calibration_feeds(model))
        except Exception as exc:  # noqa: BLE001 - ORT's own error types; e.g. fewer positions than 64 tokens
            logging.getLogger(__name__).info("Calibration at 64 tokens failed (%s); calibrating at 8.", exc)
            values = session.run(list(consumers), _calibration_feeds(model, seq=8))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    position = {id(node): index for index, node in enumerate(graph.node)}
    inserted: list[tuple[int, onnx.NodeProto]] = []
    for (name, nodes), value in zip(consumers.items(), values):
        amax = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0).astype(np.float64)
        tensors = [onnx.numpy_helper.to_array(weights[node.input[1]]) for node in nodes]
        wmax = np.max([np.abs(w).max(axis=1) for w in tensors], axis=0).astype(np.float64)
        scale = np.where((amax > 0) & (wmax > 0), amax**alpha / np.maximum(wmax, 1e-12) ** (1 - alpha), 1.0)
        scale = np.clip(scale / np.exp(np.mean(np.log(scale))), 1e-2, 1e2)  # geometric mean 1: weights keep their size
        smoothed = f"{name}/smoothed"
        inverse = onnx.numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}/smooth_scale")
        graph.initializer.append(inverse)
        first = min(position[id(node)] for node in nodes)
        inserted.append((first, onnx.helper.make_node("Mul", [name, inverse.name], [smoothed], name=f"{name}/Smooth")))
        for node, tensor in zip(nodes, tensors):
            new = onnx.numpy_helper.from_array(
                (tensor * scale[:, None]).astype(tensor.dtype), f"{node.input[1]}/smoothed/{node.name}"
            )
            graph.initializer.append(new)
            node.input[0], node.input[1] = smoothed, new.name
    used = {i for node in graph.node for i in node.input}
    kept = [i for i in graph.initializer if i.name in used or i.name.endswith("/smooth_scale")]
    nodes = list(graph.node)
    for index, node in sorted(inserted, key=lambda pair: -pair[0]):
        nodes.insert(index, node)
    set_nodes(graph, nodes, kept)
    return list(consumers)


def quantize_dynamic_int8(source: Path, target: Path) -> tuple[Path, dict[str, Any]]:
    """Write `source` with ONNX Runtime's dynamic int8 quantisation (`quantize_dynamic`) into `target`.

    Weights: int8, symmetric, one scale per output channel. Activations: uint8, one scale and zero point per tensor
    computed at run time (`DynamicQuantizeLinear`; ONNX Runtime fuses the product into `DynamicQuantizeMatMul`, a
    u8 x s8 GEMM: VNNI's `vpdpbusd` on AVX-512 VNNI / AVX-VNNI CPUs). The MatMuls that read an activation function's
    output (`activation_fed_matmuls`) keep fp32 weights; the inputs of the others are smoothed first
    (`smooth_activations`), without which one int8 scale per tensor cannot follow the LayerNorm outputs' outlier
    channels (all-MiniLM-L6-v2: min cosine to fp32 over 2000 sentences 0.989 without, 0.997 with). Returns the new
    graph's path and what was done (for the manifest)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    kept = activation_fed_matmuls(model)
    constants = {i.name for i in model.graph.initializer}
    quantized_matmuls = [
        n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants and n.name not in kept
    ]
    smoothed = smooth_activations(model, quantized_matmuls, target / "calibration")
    target.mkdir(parents=True, exist_ok=True)
    path = target / "model.onnx"
    advice = _NoPreprocessingAdvice()
    root = logging.getLogger()
    root.addFilter(advice)  # quantize_dynamic advises shape-inference pre-processing on every call
    try:
        quantize_dynamic(
            model,
            path,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=kept,
            use_external_data_format=True,
        )
    finally:
        root.removeFilter(advice)
    quantized = onnx.load(str(path), load_external_data=False)
    counts = {op: sum(n.op_type == op for n in quantized.graph.node) for op in ("MatMulInteger", "MatMul")}
    summary = {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, per tensor, computed at run time",
        "int8_matmuls": counts["MatMulInteger"],
        "fp32_weight_matmuls": kept,
        "smoothed_inputs": len(smoothed),
    }
    return path, summary
