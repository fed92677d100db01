"""Backends that compile and run exported graphs. `get_backend(name)` returns one by name."""

from __future__ import annotations

from QEfficient.backends.base import Backend, Program, Specialization

_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(backend: type[Backend]) -> type[Backend]:
    """Make a backend class available to `compile(backend=...)` under its `name`."""
    _BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """Instantiate the backend called `name`; a clear error lists the registered ones."""
    if name not in _BACKENDS:
        raise ValueError(f"Unknown backend {name!r}; available: {', '.join(sorted(_BACKENDS))}.")
    return _BACKENDS[name]()


def _register_builtin() -> None:
    from QEfficient.backends.onnxruntime import OnnxRuntimeBackend

    register_backend(OnnxRuntimeBackend)


_register_builtin()

__all__ = ["Backend", "Program", "Specialization", "get_backend", "register_backend"]
