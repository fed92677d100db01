"""Weights that already lie on a block quantisation grid, kept on it exactly: `compile(weights=..., exact_grids=True)`.

A GGUF checkpoint is already quantised, and transformers dequantises it to fp32 when it loads it. Every block of 32
weights along a row is then either `d * q` with integer q in [-127, 127] (GGUF Q8_0) or `m + d * q` with integer q in
0..15 (Q4_1, and Q4_0 with m = -8 d), d and m one float each per block and output column. Quantising those values a
second time on ONNX Runtime's own grid (symmetric, or with integer zero points) moves nearly every weight: on
SmolLM2-135M's Q4_1 checkpoint that costs +29 % perplexity. This module finds the weight matrices whose every block
lies on such a grid and writes them in `MatMulNBits` form that reproduces them:

- a symmetric 8-bit grid: `MatMulNBits(bits=8)`, or `GatherBlockQuantized(bits=8)` for an embedding table. Exact.
- a 16-level affine grid: `MatMulNBits(bits=4)`, q counted from the block's minimum m, the kernel's implicit zero
  point 8, and the rest of each block's offset, r = m + 8 d, as extra reduction rows:

      x W = x [d (q - 8)] + sum over blocks b of s_b(x) r_b,      s_b(x) = the sum of x over block b,

  so the product reads `Concat(x, s(x), s(x))` against the rows [d (q - 8); r coarse; r fine]. The block sums come
  from a `MatMulNBits` with 0/1 weights (one per input, shared by the MatMuls that read it), and r is written as two
  4-bit rows, the second holding what the first rounds off (within about 1/200 of the largest |r| of a column).
  Where integer zero points leave no rest (Q4_0: m a whole number of steps) they are used instead, without rows.
  (Integer zero points plus rows for the remainder were measured 9 % slower per step: the kernel's asymmetric
  path costs more than the rows.)

A matrix is kept only if all its blocks lie on one of these grids (to a thousandth of a step), so on weights that were
never quantised nothing changes. The block size is the compile's `block_size`: GGUF's grids are blocks of 32, the
default.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from QEfficient.backends.graph_edit import set_nodes

logger = logging.getLogger(__name__)

GRID_TOLERANCE = 1e-3  # how far from a grid point a weight may be, in grid steps (fp32 rounding is far below)
SAMPLE_COLUMNS = 16  # checked before the whole matrix


def _integral(q: np.ndarray) -> np.ndarray | None:
    rounded = np.rint(q)
    return rounded if np.abs(q - rounded).max(initial=0.0) <= GRID_TOLERANCE else None


def symmetric_8bit_grid(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """`blocks` [n_blocks, block, N] as `scale * q` with integer q in [-127, 127] (GGUF Q8_0); returns (q + 128 as
    uint8, scale [n_blocks, N]), or None if a block is off that grid."""
    scale = np.abs(blocks).max(axis=1) / 127
    scale = np.where(scale > 0, scale, 1).astype(np.float32)
    q = _integral(blocks / scale[:, None])
    return None if q is None else ((q + 128).astype(np.uint8), scale)


def affine_4bit_grid(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """`blocks` [n_blocks, block, N] as `low + step * q` with integer q in 0..15 (GGUF Q4_1, Q4_0); returns (q as uint8,
    step, low), step and low [n_blocks, N], or None if a block is off such a grid. The step is the smallest gap between
    a block's distinct values (a multiple of the grid's step; the grid's own whenever two neighbouring levels are used,
    and checked against every value)."""
    ordered = np.sort(blocks, axis=1)
    gaps = np.diff(ordered, axis=1)
    step = np.where(gaps > 0, gaps, np.inf).min(axis=1)
    step = np.where(np.isfinite(step), step, 1).astype(np.float32)  # a constant block: any step
    low = ordered[:, 0]
    q = _integral((blocks - low[:, None]) / step[:, None])
    if q is None or q.max(initial=0) > 15:
        return None
    return q.astype(np.uint8), step, low


def _pack_4bit(q: np.ndarray) -> np.ndarray:
    """[..., 2k] values in 0..15 -> [..., k] bytes, the even element in the low nibble (MatMulNBits' layout)."""
    return np.ascontiguousarray(q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _symmetric_4bit(values: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """[rows, N] (rows a multiple of `block`) rounded to `scale * (q - 8)` per block of rows and column: (q [rows, N]
    as uint8, scale [rows / block, N])."""
    blocks = values.reshape(-1, block, values.shape[1])
    scale = np.abs(blocks).max(axis=1) / 7
    scale = np.where(scale > 0, scale, 1).astype(np.float32)
    q = np.clip(np.rint(blocks / scale[:, None]), -8, 7) + 8
    return q.reshape(values.shape).astype(np.uint8), scale


class _Rewriter:
    """Collects the new nodes and initializers; one block-sum node per (input, size)."""

    def __init__(self, block: int, accuracy_level: int) -> None:
        self.block = block
        self.level = accuracy_level
        self.initializers: list[onnx.TensorProto] = []
        self.extended: dict[str, str] = {}  # input -> its Concat(x, s, s), made once

    def constant(self, array: np.ndarray, name: str) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def matmul_nbits(self, inputs: list[str], output: str, k: int, n: int, bits: int, name: str) -> onnx.NodeProto:
        return helper.make_node(
            "MatMulNBits", inputs, [output], name=name, domain="com.microsoft",
            K=k, N=n, bits=bits, block_size=self.block, accuracy_level=self.level,
        )  # fmt: skip

    def with_block_sums(self, x: str, k: int) -> tuple[str, list[onnx.NodeProto]]:
        """`Concat(x, s, s)`, s the sums of x over each block padded with zeros to whole blocks, and the nodes that
        make it (returned once per input: the MatMuls reading the same input share them)."""
        if x in self.extended:
            return self.extended[x], []
        n_blocks, padded = k // self.block, -(-k // self.block // self.block) * self.block
        ones = np.full((padded, n_blocks, self.block), 8, np.uint8)  # row b of the sums: 1 on block b, 0 elsewhere
        ones[np.arange(n_blocks), np.arange(n_blocks)] = 9
        base = f"{x}.block_sums"
        weights = self.constant(_pack_4bit(ones), f"{base}.ones")
        scales = self.constant(np.ones(padded * n_blocks, np.float32), f"{base}.scales")
        nodes = [
            self.matmul_nbits([x, weights, scales], base, k, padded, 4, base),
            helper.make_node("Concat", [x, base, base], [f"{x}.extended"], axis=-1, name=f"{x}.extended"),
        ]
        self.extended[x] = f"{x}.extended"
        return self.extended[x], nodes

    def matmul_8bit(self, node: onnx.NodeProto, q: np.ndarray, scale: np.ndarray) -> list[onnx.NodeProto]:
        n_blocks, block, n = q.shape
        name = node.name or node.output[0]
        weights = self.constant(np.ascontiguousarray(q.transpose(2, 0, 1)), f"{name}.q8")
        scales = self.constant(np.ascontiguousarray(scale.T).reshape(-1), f"{name}.scales")
        return [self.matmul_nbits([node.input[0], weights, scales], node.output[0], n_blocks * block, n, 8, name)]

    def matmul_4bit(self, node: onnx.NodeProto, grid: tuple[np.ndarray, ...]) -> list[onnx.NodeProto]:
        q, step, low = grid
        n_blocks, block, n = q.shape
        k = n_blocks * block
        name = node.name or node.output[0]
        # The kernel computes step * (q - zero) and q counts from `low`, so low + step q = step (q - zero) + rest with
        # rest = low + zero step. Without zero points the kernel takes zero = 8 and runs its faster symmetric path;
        # integer zero points are used only when they leave no rest (Q4_0 and its like: no extra rows at all).
        rest = (low + 8 * step).astype(np.float32)  # [n_blocks, N]
        zero = np.clip(np.rint(-low / step), 0, 15)

        def whole_steps(offset: np.ndarray) -> bool:  # to fp32 rounding
            return bool(np.all(np.abs(offset) <= GRID_TOLERANCE * step))

        needs_offsets = not whole_steps(rest)
        with_zeros = needs_offsets and whole_steps(low + zero * step)
        rows, scales, x, nodes = [q], [step], node.input[0], []
        if needs_offsets and not with_zeros:  # the offsets as rows against the block sums
            x, nodes = self.with_block_sums(node.input[0], k)
            padded = np.zeros((-(-n_blocks // block) * block, n), np.float32)
            padded[:n_blocks] = rest
            coarse, coarse_scale = _symmetric_4bit(padded, block)
            fine = padded - (coarse.astype(np.float32) - 8) * np.repeat(coarse_scale, block, axis=0)
            fine_q, fine_scale = _symmetric_4bit(fine, block)
            for extra_q, extra_scale in ((coarse, coarse_scale), (fine_q, fine_scale)):
                rows.append(extra_q.reshape(-1, block, n))
                scales.append(extra_scale)
        q_all = np.concatenate(rows, axis=0)  # [blocks, block, N]
        inputs = [
            x,
            self.constant(_pack_4bit(q_all.transpose(2, 0, 1)), f"{name}.q4"),
            self.constant(np.ascontiguousarray(np.concatenate(scales, axis=0).T).reshape(-1), f"{name}.scales"),
        ]
        if with_zeros:
            zero_points = zero.T.astype(np.uint8)  # [N, blocks]
            if zero_points.shape[1] % 2:
                zero_points = np.concatenate([zero_points, np.zeros((n, 1), np.uint8)], axis=1)
            inputs.append(self.constant(_pack_4bit(zero_points).reshape(-1), f"{name}.zero_points"))
        return [*nodes, self.matmul_nbits(inputs, node.output[0], q_all.shape[0] * block, n, 4, name)]

    def gather_8bit(self, node: onnx.NodeProto, q: np.ndarray, scale: np.ndarray) -> list[onnx.NodeProto]:
        n_blocks, block, rows = q.shape  # the table [rows, D] was read as D / block blocks of `rows` columns
        name = node.name or node.output[0]
        data = self.constant(np.ascontiguousarray(q.transpose(2, 0, 1)).reshape(rows, -1), f"{name}.q8")
        scales = self.constant(np.ascontiguousarray(scale.T), f"{name}.scales")
        return [
            helper.make_node(
                "GatherBlockQuantized", [data, node.input[1], scales], list(node.output), name=name,
                domain="com.microsoft", bits=8, block_size=block, gather_axis=0, quantize_axis=1,
            )
        ]  # fmt: skip


def keep_exact_grids(model: onnx.ModelProto, bits: int, block: int, accuracy_level: int) -> Counter:
    """Rewrite, in place, every MatMul (and embedding Gather) of `model` whose constant fp32 weight lies on a block
    quantisation grid (module docstring) into the `MatMulNBits` (`GatherBlockQuantized`) that reproduces it. With
    `bits=8` only 8-bit grids are kept (a 4-bit grid costs extra rows there, and 8-bit rounding is already close).
    Returns how many matrices were kept, per grid."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    rewriter = _Rewriter(block, accuracy_level)
    kept: Counter = Counter()
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        replaced = None
        if node.op_type == "MatMul" and node.input[1] in initializers:
            replaced = _matmul(rewriter, node, initializers[node.input[1]], bits, kept)
        elif node.op_type == "Gather" and node.input[0] in initializers and not any(a.i for a in node.attribute):
            replaced = _gather(rewriter, node, initializers[node.input[0]], kept)
        nodes += replaced if replaced is not None else [node]
    if not kept:
        return kept
    used = {name for node in nodes for name in node.input}
    set_nodes(graph, nodes, [t for t in [*graph.initializer, *rewriter.initializers] if t.name in used])
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    logger.info("weights kept on their own grids: %s", dict(kept))
    return kept


def _matmul(
    rewriter: _Rewriter, node: onnx.NodeProto, weight: onnx.TensorProto, bits: int, kept: Counter
) -> list[onnx.NodeProto] | None:
    if len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT or weight.dims[0] % rewriter.block:
        return None
    w = numpy_helper.to_array(weight)
    blocks = w.reshape(w.shape[0] // rewriter.block, rewriter.block, w.shape[1])
    sample = blocks[:, :, :SAMPLE_COLUMNS]  # a few columns first: most weights are on no grid, and say so at once
    if bits == 4 and affine_4bit_grid(sample) is not None and (grid := affine_4bit_grid(blocks)) is not None:
        kept["4-bit"] += 1
        return rewriter.matmul_4bit(node, grid)
    if symmetric_8bit_grid(sample) is not None and (grid8 := symmetric_8bit_grid(blocks)) is not None:
        kept["8-bit"] += 1
        return rewriter.matmul_8bit(node, *grid8)
    return None


def _gather(
    rewriter: _Rewriter, node: onnx.NodeProto, table: onnx.TensorProto, kept: Counter
) -> list[onnx.NodeProto] | None:
    if len(table.dims) != 2 or table.data_type != TensorProto.FLOAT or table.dims[1] % rewriter.block:
        return None
    t = numpy_helper.to_array(table)  # [rows, D], blocks along D
    blocks = t.reshape(t.shape[0], -1, rewriter.block).transpose(1, 2, 0)
    if symmetric_8bit_grid(blocks[:, :, :SAMPLE_COLUMNS]) is None or (grid := symmetric_8bit_grid(blocks)) is None:
        return None
    kept["8-bit embedding"] += 1
    return rewriter.gather_8bit(node, *grid)
