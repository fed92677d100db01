"""QEFFBaseModel: the lifecycle every QEfficient model shares.

    transforms (in __init__) -> export() -> ONNX transforms -> compile() -> run

It knows nothing about text. Subclasses say what to export (example inputs, output names, dynamic axes)
and what to compile (specialisations); this class hashes, caches, exports and compiles.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import onnx
import torch
from torch import nn

import QEfficient
from QEfficient.backends import Program, Specialization, get_backend, program_from_manifest
from QEfficient.base.export_patches import export_patches
from QEfficient.base.onnx_symbolics import register_symbolics
from QEfficient.base.onnx_transforms import AddMetadataTransform, OnnxTransform, RemoveUnusedInitializersTransform
from QEfficient.base.pytorch_transforms import PytorchTransform, transform_name
from QEfficient.utils.cache import build_artifact, hash_params, qeff_home

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
DEFAULT_OPSET = 17
SINGLE_GRAPH = "model"  # the graph name of a one-graph export (model.onnx)


@dataclass
class GraphExport:
    """One graph to export from the wrapped module: example inputs (their order is the module's argument order),
    output names, and the dynamic axes (dims not named there stay the example's sizes)."""

    example_inputs: dict[str, torch.Tensor]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]


def weights_digest(model: nn.Module) -> str:
    """Identity of a model's weights: a hash over every parameter and buffer (name, dtype, shape, bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        if tensor.is_meta:
            raise ValueError(f"Weight {name} is on the meta device; materialise the model before export.")
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def graph_code_digest() -> str:
    """Digest of QEfficient's own source that shapes exported graphs (transforms, cache, masks, attention,
    adapters, ONNX symbolics): a change there must not reuse an export cached by older code."""
    root = Path(__file__).resolve().parents[1]
    return _source_digest(root, [*(root / "base").glob("*.py"), *(root / "transformers").rglob("*.py")])


@functools.lru_cache(maxsize=1)
def backend_code_digest() -> str:
    """Digest of the backends' source (graph rewrites, quantisation, manifest contents): a change there must not
    reuse a program compiled by older code."""
    root = Path(__file__).resolve().parents[1]
    return _source_digest(root, list((root / "backends").glob("*.py")))


def _source_digest(root: Path, paths: list[Path]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class QEFFBaseModel(ABC):
    """Base of every QEfficient model: PyTorch transforms, cached export, cached compile.

    Class attributes `_pytorch_transforms` and `_onnx_transforms` list the transforms applied, in order,
    to the wrapped module at construction and to the exported graph after export. An instance may add
    configured transforms through `extra_pytorch_transforms`.
    """

    _pytorch_transforms: ClassVar[list[type[PytorchTransform] | PytorchTransform]] = []
    _onnx_transforms: ClassVar[list[type[OnnxTransform]]] = [RemoveUnusedInitializersTransform, AddMetadataTransform]

    def __init__(
        self, model: nn.Module, extra_pytorch_transforms: list[PytorchTransform] | None = None, **kwargs: Any
    ) -> None:
        self.transforms = [*self._pytorch_transforms, *(extra_pytorch_transforms or [])]
        self.applied_transforms: list[str] = []
        for transform in self.transforms:
            model, applied = transform.apply(model)
            if applied:
                self.applied_transforms.append(transform_name(transform))
        self.model = model.eval()
        self.hash_kwargs = dict(kwargs)
        self.onnx_path: Path | None = None
        self.onnx_paths: dict[str, Path] = {}
        self.export_checks: dict[str, Any] = {}
        self.export_hash: str | None = None
        self.program_path: Path | None = None
        self._program: Program | None = None
        self._weights_digest: str | None = None

    # ---- identity ------------------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        """Name of the wrapped model's class."""
        return type(self.model).__name__

    @property
    def model_hash(self) -> str:
        """Hash of what determines the wrapped model: its class, configuration, weights and transforms."""
        return hash_params(self._model_identity())

    def _model_identity(self) -> dict[str, Any]:
        if self._weights_digest is None:
            self._weights_digest = weights_digest(self.model)
        config = getattr(self.model, "config", None)
        return {
            "qeff_class": type(self).__name__,
            "model_class": self.model_name,
            "config": config.to_diff_dict() if hasattr(config, "to_diff_dict") else None,
            # not in to_diff_dict(), yet it changes the traced graph
            "attn_implementation": getattr(config, "_attn_implementation", None),
            "weights": self._weights_digest,
            "pytorch_transforms": [transform_name(t) for t in self.transforms],
            "export_identity": getattr(self.model, "export_identity", None),
            **self.hash_kwargs,
        }

    @property
    def cache_root(self) -> Path:
        """Directory under `$QEFF_HOME` for this model's artefacts."""
        return qeff_home() / self.model_name

    # ---- export ------------------------------------------------------------------------------------

    @abstractmethod
    def export(self, export_dir: str | Path | None = None) -> Path:
        """Export the transformed model to ONNX (cached); return the graph's path."""

    def _export(
        self,
        example_inputs: dict[str, torch.Tensor],
        output_names: list[str],
        dynamic_axes: dict[str, dict[int, str]],
        export_dir: str | Path | None = None,
        opset: int = DEFAULT_OPSET,
        check: Callable[[dict[str, Path]], dict[str, Any]] | None = None,
    ) -> Path:
        """Export one graph (`model.onnx`); see `_export_graphs`."""
        graph = GraphExport(example_inputs, output_names, dynamic_axes)
        return self._export_graphs({SINGLE_GRAPH: graph}, export_dir, opset, check)

    def _export_graphs(
        self,
        graphs: dict[str, GraphExport],
        export_dir: str | Path | None = None,
        opset: int = DEFAULT_OPSET,
        check: Callable[[dict[str, Path]], dict[str, Any]] | None = None,
    ) -> Path:
        """Export the wrapped module as one or more named graphs into one cached directory (`{name}.onnx`, with
        its weights in `{name}.onnx.data`); several graphs are traced from the same module at different example
        shapes (e.g. the prefill and decode graphs of a model with recurrent state). Returns the first graph's
        path; `onnx_paths` has them all.

        `check(paths)` runs on the fresh graphs before the export is cached; what it returns is kept in the
        manifest (`export_checks`), so a cached export is not checked again."""
        params = {
            **self._model_identity(),
            "graphs": {
                name: {
                    "input_names": list(graph.example_inputs),
                    "example_shapes": {n: list(t.shape) for n, t in graph.example_inputs.items()},  # static dims
                    "output_names": graph.output_names,
                    "dynamic_axes": graph.dynamic_axes,
                }
                for name, graph in graphs.items()
            },
            "opset": opset,
            "exporter": "torchscript",
            "onnx_transforms": [t.__name__ for t in self._onnx_transforms],
            "versions": {"qefficient": QEfficient.__version__, "torch": torch.__version__, "onnx": onnx.__version__},
            "graph_code": graph_code_digest(),
        }
        export_hash = hash_params(params)
        directory = Path(export_dir) if export_dir else self.cache_root / f"{self.model_name}-{export_hash}"

        def build(tmp: Path) -> dict[str, Any]:
            files = {}
            context = {
                "export_hash": export_hash,
                "version": QEfficient.__version__,
                "transforms": ",".join(self.applied_transforms),
            }
            for name, graph in graphs.items():
                raw = tmp / "raw"
                raw.mkdir()
                self._torch_export(graph.example_inputs, graph.output_names, graph.dynamic_axes, raw / ONNX_FILE, opset)
                model = onnx.load(str(raw / ONNX_FILE))
                for transform in self._onnx_transforms:
                    model, _ = transform.apply(model, **context)
                shutil.rmtree(raw)
                files[name] = f"{name}.onnx"
                onnx.save_model(
                    model,
                    str(tmp / files[name]),
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=f"{name}.onnx.data",
                    size_threshold=1024,
                )
            first = next(iter(files.values()))
            checks = check({name: tmp / file for name, file in files.items()}) if check else {}
            return {
                "kind": "export",
                "export_hash": export_hash,
                "hash_params": params,
                "onnx": first,
                "graphs": files,
                "checks": checks,
            }

        directory, manifest = build_artifact(directory, build, description="ONNX export")
        files = manifest.get("graphs") or {SINGLE_GRAPH: manifest["onnx"]}
        self.onnx_paths = {name: directory / file for name, file in files.items()}
        self.onnx_path = directory / manifest["onnx"]
        self.export_hash = manifest["export_hash"]
        self.export_checks = manifest.get("checks", {})
        return self.onnx_path

    def _torch_export(
        self,
        example_inputs: dict[str, torch.Tensor],
        output_names: list[str],
        dynamic_axes: dict[str, dict[int, str]],
        path: Path,
        opset: int,
    ) -> None:
        self.model.eval()  # the TorchScript exporter leaves submodules in train mode otherwise
        with warnings.catch_warnings(), torch.no_grad(), export_patches():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
            register_symbolics(opset)
            torch.onnx.export(
                self.model,
                tuple(example_inputs.values()),
                str(path),
                input_names=list(example_inputs),
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        self.model.eval()

    # ---- compile -----------------------------------------------------------------------------------

    @abstractmethod
    def compile(self, *args: Any, **kwargs: Any) -> Path:
        """Compile the exported graph (exporting first if needed); return the program's directory."""

    def _compile(
        self,
        specializations: list[Specialization] | dict[str, list[Specialization]],
        backend: str = "onnxruntime",
        compile_dir: str | Path | None = None,
        metadata: dict[str, Any] | None = None,
        **backend_options: Any,
    ) -> Path:
        """Compile the exported graph for `specializations`; for a multi-graph export, a dict from graph name to
        that graph's specialisations (each graph is compiled into its own subdirectory, and the opened program
        sends each run to the graph whose specialisation matches). `metadata` is recorded in the program's manifest
        (what running the program needs beyond the graph, e.g. the causal LM's generation settings); it must follow
        from the export and the specialisations, which the program's hash covers."""
        if self.onnx_path is None:
            self.export()
        per_graph = specializations if isinstance(specializations, dict) else {SINGLE_GRAPH: specializations}
        if set(per_graph) != set(self.onnx_paths):
            raise ValueError(
                f"Specialisations are given for graphs {sorted(per_graph)}; the export has {sorted(self.onnx_paths)}."
            )
        engine = get_backend(backend)
        params = {
            "export_hash": self.export_hash,
            "backend": engine.name,
            "backend_version": engine.version,
            "backend_code": backend_code_digest(),
            "specializations": specializations,
            "options": backend_options,
        }
        compile_hash = hash_params(params)
        directory = (
            Path(compile_dir) if compile_dir else self.onnx_path.parent / "compiled" / f"{engine.name}-{compile_hash}"
        )

        def build(tmp: Path) -> dict[str, Any]:
            provenance = {
                "kind": "program",
                "backend": engine.name,
                "compile_hash": compile_hash,
                "source_export_hash": params["export_hash"],
                **(metadata or {}),
            }
            if not isinstance(specializations, dict):
                return {**engine.compile(self.onnx_path, tmp, specializations, backend_options), **provenance}
            graphs = {}
            for name, specs in specializations.items():
                (tmp / name).mkdir()
                graphs[name] = engine.compile(self.onnx_paths[name], tmp / name, specs, backend_options)
            return {"graphs": graphs, **provenance}

        directory, manifest = build_artifact(directory, build, description=f"{engine.name} program")
        self.program_path = directory
        self._program = program_from_manifest(directory, manifest)
        return directory

    @property
    def program(self) -> Program:
        """The opened compiled program; a clear error if `compile()` has not run."""
        if self._program is None:
            raise RuntimeError(f"{type(self).__name__} is not compiled yet; call .compile(...) first.")
        return self._program
