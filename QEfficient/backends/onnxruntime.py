"""The ONNX Runtime backend.

compile: the graph is optimised offline once (ORT's extended level, hardware independent) and saved with
its weights in one external data file; the manifest records the specialisations. open: ONE ORT session
serves every specialisation, so the weights (and ORT's pre-packed copies of them) are in memory once. The
dimensions that all specialisations give the same size are pinned in that session as free-dimension
overrides; those that differ (e.g. `seq_len`: prefill P, decode 1) stay symbolic. The program still accepts
only the compiled shapes: `run` checks every input against the specialisations first.

Options: `optimization_level` (offline, default "extended"), `session_optimization_level` (default "all"),
`providers`, `fuse_attention` (default True: each layer's KV write, rotary embedding and attention become one ONNX
Runtime `GroupQueryAttention` where the graph allows it, `QEfficient/backends/attention_fusion.py`; the manifest lists
the fused layers, and such a program takes right-padded positions only), `pack_weights` (default True: MatMuls
that read the same input become one, `QEfficient/backends/weight_packing.py`), `split_weights_mb` (MatMul weights larger
than this are split into column blocks, so that opening the program peaks lower: `QEfficient/backends/weight_split.py`;
default 16, 0 = never), and weight quantisation
(`QEfficient/backends/quantization.py`): `weights` ("fp32" | "int8" | "int4"), `block_size` (32),
`accuracy_level` (4), `symmetric` (True), `exact_grids` (True: weights already on a quantisation grid, as a GGUF
checkpoint's, are kept on it exactly; `QEfficient/backends/exact_grids.py`); or `weights="int8-dynamic"` (ONNX
Runtime's dynamic int8 quantisation, what encoders' `weights="int8"` becomes; the manifest's `int8_dynamic` says
which MatMuls kept fp32); or `weights="checkpoint"` with `checkpoint_weights` (a records file): a pre-quantised
checkpoint's own integer weights as `MatMulNBits` (`QEfficient/backends/checkpoint_weights.py`; the manifest's
`checkpoint_weights` says which format and what was kept).

The state analysis `in_place_states` (recorded in the manifest) lets `run_with_state` write each retained-state
output into its input's own buffer.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from QEfficient.backends.attention_fusion import check_fused_positions, fuse_attention_file
from QEfficient.backends.base import Backend, Program, Specialization, check_specializations
from QEfficient.backends.checkpoint_weights import apply_checkpoint_weights
from QEfficient.backends.graph_shapes import inferred_shapes
from QEfficient.backends.norm_fusion import fuse_skip_norms
from QEfficient.backends.quantization import (
    CHECKPOINT,
    DEFAULT_ACCURACY_LEVEL,
    DEFAULT_BLOCK_SIZE,
    DYNAMIC_INT8,
    check_weight_options,
    quantize_dynamic_int8,
    quantize_weights,
)
from QEfficient.backends.weight_packing import pack_weights
from QEfficient.backends.weight_split import DEFAULT_SPLIT_WEIGHTS_MB, split_large_weights

logger = logging.getLogger(__name__)

PROGRAM_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"
_OPTIONS = (
    "optimization_level",
    "session_optimization_level",
    "providers",
    "split_weights_mb",
    "fuse_attention",
    "pack_weights",
)
QUANTIZATION_OPTIONS = ("weights", "block_size", "accuracy_level", "symmetric", "exact_grids", "checkpoint_weights")
_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def default_num_threads() -> int:
    """Threads for one session: `$QEFF_NUM_THREADS`, else the cores this process may use."""
    if os.environ.get("QEFF_NUM_THREADS"):
        return int(os.environ["QEFF_NUM_THREADS"])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def graph_input_dims(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Input name -> dims (ints for fixed sizes, symbol names for dynamic ones), initializers excluded."""
    initializers = {t.name for t in model.graph.initializer}
    return {
        i.name: [d.dim_param if d.HasField("dim_param") else d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
        if i.name not in initializers
    }


# Ops that may write an output into the memory of one of their inputs, as {output index: input index}: ONNX Runtime's
# scatters copy the data input to the output (nothing to do when both are one buffer) and then write the updates;
# `GroupQueryAttention` writes the new keys and values into the past buffers when present and past share one.
# Element-wise ops are not among them: ONNX Runtime's `Where`, for one, fills its output in two passes and would read
# an input it already overwrote (measured: Zaya's recurrent state, written by `Where`, went wrong in place).
_IN_PLACE_INPUTS = {"ScatterElements": {0: 0}, "ScatterND": {0: 0}, "GroupQueryAttention": {1: 3, 2: 4}}
_METADATA_OPS = ("Shape", "Size")  # they read a tensor's shape, never its data


def in_place_states(model: onnx.ModelProto) -> list[str]:
    """Retained-state inputs `X` whose output `X_RetainedState` can be written into `X`'s own buffer.

    That holds when the node producing the output writes it over `X` (a scatter whose data input is `X`, or fused
    attention's present keys/values over its past ones: `_IN_PLACE_INPUTS`), and every other node reading
    `X`'s data is one of its ancestors, so it runs first in any topological order. Then binding
    the output to the input's memory makes the step update the cache in place: no copy of the whole cache per step,
    and one buffer instead of two. A state that the graph passes through unchanged (`Identity`) is always in place.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    in_subgraphs = {
        name
        for node in graph.node
        for attr in node.attribute
        for sub in [attr.g, *attr.graphs]
        for inner in sub.node
        for name in inner.input
    }
    outputs = {o.name for o in graph.output}
    safe = []
    for value in graph.input:
        name = value.name
        writer = producer.get(f"{name}_RetainedState")
        if f"{name}_RetainedState" not in outputs or writer is None or name in in_subgraphs:
            continue
        if writer.op_type == "Identity" and list(writer.input) == [name]:
            # a state passed through unchanged (a speech decoder's cross-attention keys and values): written over
            # itself, ONNX Runtime's Identity copies nothing, so readers may run before or after it
            safe.append(name)
            continue
        over = _IN_PLACE_INPUTS.get(writer.op_type, {}).get(list(writer.output).index(f"{name}_RetainedState"))
        if over is None or over >= len(writer.input) or writer.input[over] != name:
            continue
        if sum(1 for i in writer.input if i == name) > 1:  # e.g. also the scatter's updates
            continue
        ancestors, stack = set(), list(writer.input)
        while stack:
            node = producer.get(stack.pop())
            if node is not None and id(node) not in ancestors:
                ancestors.add(id(node))
                stack.extend(node.input)
        if all(
            reader is writer or id(reader) in ancestors or reader.op_type in _METADATA_OPS for reader in readers[name]
        ):
            safe.append(name)
    return safe


_FUSION_BUG = "Attempt to replace the existing tensor"


class OnnxRuntimeProgram(Program):
    """A compiled ORT program: one session for all specialisations, created on first use."""

    def __init__(self, program_dir: Path, manifest: dict[str, Any], num_threads: int | None = None) -> None:
        super().__init__(manifest)
        self.path = Path(program_dir) / manifest.get("file", PROGRAM_FILE)
        self.num_threads = num_threads or default_num_threads()
        self.providers = manifest["options"].get("providers") or default_providers()
        self._session: ort.InferenceSession | None = None
        self.other_outputs = [name for name in self.output_names if not name.endswith("_RetainedState")]
        self._constant_specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}  # name -> (shape, dtype)

    @property
    def pinned_dims(self) -> dict[str, int]:
        """Symbols with one size in every specialisation (None sizes are dynamic and never pinned)."""
        first = self.specializations[0]
        return {
            symbol: size
            for symbol, size in first.items()
            if size is not None and all(spec[symbol] == size for spec in self.specializations)
        }

    def session(self) -> ort.InferenceSession:
        """The program's ORT session, created on first use."""
        if self._session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.num_threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = _LEVELS[self.manifest["options"]["session_optimization_level"]]
            options.log_severity_level = 3
            for symbol, size in self.pinned_dims.items():
                options.add_free_dimension_override_by_name(symbol, size)
            try:
                self._session = ort.InferenceSession(str(self.path), options, providers=self.providers)
            except Exception as exc:  # noqa: BLE001 - only ORT's own fusion bug is retried
                if _FUSION_BUG not in str(exc):
                    raise
                # ONNX Runtime's MatMulAddFusion, on a graph whose dimensions are pinned, can add an initializer under
                # a name it already gave another (seen with InstructBLIP's single program): load without that fusion
                logger.info("ONNX Runtime's MatMulAddFusion failed on %s (%s); loading without it.", self.path, exc)
                self._session = ort.InferenceSession(
                    str(self.path), options, providers=self.providers, disabled_optimizers=["MatMulAddFusion"]
                )
        return self._session

    def load_all(self) -> None:
        self.session()

    def _check_positions(self, inputs: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
        """With fused attention, the positions the kernel computes exactly (`check_fused_positions`); `shapes` holds the
        cache's."""
        if self.manifest.get("fused_attention") and "position_ids" in inputs:
            cache = next(name for name in shapes if name.startswith("past_key."))
            check_fused_positions(inputs["position_ids"], shapes[cache][2])

    def bind_constants(self, arrays: dict[str, np.ndarray]) -> None:
        """Constant inputs as ORT values, bound once into each IO binding (`OrtRetainedState.binding`): a step binds
        only its own inputs. A name bound again with its shape and dtype is updated in place (the bindings stay)."""
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            held = self.constants.get(name)
            if held is not None and self._constant_specs[name] == (array.shape, array.dtype):
                held.update_inplace(array)
                continue
            self.constants[name] = ort.OrtValue.ortvalue_from_numpy(array.copy())  # the value keeps its copy alive
            self._constant_specs[name] = (array.shape, array.dtype)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {**{name: value.numpy() for name, value in self.constants.items()}, **inputs}
        shapes = {name: a.shape for name, a in inputs.items()}
        self.specialization_of(shapes)
        self._check_positions(inputs, shapes)
        session = self.session()
        feed = {name: inputs[name] for name in self.input_dims}
        return dict(zip(self.output_names, session.run(self.output_names, feed)))

    def new_state(self, specialization: Specialization, dtype: type = np.float32) -> OrtRetainedState:
        """Retained state as ORT values (no host copies): updated in place where the graph allows it
        (`in_place_state`), else two buffers that swap roles after every step."""
        return OrtRetainedState(super().new_state(specialization, dtype), self.in_place_state)

    def run_with_state(self, inputs: dict[str, np.ndarray], state: OrtRetainedState) -> dict[str, np.ndarray]:
        shapes = tuple((name, array.shape) for name, array in inputs.items())
        input_shapes = (id(self), shapes)  # one state may serve several programs (MultiGraphProgram)
        if input_shapes not in state.checked:  # the state's shapes never change: check each input shape set once
            constant_shapes = {name: spec[0] for name, spec in self._constant_specs.items()}
            state.checked[input_shapes] = self.specialization_of({**dict(shapes), **state.shapes, **constant_shapes})
        self._check_positions(inputs, state.shapes)
        session = self.session()
        binding = state.binding(session, self.other_outputs, self.constants)
        # ORT binds the arrays' memory without holding a reference: keep the contiguous copies alive until the run ends
        # (every input is bound again at every step, so none outlives its array)
        arrays = {name: np.ascontiguousarray(array) for name, array in inputs.items()}
        for name, array in arrays.items():
            binding.bind_cpu_input(name, array)
        # the outputs besides the state: into the buffers kept from this specialisation's first step (its output
        # shapes are fixed by its input shapes), or, on that first step, into buffers ONNX Runtime allocates
        kept = state.kept_outputs.get(input_shapes)
        for name in self.other_outputs:
            if kept is None:
                binding.bind_output(name)
            else:
                binding.bind_ortvalue_output(name, kept[name])
        session.run_with_iobinding(binding)
        state.swap()
        if kept is None:  # bound first in `state.binding`, they come back first
            kept = state.kept_outputs[input_shapes] = dict(zip(self.other_outputs, binding.get_outputs()))
        # copies: the caller may keep them, and the next step writes into the same buffers
        return {name: value.numpy().copy() for name, value in kept.items()}


class OrtRetainedState:
    """Retained state in ORT values: `current` is read by the next step, which writes into `spare`. For a state
    updated in place, `spare` is `current` itself."""

    def __init__(self, arrays: dict[str, np.ndarray], in_place: frozenset[str] = frozenset()) -> None:
        self.names = list(arrays)
        self.shapes = {name: a.shape for name, a in arrays.items()}
        self.current = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in arrays.items()}
        self.spare = {
            name: self.current[name] if name in in_place else ort.OrtValue.ortvalue_from_numpy(np.zeros_like(a))
            for name, a in arrays.items()
        }
        self._bindings: dict[tuple[int, int], ort.IOBinding] = {}
        # per (program, input shapes), as `checked`: buffers for the outputs besides the state, kept from the first step
        self.kept_outputs: dict[tuple, dict[str, ort.OrtValue]] = {}
        self.checked: dict[tuple, int] = {}  # input shapes -> the specialisation they were checked to match

    def binding(
        self, session: ort.InferenceSession, other_outputs: list[str], constants: dict[str, ort.OrtValue] | None = None
    ) -> ort.IOBinding:
        """An IO binding of `session` with this state bound (inputs `current`, outputs `spare`) after `other_outputs`
        (which then come back first, in order), and the program's `constants` bound as inputs: made once per session,
        buffer parity and set of constant values, and reused at every step, so a step binds only its own inputs."""
        constants = constants or {}
        key = (id(session), id(self.current), *(id(value) for value in constants.values()))
        if key not in self._bindings:
            binding = session.io_binding()
            for name in other_outputs:
                binding.bind_output(name)
            for name, value in constants.items():
                binding.bind_ortvalue_input(name, value)
            for name in self.names:
                binding.bind_ortvalue_input(name, self.current[name])
                binding.bind_ortvalue_output(f"{name}_RetainedState", self.spare[name])
            self._bindings[key] = binding
        return self._bindings[key]

    def swap(self) -> None:
        self.current, self.spare = self.spare, self.current

    def host_views(self) -> dict[str, np.ndarray]:
        """The current state as numpy arrays that share the ORT values' memory (CPU only): writes go into the state."""
        devices = {value.device_name().lower() for value in self.current.values()}
        if devices != {"cpu"}:
            raise NotImplementedError(f"The retained state lives on {sorted(devices)}: no host views of it.")
        return {name: value.numpy() for name, value in self.current.items()}

    def numpy(self) -> dict[str, np.ndarray]:
        """A host copy of the current state (for inspection and tests)."""
        return {name: value.numpy().copy() for name, value in self.current.items()}  # a view would outlive the values


class OnnxRuntimeBackend(Backend):
    """Compile = offline graph optimisation + a manifest of specialisations; run = ORT sessions."""

    name = "onnxruntime"

    @property
    def version(self) -> str:
        return ort.__version__

    def compile(
        self, onnx_path: Path, out_dir: Path, specializations: list[Specialization], options: dict[str, Any]
    ) -> dict[str, Any]:
        graph = onnx.load(str(onnx_path), load_external_data=False)
        input_dims = graph_input_dims(graph)
        check_specializations(specializations, input_dims)
        options = {
            "optimization_level": "extended",
            "session_optimization_level": "all",
            "providers": default_providers(),
            "weights": "fp32",
            **options,
        }
        for key in ("optimization_level", "session_optimization_level"):
            if options[key] not in _LEVELS:
                raise ValueError(f"{key} must be one of {list(_LEVELS)}; got {options[key]!r}.")
        unknown = set(options) - {*_OPTIONS, *QUANTIZATION_OPTIONS}
        if unknown:
            raise ValueError(
                f"Unknown ONNX Runtime compile option(s) {sorted(unknown)}; the options are "
                f"{', '.join([*_OPTIONS, *QUANTIZATION_OPTIONS])}."
            )
        check_weight_options(options)
        split = options.setdefault("split_weights_mb", DEFAULT_SPLIT_WEIGHTS_MB)
        if not isinstance(split, (int, float)) or split < 0:
            raise ValueError(f"split_weights_mb must be a number of MB >= 0 (0: never split); got {split!r}.")
        for key in ("fuse_attention", "pack_weights"):
            if not isinstance(options.setdefault(key, True), bool):
                raise ValueError(f"{key} must be True or False; got {options[key]!r}.")
        scratch = []  # intermediate graphs, removed once the optimised program is written
        rewritten = graph
        if options["pack_weights"] and (packed := pack_weights(onnx_path, Path(out_dir) / "packed")) is not None:
            onnx_path = packed
            scratch.append(packed.parent)
            rewritten = onnx.load(str(onnx_path), load_external_data=False)
        # tensor shapes before fusion, which the attention fusion checks and, as the optimised graph keeps these
        # tensors' names, the norm fusion too
        inferred = inferred_shapes(rewritten)
        fused: list[str] = []
        if options["fuse_attention"]:
            fused_path, fused = fuse_attention_file(
                rewritten, onnx_path, Path(out_dir) / "fused", specializations, inferred
            )
            if fused_path is not None:
                onnx_path = fused_path
                scratch.append(fused_path.parent)
        int8_dynamic: dict[str, Any] = {}
        checkpoint: dict[str, Any] = {}  # a pre-quantised checkpoint's own weights, kept before any other quantisation
        if options["weights"] in (CHECKPOINT, "int8", "int4") and options.get("checkpoint_weights"):
            level = options.get("accuracy_level", DEFAULT_ACCURACY_LEVEL)
            kept_path, checkpoint = apply_checkpoint_weights(
                onnx_path, Path(out_dir) / "checkpoint", options["checkpoint_weights"], level
            )
            if kept_path is not None:
                onnx_path = kept_path
                scratch.append(onnx_path.parent)
        if options["weights"] == "fp32":
            for key in QUANTIZATION_OPTIONS[1:]:
                options.pop(key, None)
        elif options["weights"] == DYNAMIC_INT8:  # encoders' int8: dynamic quantisation, recorded in the manifest
            onnx_path, int8_dynamic = quantize_dynamic_int8(onnx_path, Path(out_dir) / "quantized")
            scratch.append(onnx_path.parent)
        elif options["weights"] == CHECKPOINT:  # the checkpoint's weights kept above, the rest fp32
            options = {"accuracy_level": DEFAULT_ACCURACY_LEVEL, **options}
        else:  # quantised weights: the offline optimisation starts from the quantised graph
            defaults = {"block_size": DEFAULT_BLOCK_SIZE, "accuracy_level": DEFAULT_ACCURACY_LEVEL, "exact_grids": True}
            options = {**defaults, **options}  # the manifest records what the program was compiled with
            onnx_path = quantize_weights(onnx_path, Path(out_dir) / "quantized", options)
            scratch.append(onnx_path.parent)
        if split and (split_path := split_large_weights(onnx_path, Path(out_dir) / "split", split)) is not None:
            onnx_path = split_path
            scratch.append(onnx_path.parent)
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = _LEVELS[options["optimization_level"]]
        session_options.optimized_model_filepath = str(Path(out_dir) / PROGRAM_FILE)
        session_options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", WEIGHTS_FILE
        )
        session_options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
        session_options.log_severity_level = 3
        # Offline optimisation on the CPU provider gives a graph that every provider can load.
        ort.InferenceSession(str(onnx_path), session_options, providers=["CPUExecutionProvider"])
        for directory in scratch:  # the intermediate graphs live on in the optimised program
            shutil.rmtree(directory)
        program = onnx.load(str(Path(out_dir) / PROGRAM_FILE), load_external_data=False)
        if fuse_skip_norms(program, inferred[0]):
            onnx.save_model(program, str(Path(out_dir) / PROGRAM_FILE))
        return {
            "backend": self.name,
            "backend_version": self.version,
            "options": options,
            "specializations": specializations,
            "inputs": input_dims,
            "outputs": [o.name for o in graph.graph.output],
            "in_place_state": in_place_states(program),
            "fused_attention": fused,
            **({"int8_dynamic": int8_dynamic} if int8_dynamic else {}),
            **({"checkpoint_weights": checkpoint} if checkpoint else {}),
        }

    def open(self, program_dir: Path, manifest: dict[str, Any], **session_options: Any) -> OnnxRuntimeProgram:
        return OnnxRuntimeProgram(program_dir, manifest, **session_options)
