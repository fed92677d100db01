"""QEfficient's ONNX symbolics (QEfficient/base/onnx_symbolics.py): tiny modules using each op, exported the
way QEfficient exports (TorchScript exporter, opset 17, `register_symbolics`) and run in ONNX Runtime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from QEfficient.base.modeling_qeff import DEFAULT_OPSET
from QEfficient.base.onnx_symbolics import register_symbolics


def export_and_session(
    module: torch.nn.Module, inputs: dict[str, torch.Tensor], dynamic: dict[str, dict[int, str]], path: Path
) -> ort.InferenceSession:
    register_symbolics(DEFAULT_OPSET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            input_names=list(inputs),
            output_names=["out"],
            dynamic_axes=dynamic,
            opset_version=DEFAULT_OPSET,
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class FFT(torch.nn.Module):
    def __init__(self, dim: tuple[int, ...], norm: str | None, part: str, one_dim: bool = False) -> None:
        super().__init__()
        self.dim, self.norm, self.part, self.one_dim = dim, norm, part, one_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_dim:  # FNet's TPU path: one 1-D fft per axis, the second on a complex input
            y = x
            for d in self.dim:
                y = torch.fft.fft(y, dim=d, norm=self.norm)
        else:
            y = torch.fft.fftn(x, dim=self.dim, norm=self.norm)
        return y.real if self.part == "real" else y.imag


@pytest.mark.parametrize(
    ("dim", "norm", "part", "one_dim"),
    [((1, 2), None, "real", False), ((1, 2), "ortho", "imag", False), ((0, -1), "forward", "real", False),
     ((2, 1), None, "imag", True)],
)  # fmt: skip
def test_fft_matches_torch_at_other_lengths(
    tmp_path: Path, dim: tuple[int, ...], norm: str | None, part: str, one_dim: bool
) -> None:
    """Traced at one shape, run at others: the DFT matrices come from the runtime lengths."""
    module = FFT(dim, norm, part, one_dim)
    dynamic = {"x": {0: "batch", 1: "seq", 2: "hidden"}}
    session = export_and_session(module, {"x": torch.randn(2, 5, 8)}, dynamic, tmp_path / "fft.onnx")
    for shape in [(2, 5, 8), (3, 11, 32), (1, 64, 48)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        got = session.run(None, {"x": x.numpy()})[0]
        expected = module(x).numpy()
        assert got.shape == expected.shape
        # unnormalised sums grow with the element count: compare relative to the largest value
        assert np.max(np.abs(got - expected)) <= 1e-6 * max(1.0, float(np.max(np.abs(expected)))), shape


def test_fft_result_used_as_complex_is_refused(tmp_path: Path) -> None:
    """Anything but .real/.imag (or another fft) would receive the (real, imag) pair: export must fail."""

    class Abs(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fftn(x, dim=(1, 2)).abs()

    with pytest.raises(Exception, match="fft_fftn"):
        export_and_session(Abs(), {"x": torch.randn(2, 5, 8)}, {}, tmp_path / "abs.onnx")


class ScatterReduce(torch.nn.Module):
    def __init__(self, reduce: str, include_self: bool) -> None:
        super().__init__()
        self.reduce, self.include_self = reduce, include_self

    def forward(self, base: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        return base.scatter_reduce(1, index, src, reduce=self.reduce, include_self=self.include_self)


@pytest.mark.parametrize(
    ("reduce", "include_self"),
    [("sum", False), ("prod", False), ("amax", False), ("amin", False), ("mean", False), ("mean", True)],
)
def test_scatter_reduce_matches_torch(tmp_path: Path, reduce: str, include_self: bool) -> None:
    """Repeated indices, positions no index reaches, and an index narrower than src (TAPAS's segment ops)."""
    generator = torch.Generator().manual_seed(7)
    base = torch.randn(3, 6, generator=generator)
    index = torch.tensor([[0, 0, 2, 2, 2], [5, 1, 1, 0, 5], [3, 3, 3, 3, 3]])
    src = torch.randn(3, 7, generator=generator)  # wider than index: torch ignores the extra columns
    module = ScatterReduce(reduce, include_self)
    inputs = {"base": base, "index": index, "src": src}
    session = export_and_session(module, inputs, {}, tmp_path / "scatter.onnx")
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    np.testing.assert_allclose(got, module(base, index, src).numpy(), rtol=1e-6, atol=1e-6)


def test_scatter_reduce_integer_amin(tmp_path: Path) -> None:
    """TAPAS's form: `zeros(n).scatter_reduce(0, index, values, "amin", include_self=False)` on integers."""
    module = ScatterReduce("amin", include_self=False)
    inputs = {
        "base": torch.zeros(2, 4, dtype=torch.int64),
        "index": torch.tensor([[0, 0, 1, 3], [2, 2, 2, 2]]),
        "src": torch.tensor([[5, 3, 9, -4], [7, 8, 6, 10]]),
    }
    session = export_and_session(module, inputs, {}, tmp_path / "scatter_int.onnx")
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    np.testing.assert_array_equal(got, module(*inputs.values()).numpy())


class Strided(torch.nn.Module):
    """Overlapping pairs of rows, as Longformer's `_chunk`, of the input or of its (non-contiguous) transpose."""

    def __init__(self, transpose: bool) -> None:
        super().__init__()
        self.transpose = transpose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(0, 1) if self.transpose else x * 1
        row, col = x.stride()
        return x.as_strided((x.shape[0] - 1, 2, x.shape[1]), (row, row, col))


def test_as_strided_static_contiguous_matches_torch(tmp_path: Path) -> None:
    module = Strided(transpose=False)
    x = torch.randn(5, 3)
    session = export_and_session(module, {"x": x}, {}, tmp_path / "strided.onnx")
    np.testing.assert_array_equal(session.run(None, {"x": x.numpy()})[0], module(x).numpy())


@pytest.mark.parametrize(
    ("transpose", "dynamic", "reason"), [(True, False, "non-contiguous"), (False, True, "dynamic")]
)
def test_as_strided_refused_where_torch_would_be_silently_wrong(
    tmp_path: Path, transpose: bool, dynamic: bool, reason: str
) -> None:
    """A non-contiguous input (torch's symbolic ignores the memory layout) or a dynamic shape (indices baked)."""
    axes = {"x": {0: "rows"}} if dynamic else {}
    with pytest.raises(Exception, match=f"as_strided.*{reason}"):
        export_and_session(Strided(transpose), {"x": torch.randn(5, 3)}, axes, tmp_path / "strided.onnx")


class FullPositionIds(torch.nn.Module):
    """Idefics2's vision position ids: `torch.full(..., fill_value=0)` (int64 in PyTorch) beside int64 bucket ids in a
    `where`, the result indexing an embedding table."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(16, 4)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        ids = torch.full(size=mask.shape, fill_value=0)
        buckets = torch.arange(mask.shape[1]).expand_as(ids)
        return self.table(torch.where(mask, buckets, ids))


def test_full_without_dtype_keeps_the_fill_values_dtype(tmp_path: Path) -> None:
    module = FullPositionIds()
    mask = torch.tensor([[True, False, True, True], [False, True, True, False]])
    session = export_and_session(module, {"mask": mask}, {"mask": {0: "b", 1: "n"}}, tmp_path / "full.onnx")
    for shape_mask in (mask, torch.ones(1, 7, dtype=torch.bool)):  # another shape: the dtype is not a traced constant
        got = session.run(None, {"mask": shape_mask.numpy()})[0]
        np.testing.assert_array_equal(got, module(shape_mask).detach().numpy())


class InPlaceLogical(torch.nn.Module):
    """SmolVLM's `real_images_inds[0] |= ~torch.any(real_images_inds)`, and `&=` / `^=` likewise, on a view."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real = (x == 0.0).sum(dim=-1) != x.shape[-1]
        flag = ~torch.any(real)
        if self.op == "or":
            real[0] |= flag
        elif self.op == "and":
            real[1] &= flag
        else:
            real[2] ^= flag
        return real.long()


@pytest.mark.parametrize("op", ["or", "and", "xor"])
def test_in_place_bool_logical_ops_write_back(tmp_path: Path, op: str) -> None:
    module = InPlaceLogical(op)
    x = torch.zeros(3, 4)
    session = export_and_session(module, {"x": x}, {}, tmp_path / "ior.onnx")
    for k in (0.0, 1.0):  # no real row (the flag is set), then one real row
        x = torch.zeros(3, 4)
        x[1, 2] = k
        np.testing.assert_array_equal(session.run(None, {"x": x.numpy()})[0], module(x).numpy())


class BoolMaskCombination(torch.nn.Module):
    """T5Gemma2's masks: `&` and `|` of boolean masks (traced as aten::bitwise_and / bitwise_or)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1])
        causal = positions[None, :] <= positions[:, None]
        window = torch.bitwise_and(positions[:, None] - positions[None, :] < 3, causal)
        padding = torch.bitwise_or(x[:, None, :] > 0, window[None])
        return padding.long()


def test_bitwise_and_or_on_boolean_masks(tmp_path: Path) -> None:
    module = BoolMaskCombination()
    session = export_and_session(module, {"x": torch.zeros(2, 5)}, {"x": {1: "seq"}}, tmp_path / "masks.onnx")
    for length in (5, 7):
        x = (torch.arange(2 * length).reshape(2, length) % 3 == 0).float()
        np.testing.assert_array_equal(session.run(None, {"x": x.numpy()})[0], module(x).numpy())


class AntialiasedResize(torch.nn.Module):
    """Cosmos3-Edge's resize of a learned position grid (a parameter) to the image's patch grid."""

    def __init__(self, mode: str, size: tuple[int, int] | None, scale: tuple[float, float] | None, corners: bool):
        super().__init__()
        self.grid = torch.nn.Parameter(torch.randn(1, 8, 7, 11, generator=torch.Generator().manual_seed(3)))
        self.mode, self.size, self.scale, self.corners = mode, size, scale, corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        resized = torch.nn.functional.interpolate(
            self.grid, self.size, self.scale, mode=self.mode, align_corners=self.corners, antialias=True
        )
        return resized * x


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize(
    ("size", "scale", "corners"),
    [((4, 6), None, False), ((9, 3), None, True), ((16, 16), None, False), (None, (0.6, 0.3), False)],
)  # fmt: skip
def test_antialiased_resize_matches_torch(
    tmp_path: Path, mode: str, size: tuple[int, int] | None, scale: tuple[float, float] | None, corners: bool
) -> None:
    """Down- and upsampling, align_corners, explicit scales: within float rounding of PyTorch's kernel."""
    module = AntialiasedResize(mode, size, scale, corners)
    one = torch.ones(1)
    session = export_and_session(module, {"x": one}, {}, tmp_path / "resize.onnx")
    got = session.run(None, {"x": one.numpy()})[0]
    np.testing.assert_allclose(got, module(one).detach().numpy(), rtol=0, atol=1e-5)


class ZeroWidthView(torch.nn.Module):
    """MistralLarge4's no-rope layers: `k_rot.view(batch, 1, seq, 0)` of a zero-width split, sizes read at run time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, empty = torch.split(x, [4, 0], dim=-1)
        empty = empty.view(x.shape[0], 1, x.shape[1], 0)
        return torch.cat([kept.reshape(x.shape[0], 1, x.shape[1], 4), empty], dim=-1) * 2


def test_view_with_a_literal_zero_size(tmp_path: Path) -> None:
    """ONNX `Reshape` reads a 0 as "keep the input's size" unless `allowzero=1`; PyTorch means size 0."""
    module = ZeroWidthView()
    x = torch.randn(2, 3, 4)
    session = export_and_session(module, {"x": x}, {"x": {1: "seq"}}, tmp_path / "zero.onnx")
    for seq in (3, 5):
        x = torch.randn(2, seq, 4)
        np.testing.assert_array_equal(session.run(None, {"x": x.numpy()})[0], module(x).numpy())
