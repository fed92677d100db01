"""Backends that compile and run exported graphs. `get_backend(name)` returns one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from QEfficient.backends.base import Backend, MultiGraphProgram, Program, Specialization

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


def program_from_manifest(directory: str | Path, manifest: dict[str, Any], **session_options: Any) -> Program:
    """Open the compiled program in `directory` described by `manifest` (one graph, or several in subdirectories)."""
    directory = Path(directory)
    backend = get_backend(manifest["backend"])
    if "graphs" in manifest:
        graphs = {
            name: backend.open(directory / name, meta, **session_options) for name, meta in manifest["graphs"].items()
        }
        return MultiGraphProgram(manifest, graphs)
    return backend.open(directory, manifest, **session_options)


def open_program(directory: str | Path, **session_options: Any) -> Program:
    """Open a compiled program directory (what `compile()` returns) on its own: neither the model that produced it
    nor PyTorch is needed. The files are checked against the manifest first; a damaged program is a clear error."""
    from QEfficient.utils.cache import read_manifest

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"No compiled program at {directory}: pass the directory that compile() returned.")
    manifest = read_manifest(directory)
    if manifest.get("kind") != "program":
        raise ValueError(
            f"{directory} holds a {manifest.get('kind', 'non-program')} artefact, not a compiled program: pass the "
            "directory that compile() returned (under the export's compiled/ folder)."
        )
    return program_from_manifest(directory, manifest, **session_options)


def _register_builtin() -> None:
    from QEfficient.backends.onnxruntime import OnnxRuntimeBackend

    register_backend(OnnxRuntimeBackend)


_register_builtin()

__all__ = [
    "Backend",
    "Program",
    "Specialization",
    "get_backend",
    "open_program",
    "program_from_manifest",
    "register_backend",
]
