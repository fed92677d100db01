"""ONNX symbolic functions for aten ops that the TorchScript exporter lacks or gets wrong at our opset.

Each is registered once before the first export. Models reach these ops through ordinary PyTorch code:
- `torch.expm1` (xIELU activations) and `F.rms_norm`: missing; plain decompositions into standard ops.
- `repeat_interleave` with a negative `dim` (interleaved rotary embeddings): torch's symbolic normalises `dim`
  by adding the rank *in place* to the traced constant, which the tracer shares with every other `-1` in the
  graph, so an unrelated `view(..., -1, head_dim)` silently becomes `view(..., rank - 1, head_dim)`. The
  wrapper hands it a fresh non-negative constant instead.
- `index_add` (mixture-of-experts layers summing each token's expert outputs): torch's symbolic is a plain
  `ScatterElements`, which keeps one of the values written to a repeated index instead of their sum (it
  warns, and the graph is silently wrong). Ours scatters with `reduction="add"` (opset 16+).
- `copy` (HF's recurrent cache layers store a new state with the in-place `state.copy_(new)`; on a traced
  clone it becomes `aten::copy`): missing; `new` broadcast to the state's shape, in the state's dtype.
- `permute` with negative dims (Mamba2's `permute(0, -2, -1, 1)`): torch's symbolic passes them to ONNX
  `Transpose`, whose graph ONNX Runtime then refuses to load; ours normalises them.
- `linalg_solve_triangular` (the chunked gated delta rule of Qwen3-Next, Qwen3.5, OLMo-hybrid, ...): missing.
  It is exported for unit-triangular systems, A = I + N with N strictly triangular and so nilpotent:
  A^-1 = sum_k (-N)^k = prod_j (I + (-N)^(2^j)), ceil(log2 n) squarings (up to n = 256 when the size is
  unknown at export; powers beyond n are exactly zero).
"""

from __future__ import annotations

import torch
from torch.onnx import symbolic_helper
from torch.onnx._internal.torchscript_exporter import symbolic_opset13

_registered: set[int] = set()


def _expm1(g, x):  # noqa: ANN001, ANN202 - exporter callback signature
    one = g.op("Constant", value_t=torch.tensor(1.0))
    return g.op("Sub", g.op("Exp", x), g.op("CastLike", one, x))


@symbolic_helper.parse_args("v", "is", "v", "v")
def _rms_norm(g, x, normalized_shape, weight, eps):  # noqa: ANN001, ANN202
    axes = list(range(-len(normalized_shape), 0))
    eps_value = symbolic_helper._maybe_get_const(eps, "f")
    if eps_value is None or symbolic_helper._is_none(eps):
        eps_value = torch.finfo(torch.float32).eps
    mean_square = g.op("ReduceMean", g.op("Mul", x, x), axes_i=axes, keepdims_i=1)
    eps_t = g.op("CastLike", g.op("Constant", value_t=torch.tensor(float(eps_value))), x)
    out = g.op("Mul", x, g.op("Reciprocal", g.op("Sqrt", g.op("Add", mean_square, eps_t))))
    return out if symbolic_helper._is_none(weight) else g.op("Mul", out, weight)


def _repeat_interleave(g, self, repeats, dim=None, output_size=None):  # noqa: ANN001, ANN202
    if not symbolic_helper._is_none(dim):
        value = int(symbolic_helper._maybe_get_const(dim, "i"))
        rank = symbolic_helper._get_tensor_rank(self)
        if value < 0 and rank is not None:
            value += rank
        dim = g.op("Constant", value_t=torch.tensor(value))
    return symbolic_opset13.repeat_interleave(g, self, repeats, dim, output_size)


def _index_add(g, self, dim, index, source, alpha=None):  # noqa: ANN001, ANN202
    if alpha is not None and not symbolic_helper._is_none(alpha):
        if symbolic_helper._maybe_get_const(alpha, "f") != 1:
            return symbolic_helper._unimplemented("index_add", "alpha != 1", self)
    dim = symbolic_helper._maybe_get_const(dim, "i")
    rank = symbolic_helper._get_tensor_rank(self)
    if rank is None or symbolic_helper._get_tensor_rank(source) != rank:
        return symbolic_helper._unimplemented("index_add", "source rank unknown or different from self", self)
    dim = dim + rank if dim < 0 else dim
    shape = [1] * rank
    shape[dim] = -1
    index = g.op("Reshape", index, g.op("Constant", value_t=torch.tensor(shape, dtype=torch.int64)))
    index = g.op("Expand", index, g.op("Shape", source))
    return g.op("ScatterElements", self, index, source, axis_i=dim, reduction_s="add")


def _copy(g, self, src, non_blocking):  # noqa: ANN001, ANN202
    return g.op("CastLike", g.op("Expand", src, g.op("Shape", self)), self)


@symbolic_helper.parse_args("v", "is")
def _permute(g, self, dims):  # noqa: ANN001, ANN202
    dims = [d % len(dims) for d in dims]
    return self if dims == list(range(len(dims))) else g.op("Transpose", self, perm_i=dims)


@symbolic_helper.parse_args("v", "v", "b", "b", "b")
def _solve_triangular(g, a, b, upper, left, unitriangular):  # noqa: ANN001, ANN202
    if not unitriangular:
        return symbolic_helper._unimplemented("linalg_solve_triangular", "unitriangular=False", a)
    sizes = symbolic_helper._get_tensor_sizes(a) or [None]
    n = sizes[-1] if isinstance(sizes[-1], int) else 256
    strict = g.op("Trilu", a, g.op("Constant", value_t=torch.tensor(1 if upper else -1)), upper_i=int(upper))
    minus = g.op("Neg", strict)
    zero = g.op("Constant", value_t=torch.tensor(0))
    ones = g.op("CastLike", g.op("ConstantOfShape", g.op("Shape", a), value_t=torch.tensor([1.0])), a)
    eye = g.op("Trilu", g.op("Trilu", ones, zero, upper_i=1), zero, upper_i=0)
    inverse, power, reach = g.op("Add", eye, minus), minus, 2
    while reach < n:
        power = g.op("MatMul", power, power)
        inverse = g.op("MatMul", inverse, g.op("Add", eye, power))
        reach *= 2
    return g.op("MatMul", inverse, b) if left else g.op("MatMul", b, inverse)


def register_symbolics(opset: int) -> None:
    """Register the decompositions for `opset` (idempotent)."""
    if opset in _registered:
        return
    torch.onnx.register_custom_op_symbolic("aten::expm1", _expm1, opset)
    torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm, opset)
    torch.onnx.register_custom_op_symbolic("aten::repeat_interleave", _repeat_interleave, opset)
    torch.onnx.register_custom_op_symbolic("aten::copy", _copy, opset)
    torch.onnx.register_custom_op_symbolic("aten::permute", _permute, opset)
    torch.onnx.register_custom_op_symbolic("aten::linalg_solve_triangular", _solve_triangular, opset)
    if opset >= 16:
        torch.onnx.register_custom_op_symbolic("aten::index_add", _index_add, opset)
    _registered.add(opset)
