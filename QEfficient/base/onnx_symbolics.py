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
- `torch.fft.fftn` / `torch.fft.fft` followed by `.real` / `.imag` (FNet's token mixing): missing, and ONNX has
  no complex tensors. Ours is an exact DFT in real arithmetic: along each transformed axis it multiplies by
  cos/sin matrices of 2*pi*k*n/N built from the *runtime* length N (Range, Mod, Cos, Sin), so a dynamic seq
  axis stays dynamic; the complex result is carried as a trailing (real, imag) axis of size 2 that only
  `aten::real` / `aten::imag` (ours too) or a further fft may consume, checked at export time. (ONNX's DFT
  op would do, but fewer runtimes implement it than MatMul.)
- `scatter_reduce` with `include_self=False` or `reduce="mean"` (TAPAS's segment min/max/mean): torch's
  symbolic refuses both. Ours first overwrites the positions the indices reach with the reduction's identity
  (0, 1, -inf, +inf), then scatters with the ONNX reduction; "mean" divides a scattered sum by a scattered
  count. (`ScatterElements` min/max is opset 18 in the ONNX spec; torch emits it from opset 16 as well and
  ONNX Runtime runs it.)
- `as_strided` (Longformer's overlapping sliding-window chunks): torch's symbolic gathers constant indices from
  the input flattened in *logical* order, computed from the traced sizes and strides. That is silently wrong
  when the input is a non-contiguous view (as_strided addresses memory, which ONNX tensors do not have) and
  whenever the input's shape is dynamic (the indices stay those of the traced shape). Ours refuses both with
  a clear export error and leaves the static, contiguous case to torch's symbolic.
- `Tensor.unfold(dim, size, step)` (Granite Speech 5's pooling of frame pairs, `x.unfold(1, 2, 2)`): torch's
  symbolic needs the input's size along `dim` at export time, so a dynamic length fails the export. Ours gathers
  the windows with indices built from the *runtime* length (Range), then moves the window axis last.
- `torch.full(size, fill)` without a dtype (Idefics2 / Idefics3 / SmolVLM's vision position ids,
  `torch.full(..., fill_value=0)`): PyTorch infers the dtype from the fill value (int64 for an int), but torch's
  symbolic makes every such tensor float32. A float tensor then reaches `torch.where` beside the int64 bucket ids,
  which the exporter promotes to float, and the `Gather` of the position embedding gets a float index, a graph
  ONNX Runtime refuses to load. Ours passes the dtype the trace recorded for the result.
- In-place `|=`, `&=`, `^=` on bool tensors (SmolVLM's `real_images_inds[0] |= ~torch.any(real_images_inds)`): the
  tracer records `aten::__ior__` (plus the `copy_` that writes the result back into the view), which the
  exporter's in-place pass renames `aten::__ior_` and then finds no symbolic for. The result is the out-of-place
  `Or` / `And` / `Xor` (torch's own `__or_` etc.; the write-back is the recorded `copy_`).
- `F.interpolate(..., mode="bilinear" | "bicubic", antialias=True)` (Cosmos3-Edge resizing its learned position
  grid to each image's patch grid): missing (ONNX `Resize` takes `antialias` only from opset 18). Both are
  separable linear maps, so for static input and output sizes the result is `W_h @ x @ W_w^T` with constant
  weight matrices, and ours computes those matrices with the aten op itself, applied to identity matrices at
  export time: the same weights (hence the same numbers up to float summation order) for every option the op
  takes (sizes, `align_corners`, explicit scales). A dynamic input or output size is refused at export.
- `view` / `reshape` to a size with a literal 0 (MistralLarge4's no-rope layers view their zero-width rotary key as
  `k_rot.view(batch, 1, seq, 0)`): torch's symbolic emits ONNX `Reshape` with `allowzero=0`, which reads a 0 as
  "copy the input's size at this position", not PyTorch's "size 0" (ONNX Runtime refuses the graph: "Invalid
  position of 0"). Ours sets `allowzero=1` (opset 14+) exactly when the size holds a constant 0, and leaves every
  other reshape as torch exports it.
"""

from __future__ import annotations

import math

import torch
from torch.onnx import symbolic_helper
from torch.onnx._internal.torchscript_exporter import (
    _type_utils,
    symbolic_opset9,
    symbolic_opset13,
    symbolic_opset14,
    symbolic_opset16,
)

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


_FFT_OPS = ("aten::fft_fft", "aten::fft_fftn")
_COMPLEX_PARTS = ("aten::real", "aten::imag")


def _const(g, value, dtype: torch.dtype = torch.int64):  # noqa: ANN001, ANN202
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


def _dft_matrices(g, x, axis: int):  # noqa: ANN001, ANN202
    """cos(2*pi*k*n/N) and sin(2*pi*k*n/N) for the runtime length N of `x` along `axis` (and N itself).
    k*n is reduced mod N in integers and the angle computed in double, so the matrices are exact to x's dtype."""
    n_len = g.op("Gather", g.op("Shape", x), _const(g, axis), axis_i=0)
    n = g.op("Range", _const(g, 0), n_len, _const(g, 1))
    kn = g.op("Mod", g.op("Mul", g.op("Unsqueeze", n, _const(g, [1])), g.op("Unsqueeze", n, _const(g, [0]))), n_len)
    kn = g.op("Cast", kn, to_i=_type_utils.JitScalarType.DOUBLE.onnx_type())
    two_pi = _const(g, 2 * math.pi, torch.float64)
    angle = g.op("Div", g.op("Mul", kn, two_pi), g.op("Cast", n_len, to_i=_type_utils.JitScalarType.DOUBLE.onnx_type()))
    return g.op("CastLike", g.op("Cos", angle), x), g.op("CastLike", g.op("Sin", angle), x), n_len


def _matmul_along(g, matrix, x, axis: int, rank: int):  # noqa: ANN001, ANN202
    """`matrix` (symmetric, N x N) applied to `x` along `axis`."""
    if axis == rank - 1:
        return g.op("MatMul", x, matrix)
    if axis == rank - 2:
        return g.op("MatMul", matrix, x)
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = g.op("MatMul", g.op("Transpose", x, perm_i=perm), matrix)
    return g.op("Transpose", moved, perm_i=perm)


def _fft(g, x, dims: list[int] | None, norm: str | None, name: str):  # noqa: ANN001, ANN202
    """Forward DFT of `x` over `dims`; returns (real, imag) stacked on a new trailing axis."""
    source = g.original_node.inputsAt(0)
    complex_input = symbolic_helper.is_complex_value(source)
    if complex_input and source.node().kind() not in _FFT_OPS:
        return symbolic_helper._unimplemented(name, f"complex input from {source.node().kind()}", x)
    for use in g.original_node.output().uses():
        if use.user.kind() not in (*_COMPLEX_PARTS, *_FFT_OPS):
            return symbolic_helper._unimplemented(name, f"complex result used by {use.user.kind()}", x)
    if norm not in (None, "backward", "ortho", "forward"):
        return symbolic_helper._unimplemented(name, f"norm={norm!r}", x)
    rank = symbolic_helper._get_tensor_rank(x)
    if rank is None:
        return symbolic_helper._unimplemented(name, "input rank unknown", x)
    if complex_input:  # our own (real, imag) pair from an earlier fft
        rank -= 1
        re = g.op("Gather", x, _const(g, 0), axis_i=-1)
        im = g.op("Gather", x, _const(g, 1), axis_i=-1)
    else:
        re = x if symbolic_helper._is_fp(x) else g.op("Cast", x, to_i=_type_utils.JitScalarType.FLOAT.onnx_type())
        im = None
    axes = sorted({d % rank for d in dims}) if dims else list(range(rank))
    count = None
    for axis in axes:
        cos, sin, n_len = _dft_matrices(g, re, axis)
        # (C - iS)(re + i im) = (C re + S im) + i (C im - S re)
        c_re, s_re = _matmul_along(g, cos, re, axis, rank), _matmul_along(g, sin, re, axis, rank)
        if im is None:
            re, im = c_re, g.op("Neg", s_re)
        else:
            re, im = (
                g.op("Add", c_re, _matmul_along(g, sin, im, axis, rank)),
                g.op("Sub", _matmul_along(g, cos, im, axis, rank), s_re),
            )
        count = n_len if count is None else g.op("Mul", count, n_len)
    if norm in ("ortho", "forward") and count is not None:
        scale = g.op("CastLike", count, re)
        scale = g.op("Sqrt", scale) if norm == "ortho" else scale
        re, im = g.op("Div", re, scale), g.op("Div", im, scale)
    last = _const(g, [-1])
    return g.op("Concat", g.op("Unsqueeze", re, last), g.op("Unsqueeze", im, last), axis_i=-1)


@symbolic_helper.parse_args("v", "is", "is", "s")
def _fft_fftn(g, x, s, dim, norm):  # noqa: ANN001, ANN202
    if s:
        return symbolic_helper._unimplemented("aten::fft_fftn", "s (padding or trimming)", x)
    return _fft(g, x, dim, norm, "aten::fft_fftn")


@symbolic_helper.parse_args("v", "v", "i", "s")
def _fft_fft(g, x, n, dim, norm):  # noqa: ANN001, ANN202
    if not symbolic_helper._is_none(n):
        return symbolic_helper._unimplemented("aten::fft_fft", "n (padding or trimming)", x)
    return _fft(g, x, [dim], norm, "aten::fft_fft")


def _complex_part(index: int, name: str):  # noqa: ANN202
    def symbolic(g, self):  # noqa: ANN001, ANN202
        source = g.original_node.inputsAt(0)
        if not symbolic_helper.is_complex_value(source):
            if index == 0:
                return self  # .real of a real tensor
            return symbolic_helper._unimplemented(name, "imag of a real tensor", self)
        if source.node().kind() not in _FFT_OPS:
            return symbolic_helper._unimplemented(name, f"complex value from {source.node().kind()}", self)
        return g.op("Gather", self, _const(g, index), axis_i=-1)

    return symbolic


_SCATTER_REDUCTIONS = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min", "mean": "add"}


def _reduction_identity(reduce: str, dtype: torch.dtype) -> float | int:
    if reduce in ("sum", "mean"):
        return 0
    if reduce == "prod":
        return 1
    if dtype.is_floating_point:
        return -math.inf if reduce == "amax" else math.inf
    return torch.iinfo(dtype).min if reduce == "amax" else torch.iinfo(dtype).max


@symbolic_helper.parse_args("v", "i", "v", "v", "s", "b")
def _scatter_reduce(g, self, dim, index, src, reduce, include_self):  # noqa: ANN001, ANN202
    rank = symbolic_helper._get_tensor_rank(self)
    scalar = _type_utils.JitScalarType.from_value(self, _type_utils.JitScalarType.UNDEFINED)
    if (include_self and reduce != "mean") or not rank or scalar == _type_utils.JitScalarType.UNDEFINED:
        return symbolic_opset16.scatter_reduce(g, self, dim, index, src, reduce, include_self)
    if reduce not in _SCATTER_REDUCTIONS:
        return symbolic_helper._unimplemented("aten::scatter_reduce", f"reduce={reduce!r}", self)
    dtype = scalar.dtype()
    if dtype == torch.bool or (reduce == "mean" and not dtype.is_floating_point):
        return symbolic_helper._unimplemented("aten::scatter_reduce", "bool, or integer mean", self)
    dim = dim % rank
    # ScatterElements wants updates shaped like the indices; torch reads src only where index has entries
    index_shape = g.op("Shape", index)
    src = g.op("Slice", src, _const(g, [0] * rank), index_shape, _const(g, list(range(rank))))
    zeros = g.op("ConstantOfShape", g.op("Shape", self), value_t=torch.tensor([0], dtype=torch.int64))
    ones = g.op("ConstantOfShape", index_shape, value_t=torch.tensor([1], dtype=torch.int64))
    count = g.op("ScatterElements", zeros, index, ones, axis_i=dim, reduction_s="add")
    reached = g.op("Greater", count, _const(g, 0))
    base = self
    if not include_self:
        identity = g.op("Constant", value_t=torch.tensor(_reduction_identity(reduce, dtype), dtype=dtype))
        base = g.op("Where", reached, identity, self)
    out = g.op("ScatterElements", base, index, src, axis_i=dim, reduction_s=_SCATTER_REDUCTIONS[reduce])
    if reduce == "mean":
        if include_self:
            count = g.op("Add", count, _const(g, 1))
        divisor = g.op("CastLike", g.op("Max", count, _const(g, 1)), out)
        out = g.op("Where", reached, g.op("Div", out, divisor), self)
    return out


def _contiguous_strides(sizes: list[int]) -> list[int]:
    strides, step = [], 1
    for size in reversed(sizes):
        strides.append(step)
        step *= max(size, 1)
    return strides[::-1]


def _as_strided(g, self, sizes, strides, offset=None):  # noqa: ANN001, ANN202
    dims = symbolic_helper._get_tensor_sizes(self)
    if dims is None or any(d is None for d in dims):
        return symbolic_helper._unimplemented(
            "aten::as_strided",
            "input with a dynamic shape: its sizes and strides are fixed at the traced shape, so the graph "
            "would be right only at that shape",
            self,
        )
    traced = g.original_node.inputsAt(0).type()
    traced_sizes, traced_strides = traced.sizes(), traced.strides()
    if traced_sizes is None or traced_strides is None:
        return symbolic_helper._unimplemented("aten::as_strided", "input strides unknown", self)
    expected = _contiguous_strides(traced_sizes)
    if any(n != 1 and a != b for n, a, b in zip(traced_sizes, traced_strides, expected, strict=True)):
        return symbolic_helper._unimplemented(
            "aten::as_strided",
            "input is a non-contiguous view: as_strided addresses memory, which ONNX tensors do not have",
            self,
        )
    return symbolic_opset9.as_strided(g, self, sizes, strides, offset)


@symbolic_helper.parse_args("v", "i", "i", "i")
def _unfold(g, self, dimension, size, step):  # noqa: ANN001, ANN202
    rank = symbolic_helper._get_tensor_rank(self)
    if not rank:
        return symbolic_helper._unimplemented("aten::unfold", "input rank unknown (or 0)", self)
    dim = dimension % rank
    length = g.op("Gather", g.op("Shape", self), _const(g, dim))  # a scalar: the runtime size along dim
    count = g.op("Add", g.op("Div", g.op("Sub", length, _const(g, size)), _const(g, step)), _const(g, 1))
    starts = g.op("Mul", g.op("Range", _const(g, 0), count, _const(g, 1)), _const(g, step))
    index = g.op("Add", g.op("Unsqueeze", starts, _const(g, [1])), _const(g, [list(range(size))]))  # [n, size]
    windows = g.op("Gather", self, index, axis_i=dim)  # [..., n, size, ...rest]
    perm = [*range(dim + 1), *range(dim + 2, rank + 1), dim + 1]
    return g.op("Transpose", windows, perm_i=perm)


def _full(g, sizes, value, dtype, layout, device, pin_memory=None):  # noqa: ANN001, ANN202
    if symbolic_helper._is_none(dtype):
        traced = _type_utils.JitScalarType.from_value(g.original_node.output(), _type_utils.JitScalarType.UNDEFINED)
        if traced != _type_utils.JitScalarType.UNDEFINED:
            dtype = int(traced)
    return symbolic_opset9.full(g, sizes, value, dtype, layout, device, pin_memory)


_INPLACE_LOGICAL = {
    "aten::__ior_": symbolic_opset9.__or_,
    "aten::__iand_": symbolic_opset9.__and_,
    "aten::__ixor_": symbolic_opset9.__xor_,
}


def _separable_weights(op, length: int, size: int, align_corners: bool, scale: float | None) -> torch.Tensor:
    """`[size, length]`: the weights by which the 2-D resize `op` maps `length` samples of one axis to `size` samples,
    read off the op's output for the `length` unit vectors (exact: each output is one weight times 1). The vectors lie
    along the width, for either axis (the kernel is the same along both; torch's CPU kernel mishandles a width of 1)."""
    basis = torch.eye(length, dtype=torch.float32).reshape(length, 1, 1, length)  # batch k: the k-th unit vector
    with torch.no_grad():
        resized = op(basis, [1, size], align_corners, None, scale)  # [length, 1, 1, size]
    return resized.reshape(length, size).t().contiguous()


def _antialiased_resize(name: str):  # noqa: ANN202
    """The symbolic of the antialiased 2-D resize `name` (`.vec` overload or the one with per-axis scales)."""
    op = getattr(torch.ops.aten, name.split("::")[1]).default

    def symbolic(g, x, output_size, align_corners, *scales):  # noqa: ANN001, ANN202
        in_sizes = symbolic_helper._get_tensor_sizes(x)
        out_sizes = g.original_node.output().type().sizes()
        if not in_sizes or len(in_sizes) != 4 or any(not isinstance(n, int) for n in in_sizes[2:]) or not out_sizes:
            return symbolic_helper._unimplemented(name, "input or output size unknown at export", x)
        if not symbolic_helper._is_none(output_size) and not isinstance(
            symbolic_helper._maybe_get_const(output_size, "is"), (list, tuple)
        ):
            return symbolic_helper._unimplemented(name, "output size computed at run time", x)
        corners = bool(symbolic_helper._maybe_get_const(align_corners, "b"))
        if len(scales) == 1:  # .vec: scale_factors (a list) or None
            factors = None if symbolic_helper._is_none(scales[0]) else symbolic_helper._maybe_get_const(scales[0], "fs")
            per_axis = [None, None] if factors is None else list(factors)
        else:
            per_axis = [
                None if symbolic_helper._is_none(v) else symbolic_helper._maybe_get_const(v, "f") for v in scales
            ]
        if any(v is not None and not isinstance(v, float) for v in per_axis):
            return symbolic_helper._unimplemented(name, "scale factors not constant", x)
        h_in, w_in = in_sizes[2:]
        h_out, w_out = out_sizes[2:]
        rows = _separable_weights(op, h_in, h_out, corners, per_axis[0])  # [h_out, h_in]
        cols = _separable_weights(op, w_in, w_out, corners, per_axis[1]).t().contiguous()  # [w_in, w_out]
        dtype = _type_utils.JitScalarType.from_value(x, _type_utils.JitScalarType.FLOAT).dtype()
        rows_c, cols_c = (g.op("Constant", value_t=w.to(dtype)) for w in (rows, cols))
        return g.op("MatMul", rows_c, g.op("MatMul", x, cols_c))

    return symbolic


_AA_RESIZES = ("aten::_upsample_bilinear2d_aa", "aten::_upsample_bicubic2d_aa")


def _has_literal_zero(g, shape) -> bool:  # noqa: ANN001
    """Whether the traced `view` / `reshape` size holds a constant 0 (as opposed to sizes only known at run time)."""
    if symbolic_helper._is_packed_list(shape):
        sizes = [symbolic_helper._maybe_get_const(v, "i") for v in symbolic_helper._unpack_list(shape)]
    else:
        sizes = symbolic_helper._maybe_get_const(shape, "is")
    return isinstance(sizes, (list, tuple)) and any(isinstance(n, int) and n == 0 for n in sizes)


def _zero_size_reshape(default):  # noqa: ANN001, ANN202
    """`aten::view` / `aten::reshape` whose size holds a literal 0: ONNX `Reshape` with `allowzero=1`, because by
    default ONNX reads 0 as "copy the input's size here", and PyTorch as "size 0"; everything else as `default`."""

    def symbolic(g, self, shape):  # noqa: ANN001, ANN202
        if g.opset >= 14 and _has_literal_zero(g, shape):
            return symbolic_helper._reshape_helper(g, self, shape, allowzero=1)
        return default(g, self, shape)

    return symbolic


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
    torch.onnx.register_custom_op_symbolic("aten::as_strided", _as_strided, opset)
    torch.onnx.register_custom_op_symbolic("aten::unfold", _unfold, opset)
    if opset >= 16:
        torch.onnx.register_custom_op_symbolic("aten::index_add", _index_add, opset)
        torch.onnx.register_custom_op_symbolic("aten::scatter_reduce", _scatter_reduce, opset)
    torch.onnx.register_custom_op_symbolic("aten::fft_fftn", _fft_fftn, opset)
    torch.onnx.register_custom_op_symbolic("aten::fft_fft", _fft_fft, opset)
    torch.onnx.register_custom_op_symbolic("aten::real", _complex_part(0, "aten::real"), opset)
    torch.onnx.register_custom_op_symbolic("aten::imag", _complex_part(1, "aten::imag"), opset)
    torch.onnx.register_custom_op_symbolic("aten::full", _full, opset)
    torch.onnx.register_custom_op_symbolic("aten::view", _zero_size_reshape(symbolic_opset9.view), opset)
    reshape = symbolic_opset14.reshape if opset >= 14 else symbolic_opset9.reshape
    torch.onnx.register_custom_op_symbolic("aten::reshape", _zero_size_reshape(reshape), opset)
    for name, symbolic in _INPLACE_LOGICAL.items():
        torch.onnx.register_custom_op_symbolic(name, symbolic, opset)
    # `mask_a & mask_b` on boolean masks (T5Gemma2's sliding window) traces as aten::bitwise_and, which opset 17 lacks:
    # on booleans it is a logical And (torch's own symbolic, which refuses non-boolean inputs with a clear error)
    torch.onnx.register_custom_op_symbolic("aten::bitwise_and", symbolic_opset9.__and_, opset)
    torch.onnx.register_custom_op_symbolic("aten::bitwise_or", symbolic_opset9.__or_, opset)
    for name in _AA_RESIZES:
        torch.onnx.register_custom_op_symbolic(name, _antialiased_resize(name), opset)
    _registered.add(opset)
