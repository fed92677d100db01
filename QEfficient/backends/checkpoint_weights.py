"""A pre-quantised checkpoint's own integer weights, written as ONNX Runtime's `MatMulNBits`: `compile(weights=
"checkpoint")`, the default for a model loaded from a GPTQ / AWQ / compressed-tensors checkpoint.

Such a model is exported in fp32: each quantised Linear's weight is the checkpoint's dequantisation,
`scale[o, g(i)] * (q[o, i] - zero[o, g(i)])` with g(i) the group of input feature i
(`QEfficient/transformers/quantized_checkpoints.py`). The reader keeps, per Linear, the checkpoint's own integers,
scales, zero points and groups (`PackedLinear`, saved in one records file); this pass finds each of them among the
graph's MatMul weights and writes the MatMul as the `MatMulNBits` holding exactly those values: no second rounding.

- Matching: the export renames and transposes the weights, and `pack_weights` concatenates the columns of MatMuls that
  share an input. A MatMul weight [K, N] is matched as a run of records, left to right: the record whose first
  output row equals the next unmatched column (a hash lookup), confirmed by comparing the whole block of columns
  with the record's dequantised weight, bit for bit. A weight that is not covered entirely stays a fp32 MatMul.
- Groups: `MatMulNBits`' blocks run along K, one scale (and zero point) per block and output column. The block size
  is the group size when ONNX Runtime has it (16, 32, 64, 128, 256); a larger group whose size is a multiple of one
  of those is written as several blocks with the group's scale repeated (still exact). Other group sizes keep fp32.
- GPTQ act-order (`desc_act`, g_idx not `i // group_size`): the input features are permuted so that every group is
  contiguous, by a `Gather` on the activation's last axis (one per input and permutation, shared by the MatMuls that
  read it), and the weight's rows are permuted alike. x W = x[perm] W[perm]: exact.
- Bits: 4 and 8 (`MatMulNBits(bits=4|8)`); zero points as the kernel's uint8 zero points, absent when they are all
  the kernel's default (2^(bits-1), symmetric checkpoints).

FP8 checkpoints have no records: ONNX Runtime has no exact, fast FP8 MatMul on CPUs, so they run in fp32 compute from
the dequantised weights, which the log and the manifest say.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from QEfficient.backends.graph_edit import set_nodes, write_with_weights

logger = logging.getLogger(__name__)

SUPPORTED_BITS = (4, 8)
BLOCK_SIZES = (256, 128, 64, 32, 16)  # MatMulNBits' block sizes, largest first
FP8_NOTE = (
    "FP8 weights are dequantised to fp32 and computed in fp32: ONNX Runtime has no exact, fast FP8 MatMul on CPUs."
)


@dataclass(frozen=True)
class PackedLinear:
    """One quantised Linear of a checkpoint, as integers: weight[o, i] = scales[o, g] * (q[o, i] - zeros[o, g]) with
    g = g_idx[i] (default i // group_size).

    q: uint8 [out, in], levels 0 .. 2^bits - 1. scales: float32 [out, groups]. zeros: int32 [out, groups], or None for
    the symmetric default 2^(bits-1). g_idx: int64 [in] when the groups are not `i // group_size` (GPTQ act-order).
    """

    bits: int
    group_size: int
    q: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None = None
    g_idx: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    def groups(self) -> np.ndarray:
        """The group of each input feature, int64 [in]."""
        if self.g_idx is not None:
            return self.g_idx
        return np.arange(self.q.shape[1]) // self.group_size

    def zero_points(self) -> np.ndarray:
        """int32 [out, groups]: the zero points, the symmetric default filled in."""
        if self.zeros is not None:
            return self.zeros
        return np.full(self.scales.shape, 1 << (self.bits - 1), np.int32)

    def dequantize(self, rows: slice = slice(None)) -> np.ndarray:
        """The fp32 weight [out, in] (or the given rows), computed as the reader computes it: one fp32 product per
        weight, so that the result is the same bits in NumPy and PyTorch."""
        g = self.groups()
        levels = self.q[rows].astype(np.int32) - self.zero_points()[rows][:, g]
        return (self.scales[rows][:, g] * levels.astype(np.float32)).astype(np.float32)

    def input_order(self) -> np.ndarray | None:
        """The permutation of the input features that makes every group contiguous (None when they already are), or
        raises `ValueError` when the groups are not all `group_size` features."""
        g = self.groups()
        contiguous = np.arange(g.size) // self.group_size
        if np.array_equal(g, contiguous):
            return None
        order = np.argsort(g, kind="stable")
        if not np.array_equal(g[order], contiguous):
            raise ValueError(f"groups of unequal sizes (not {self.group_size} input features each)")
        return order


# ---- the records file -----------------------------------------------------------------------------------------------


def save_records(path: Path, method: str, summary: dict[str, Any], linears: dict[str, PackedLinear]) -> None:
    """Write the records of a checkpoint (safetensors: the arrays, and the rest as JSON metadata)."""
    from safetensors.numpy import save_file

    arrays: dict[str, np.ndarray] = {}
    layout = {}
    for name, record in linears.items():
        layout[name] = {"bits": record.bits, "group_size": record.group_size}
        arrays[f"{name}/q"] = np.ascontiguousarray(record.q, np.uint8)
        arrays[f"{name}/scales"] = np.ascontiguousarray(record.scales, np.float32)
        if record.zeros is not None:
            arrays[f"{name}/zeros"] = np.ascontiguousarray(record.zeros, np.int32)
        if record.g_idx is not None:
            arrays[f"{name}/g_idx"] = np.ascontiguousarray(record.g_idx, np.int64)
    metadata = {"method": method, "summary": json.dumps(summary), "linears": json.dumps(layout)}
    save_file(arrays, str(path), metadata=metadata)


def load_records(path: str | Path) -> tuple[str, dict[str, Any], dict[str, PackedLinear]]:
    """(method, summary, linears) from a records file written by `save_records`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        metadata = f.metadata()
        arrays = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    linears = {
        name: PackedLinear(
            bits=layout["bits"],
            group_size=layout["group_size"],
            q=arrays[f"{name}/q"],
            scales=arrays[f"{name}/scales"],
            zeros=arrays.get(f"{name}/zeros"),
            g_idx=arrays.get(f"{name}/g_idx"),
        )
        for name, layout in json.loads(metadata["linears"]).items()
    }
    return metadata["method"], json.loads(metadata["summary"]), linears


def records_digest(method: str, summary: dict[str, Any], linears: dict[str, PackedLinear]) -> str:
    """Content hash of the records (names, layouts and every array's bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([method, summary], sort_keys=True, default=str).encode())
    for name in sorted(linears):
        record = linears[name]
        digest.update(f"{name}:{record.bits}:{record.group_size}".encode())
        for array in (record.q, record.scales, record.zeros, record.g_idx):
            digest.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# ---- the graph pass -------------------------------------------------------------------------------------------------


def block_size_for(record: PackedLinear) -> int | None:
    """The `MatMulNBits` block size that reproduces the record's groups: the largest supported size dividing the group
    size (and K); None when there is none."""
    k = record.shape[1]
    if k % record.group_size:
        return None
    return next((b for b in BLOCK_SIZES if record.group_size % b == 0), None)


def _column_key(column: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(column, np.float32).tobytes(), digest_size=16).digest()


@dataclass
class _Part:
    """One record's share of a MatMul: the record, its block size and its input permutation."""

    name: str
    record: PackedLinear
    block: int
    order: np.ndarray | None

    def layout(self) -> tuple[int, int, bytes | None]:
        """What the parts packed into one `MatMulNBits` must share."""
        return (self.record.bits, self.block, None if self.order is None else self.order.tobytes())


class _Writer:
    """Collects the new nodes and initializers; one Gather per (input, permutation)."""

    def __init__(self, accuracy_level: int) -> None:
        self.level = accuracy_level
        self.initializers: list[onnx.TensorProto] = []
        self.permuted: dict[tuple[str, bytes], str] = {}

    def constant(self, array: np.ndarray, name: str) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def permuted_input(self, x: str, order: np.ndarray, nodes: list[onnx.NodeProto]) -> str:
        key = (x, hashlib.blake2b(order.tobytes(), digest_size=16).digest())
        if key not in self.permuted:
            name = f"{x}.permuted{len(self.permuted)}"
            indices = self.constant(order.astype(np.int64), f"{name}.order")
            nodes.append(helper.make_node("Gather", [x, indices], [name], axis=-1, name=name))
            self.permuted[key] = name
        return self.permuted[key]

    def matmul_nbits(self, x: str, parts: list[_Part], output: str, name: str) -> list[onnx.NodeProto]:
        """One `MatMulNBits` over the parts (which share bits, block size and permutation), outputs side by side."""
        nodes: list[onnx.NodeProto] = []
        bits, block, _ = parts[0].layout()
        if parts[0].order is not None:
            x = self.permuted_input(x, parts[0].order, nodes)
        quantized, scales, zeros = [], [], []
        for part in parts:
            record, order = part.record, part.order
            repeat = record.group_size // block  # blocks per group
            q = record.q if order is None else record.q[:, order]
            quantized.append(q)
            scales.append(np.repeat(record.scales, repeat, axis=1))
            zeros.append(np.repeat(record.zero_points(), repeat, axis=1))
        q = np.concatenate(quantized)  # [N, K]
        n, k = q.shape
        blocks = k // block
        q = q.reshape(n, blocks, block)
        if bits == 4:
            q = q[..., 0::2] | (q[..., 1::2] << 4)
        inputs = [
            x,
            self.constant(np.ascontiguousarray(q, np.uint8), f"{name}.q{bits}"),
            self.constant(np.ascontiguousarray(np.concatenate(scales), np.float32).reshape(-1), f"{name}.scales"),
        ]
        zero = np.concatenate(zeros).astype(np.uint8)  # [N, blocks]
        if np.any(zero != 1 << (bits - 1)):  # else the kernel's default: its symmetric path
            if bits == 4:
                if blocks % 2:
                    zero = np.concatenate([zero, np.zeros((n, 1), np.uint8)], axis=1)
                zero = zero[:, 0::2] | (zero[:, 1::2] << 4)
            inputs.append(self.constant(np.ascontiguousarray(zero).reshape(-1), f"{name}.zero_points"))
        matmul = helper.make_node(
            "MatMulNBits", inputs, [output], name=name, domain="com.microsoft",
            K=k, N=n, bits=bits, block_size=block, accuracy_level=self.level,
        )  # fmt: skip
        return [*nodes, matmul]


def _cover(
    weight: np.ndarray,
    index: dict[tuple[int, bytes], list[str]],
    linears: dict[str, PackedLinear],
    dequantized: dict[str, np.ndarray],
) -> list[str] | None:
    """The records whose transposed weights, side by side, are `weight` [K, N] exactly; None if there are none."""
    k, n = weight.shape
    names, start = [], 0
    while start < n:
        match = None
        for name in index.get((k, _column_key(weight[:, start])), []):
            out = linears[name].shape[0]
            if start + out > n:
                continue
            if name not in dequantized:
                dequantized[name] = linears[name].dequantize().T
            if np.array_equal(weight[:, start : start + out], dequantized[name]):
                match = name
                break
        if match is None:
            return None
        names.append(match)
        start += linears[match].shape[0]
    return names


def _parts(names: list[str], linears: dict[str, PackedLinear]) -> list[_Part] | str:
    """The records as parts, or why they cannot be written as `MatMulNBits`."""
    parts = []
    for name in names:
        record = linears[name]
        block = block_size_for(record)
        if record.bits not in SUPPORTED_BITS:
            return f"{name}: {record.bits}-bit weights (MatMulNBits takes {SUPPORTED_BITS})"
        if block is None:
            return f"{name}: group size {record.group_size} is no multiple of a MatMulNBits block size {BLOCK_SIZES}"
        if record.zeros is not None and (record.zeros.min() < 0 or record.zeros.max() >= 1 << record.bits):
            return f"{name}: zero points outside 0..{(1 << record.bits) - 1}"
        try:
            order = record.input_order()
        except ValueError as exc:
            return f"{name}: {exc}"
        parts.append(_Part(name, record, block, order))
    return parts


def write_checkpoint_weights(
    model: onnx.ModelProto, linears: dict[str, PackedLinear], accuracy_level: int
) -> dict[str, Any]:
    """Rewrite, in place, every MatMul of `model` whose constant weight is one or more records side by side (module
    docstring) into `MatMulNBits` with the records' own values. Returns what was done, for the manifest."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    index: dict[tuple[int, bytes], list[str]] = {}
    for name, record in linears.items():  # keyed by K and the first output row (the first column of W^T)
        index.setdefault((record.shape[1], _column_key(record.dequantize(slice(0, 1))[0])), []).append(name)
    writer = _Writer(accuracy_level)
    dequantized: dict[str, np.ndarray] = {}
    kept: Counter = Counter()
    matched: set[str] = set()
    kept_fp32: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT:
            nodes.append(node)
            continue
        names = _cover(numpy_helper.to_array(weight), index, linears, dequantized)
        if names is None:
            nodes.append(node)
            continue
        parts = _parts(names, linears)
        if isinstance(parts, str):
            logger.warning("Checkpoint weights kept in fp32 compute: %s.", parts)
            kept_fp32 += names
            nodes.append(node)
            continue
        name = node.name or node.output[0]
        runs = [[parts[0]]]  # consecutive parts that one MatMulNBits can hold
        for part in parts[1:]:
            if part.layout() == runs[-1][-1].layout():
                runs[-1].append(part)
            else:
                runs.append([part])
        outputs = [node.output[0]] if len(runs) == 1 else [f"{name}.part{i}" for i in range(len(runs))]
        for i, (run, output) in enumerate(zip(runs, outputs)):
            nodes += writer.matmul_nbits(node.input[0], run, output, name if len(runs) == 1 else f"{name}.part{i}")
        if len(runs) > 1:
            nodes.append(helper.make_node("Concat", outputs, [node.output[0]], axis=-1, name=f"{name}.concat"))
        for part in parts:
            kept[f"{part.record.bits}-bit"] += 1
            matched.add(part.name)
    unmatched = sorted(set(linears) - matched - set(kept_fp32))
    if unmatched:
        logger.warning(
            "%d checkpoint weights were not found among the graph's MatMul weights and stay fp32 (e.g. %s).",
            len(unmatched),
            unmatched[0],
        )
    if kept:
        used = {name for node in nodes for name in node.input}
        set_nodes(graph, nodes, [t for t in [*graph.initializer, *writer.initializers] if t.name in used])
        if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    logger.info(
        "Checkpoint weights written as MatMulNBits with their own integers: %s (%d inputs permuted for act-order).",
        dict(kept),
        len(writer.permuted),
    )
    return {
        "matmul_nbits": dict(kept),
        "permuted_inputs": len(writer.permuted),
        "fp32": sorted([*kept_fp32, *unmatched]),
    }


def apply_checkpoint_weights(
    source: Path, target: Path, records_path: str | Path, accuracy_level: int
) -> tuple[Path | None, dict[str, Any]]:
    """Write `source` with the checkpoint's quantised weights as `MatMulNBits` into `target` (`model.onnx` +
    `model.onnx.data`). Returns the new graph's path (None when there was nothing to write, e.g. FP8) and the
    manifest's record of what was done."""
    method, summary, linears = load_records(records_path)
    done: dict[str, Any] = {"method": method, **summary}
    if not linears:
        if method == "fp8":
            logger.warning(FP8_NOTE)
            done["note"] = FP8_NOTE
        return None, done
    model = onnx.load(str(source))
    done.update(write_checkpoint_weights(model, linears, accuracy_level))
    if not done["matmul_nbits"]:
        return None, done
    return write_with_weights(model, target), done
