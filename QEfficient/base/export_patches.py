"""Scoped patches that let the TorchScript tracer record model code it otherwise cannot.

- Custom `torch.autograd.Function`s (Reformer's reversible layers, `_ReversibleFunction`): the tracer records
  `Function.apply` as one opaque `prim::PythonOp` and traces its `forward` as a subgraph; a forward that calls
  submodules (their parameters are not inputs of that subgraph) dies inside the tracer with
  `RuntimeError: unordered_map::at`. An exported graph is inference only, so there is no backward to keep:
  while tracing with gradients off, `apply` runs `forward` directly (with a stand-in `ctx`) and the tracer
  records its ops inline, as the exporter's own `autograd_inlining` would. A Function that defines a
  `symbolic` (its own ONNX export) keeps the ordinary `apply`.
- `Tensor.scatter(dim, index, value)` with a Python bool `value` (AXK2's top-k index mask,
  `ones(..., dtype=bool).scatter(-1, idx, False)`): the tracer records it with a `bool` argument that no
  `aten::scatter` schema takes and fails an INTERNAL ASSERT in alias analysis. While tracing, the bool is passed
  as the int 0 or 1, which scatter casts to the tensor's dtype exactly as it casts the bool.
- `round(x, n)` on a 0-d tensor (LLaVA-NeXT's unpadding computes sizes from traced shapes, which are 0-d tensors
  while tracing): `Tensor` defines no `__round__`. While tracing, it rounds to a Python number, as it does with
  eager shapes; the sizes of a static image geometry are constants of the graph anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

_SETUP_CONTEXT_BASE = torch.autograd.function._SingleLevelFunction.setup_context


class _InferenceCtx:
    """What a Function's `forward` may call on `ctx`, with nothing kept for a backward that never runs."""

    needs_input_grad: tuple[bool, ...] = ()
    saved_tensors: tuple[torch.Tensor, ...] = ()

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        self.saved_tensors = tensors

    def mark_dirty(self, *tensors: torch.Tensor) -> None:
        pass

    def mark_non_differentiable(self, *tensors: torch.Tensor) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        pass


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    """Every patch above, for the duration of one export."""
    with inline_autograd_functions(), scatter_bool_values_as_int(), round_scalar_tensors():
        yield


@contextlib.contextmanager
def round_scalar_tensors() -> Iterator[None]:
    """Within the block, `round()` of a one-element tensor gives the rounded Python number."""
    had = "__round__" in vars(torch.Tensor)

    def tensor_round(self: torch.Tensor, ndigits: int | None = None) -> Any:
        return round(self.item(), ndigits)

    torch.Tensor.__round__ = tensor_round  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if not had:
            del torch.Tensor.__round__


@contextlib.contextmanager
def scatter_bool_values_as_int() -> Iterator[None]:
    """Within the block, a Python bool argument of `scatter` / `scatter_` becomes an int while tracing."""
    originals = {name: getattr(torch.Tensor, name) for name in ("scatter", "scatter_")}

    def patched(original: Any) -> Any:
        def scatter(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if torch.jit.is_tracing():
                args = tuple(int(a) if isinstance(a, bool) else a for a in args)
                kwargs = {k: int(v) if isinstance(v, bool) else v for k, v in kwargs.items()}
            return original(self, *args, **kwargs)

        return scatter

    for name, original in originals.items():
        setattr(torch.Tensor, name, patched(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@contextlib.contextmanager
def inline_autograd_functions() -> Iterator[None]:
    """Within the block, `Function.apply` runs `forward` inline while tracing without gradients."""
    original = torch.autograd.Function.__dict__["apply"]

    def apply(cls: type[torch.autograd.Function], *args: Any, **kwargs: Any) -> Any:
        if torch.jit.is_tracing() and not torch.is_grad_enabled() and not hasattr(cls, "symbolic"):
            if cls.setup_context is not _SETUP_CONTEXT_BASE:  # forward(*args) without ctx
                return cls.forward(*args, **kwargs)
            return cls.forward(_InferenceCtx(), *args, **kwargs)
        return original.__func__(cls, *args, **kwargs)

    torch.autograd.Function.apply = classmethod(apply)  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.autograd.Function.apply = original  # type: ignore[method-assign]
