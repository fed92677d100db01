"""QEfficient/base/export_patches.py: model code the TorchScript tracer cannot record (custom autograd Functions
calling submodules, as Reformer's reversible layers; scatter with a bool value, as AXK2's index mask) exports
inside the patches and matches torch in ONNX Runtime."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from QEfficient.base.export_patches import export_patches, inline_autograd_functions


class Reversible(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layers: torch.nn.ModuleList, scale: float) -> torch.Tensor:
        for layer in layers:
            x = layer(x) * scale
        ctx.save_for_backward(x.detach())
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Reversible.apply(x, self.layers, 0.5)


def export(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}}, dynamo=False
        )


def test_function_calling_submodules_exports_and_matches(tmp_path: Path) -> None:
    model = Model().eval()
    with pytest.raises(RuntimeError, match="unordered_map"):  # what the tracer does without the patch
        with torch.no_grad():
            export(model, torch.randn(2, 8), tmp_path / "plain.onnx")
    with torch.no_grad(), inline_autograd_functions():
        export(model, torch.randn(2, 8), tmp_path / "inlined.onnx")
    session = ort.InferenceSession(str(tmp_path / "inlined.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, rtol=1e-6, atol=1e-6)


def test_apply_is_restored_and_untouched_outside_tracing() -> None:
    original = torch.autograd.Function.__dict__["apply"]
    model = Model()
    with inline_autograd_functions():
        y = model(torch.randn(2, 8, requires_grad=True))  # not tracing: the ordinary apply, with its backward
        assert type(y.grad_fn).__name__ == "ReversibleBackward"
    assert torch.autograd.Function.__dict__["apply"] is original


class BoolScatter(torch.nn.Module):
    """AXK2's index mask: `ones(..., dtype=bool).scatter(-1, idx, False)`."""

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        keep = x.new_ones(x.shape, dtype=torch.bool).scatter(-1, index, False)
        return x.masked_fill(~keep, -1.0)


def test_scatter_with_a_bool_value_exports_and_matches(tmp_path: Path) -> None:
    x, index = torch.randn(2, 6), torch.tensor([[0, 3], [5, 5]])
    original = torch.Tensor.scatter
    with torch.no_grad(), export_patches(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            BoolScatter(), (x, index), str(tmp_path / "scatter.onnx"), input_names=["x", "index"], dynamo=False
        )
    session = ort.InferenceSession(str(tmp_path / "scatter.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy(), "index": index.numpy()})[0]
    np.testing.assert_array_equal(got, BoolScatter()(x, index).numpy())
    assert torch.Tensor.scatter is original
