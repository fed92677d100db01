"""Weight-only quantisation of an exported graph for ONNX Runtime: `compile(..., weights="int8" | "int4")`.

Every MatMul with a constant weight becomes ONNX Runtime's `MatMulNBits` (block-wise, symmetric by default, one
scale per `block_size` weights along the reduction axis), the LM head included; with int4 the embedding table's
`Gather` becomes `GatherBlockQuantized` too (ONNX Runtime quantises a Gather to 4 bits only, so with int8 the
embedding stays fp32). Activations stay fp32 between ops. `accuracy_level` is `MatMulNBits`' compute precision:
4 (the default) quantises each activation row to int8 for the dot products, the fastest on CPUs; 0 computes in
fp32 from the dequantised weights.

Weights that already lie on a block quantisation grid (a GGUF checkpoint's Q8_0 / Q4_1 / Q4_0 tensors, which
transformers dequantises to fp32) are first kept on that grid exactly (`exact_grids=True`, the default;
`exact_grids.py`) instead of being quantised a second time; the quantiser then takes the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

from QEfficient.backends.exact_grids import keep_exact_grids
from QEfficient.backends.graph_edit import write_with_weights

WEIGHT_PRECISIONS = ("fp32", "int8", "int4")
DEFAULT_BLOCK_SIZE = 32
DEFAULT_ACCURACY_LEVEL = 4


def check_weight_options(options: dict[str, Any]) -> None:
    """Clear errors for the quantisation options of `compile`."""
    weights = options.get("weights", "fp32")
    if weights not in WEIGHT_PRECISIONS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_PRECISIONS)}; got {weights!r}.")
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
