"""The backend interface: compile an exported ONNX graph for some specialisations, open the result, run it.

A specialisation fixes every symbolic dimension of the graph (e.g. `{"batch_size": 1, "seq_len": 128}`).
A compiled program accepts exactly the shapes of its specialisations, as fixed-shape hardware does;
callers pad their inputs to one of them. Nothing above this interface knows which backend it talks to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

# A size of None leaves that dimension dynamic (for backends that can run any size, e.g. ONNX Runtime).
Specialization = dict[str, int | None]


def _fits(shape: tuple[int, ...], dims: list[int | str], spec: Specialization) -> bool:
    """Whether a concrete shape matches graph dims under a specialisation (None = any size)."""
    if len(shape) != len(dims):
        return False
    for size, dim in zip(shape, dims):
        expected = spec[dim] if isinstance(dim, str) else dim
        if expected is not None and size != expected:
            return False
    return True


class Program(ABC):
    """A compiled program, opened and ready to run."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.specializations: list[Specialization] = manifest["specializations"]
        self.input_dims: dict[str, list[int | str]] = manifest["inputs"]
        self.output_names: list[str] = list(manifest["outputs"])
        # State inputs whose `_RetainedState` output the backend may write into the input's own memory: every
        # reader of the input runs before (or is) the node that writes the output (see `in_place_states`).
        self.in_place_state: frozenset[str] = frozenset(manifest.get("in_place_state", ()))
        # Inputs given once and read by every later run (`bind_constants`), name -> the backend's value.
        self.constants: dict[str, Any] = {}

    @property
    def input_names(self) -> list[str]:
        return list(self.input_dims)

    def specialization_of(self, shapes: dict[str, tuple[int, ...]]) -> int:
        """Index of the specialisation whose shapes these are; a clear error if none matches."""
        missing = set(self.input_dims) - set(shapes)
        if missing:
            raise ValueError(f"Missing program inputs: {sorted(missing)}; the program takes {self.input_names}.")
        for index, spec in enumerate(self.specializations):
            if all(_fits(shapes[name], dims, spec) for name, dims in self.input_dims.items()):
                return index
        given = {name: tuple(shapes[name]) for name in self.input_dims}
        raise ValueError(
            f"Input shapes {given} match no compiled specialisation {self.specializations}; "
            "pad the inputs to a compiled shape or compile for this one."
        )

    def state_names(self) -> list[str]:
        """Inputs `X` that have a retained-state output `X_RetainedState` (e.g. the KV cache)."""
        outputs = set(self.output_names)
        return [name for name in self.input_dims if f"{name}_RetainedState" in outputs]

    def new_state(self, specialization: Specialization, dtype: type = np.float32) -> dict[str, np.ndarray]:
        """Zero-filled retained state for `specialization` (backends may keep it in device memory)."""
        return {
            name: np.zeros([specialization[d] if isinstance(d, str) else d for d in self.input_dims[name]], dtype)
            for name in self.state_names()
        }

    def bind_constants(self, arrays: dict[str, np.ndarray]) -> None:
        """Give inputs that every later run reads unchanged (e.g. LoRA adapter weights, docs/lora.md): runs then
        omit them. Backends keep them where they run, bound once, so a step copies none of them; binding a name again
        replaces its value."""
        self.constants.update({name: np.ascontiguousarray(array) for name, array in arrays.items()})

    def run_with_state(self, inputs: dict[str, np.ndarray], state: Any) -> dict[str, np.ndarray]:
        """Run one step: state inputs come from `state`, their `_RetainedState` outputs replace it in place.

        Returns the other outputs. This generic version copies through the host; backends override it to
        keep the state where it lives.
        """
        outputs = self.run({**self.constants, **inputs, **state})
        for name in state:
            state[name] = outputs.pop(f"{name}_RetainedState")
        return outputs

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the specialisation that matches the inputs' shapes; return every output by name."""

    def load_all(self) -> None:  # noqa: B027 - optional hook, nothing to do for lazy-free backends
        """Prepare every specialisation now rather than on first use (so that first runs are not slower)."""


def state_shapes(state: Any) -> dict[str, tuple[int, ...]]:
    """Shapes of a retained state (a dict of arrays, or a backend's state object with `shapes`)."""
    shapes = getattr(state, "shapes", None)
    return dict(shapes) if shapes is not None else {name: tuple(a.shape) for name, a in state.items()}


def state_arrays(state: Any) -> dict[str, np.ndarray]:
    """Writable host arrays of a retained state, sharing its memory (a dict of arrays, or a backend's state object
    with `host_views`), so that a change to them is a change to the state (e.g. copying one cache row into another)."""
    views = getattr(state, "host_views", None)
    return views() if views is not None else dict(state)


class MultiGraphProgram(Program):
    """A program made of several compiled graphs that share their retained state, such as the prefill and decode
    graphs of a model with recurrent state (docs/recurrent_state.md).

    Each graph has its own specialisations; a run goes to the graph whose specialisation the input shapes match.
    The graphs' state inputs have the same names and shapes, so one state object serves them all.
    """

    def __init__(self, manifest: dict[str, Any], graphs: dict[str, Program]) -> None:
        self.graphs = graphs
        # One state object serves every graph that keeps state: a state is updated in place only if every such graph
        # allows it. A graph without state (e.g. a speech model's encoder) takes no part in it.
        self.stateful = [graph for graph in graphs.values() if graph.state_names()] or list(graphs.values())
        shared = frozenset.intersection(*(graph.in_place_state for graph in self.stateful))
        for graph in self.stateful:
            graph.in_place_state = shared
        first = next(iter(graphs.values()))
        specializations = [spec for graph in graphs.values() for spec in graph.specializations]
        super().__init__(
            {**manifest, "specializations": specializations, "inputs": first.input_dims, "outputs": first.output_names}
        )
        self.in_place_state = shared

    def graph_for(self, shapes: dict[str, tuple[int, ...]]) -> Program:
        """The graph whose specialisation matches these input shapes; a clear error if none does."""
        for graph in self.graphs.values():
            try:
                graph.specialization_of(shapes)
            except ValueError:
                continue
            return graph
        given = {name: tuple(size) for name, size in shapes.items() if not name.startswith("past_")}
        raise ValueError(
            f"Input shapes {given} match no graph of this program ({', '.join(self.graphs)}: "
            f"{[g.specializations for g in self.graphs.values()]}); pad the inputs to a compiled shape."
        )

    def specialization_of(self, shapes: dict[str, tuple[int, ...]]) -> int:
        graph = self.graph_for(shapes)
        offset = 0
        for other in self.graphs.values():
            if other is graph:
                return offset + graph.specialization_of(shapes)
            offset += len(other.specializations)
        raise AssertionError("unreachable")

    def new_state(self, specialization: Specialization, dtype: type = np.float32) -> Any:
        return self.stateful[0].new_state(specialization, dtype)

    def bind_constants(self, arrays: dict[str, np.ndarray]) -> None:
        for graph in self.graphs.values():
            graph.bind_constants({name: a for name, a in arrays.items() if name in graph.input_dims})

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.graph_for({name: a.shape for name, a in inputs.items()}).run(inputs)

    def run_with_state(self, inputs: dict[str, np.ndarray], state: Any) -> dict[str, np.ndarray]:
        shapes = {**{name: a.shape for name, a in inputs.items()}, **state_shapes(state)}
        return self.graph_for(shapes).run_with_state(inputs, state)

    def load_all(self) -> None:
        for graph in self.graphs.values():
            graph.load_all()


class Backend(ABC):
    """Compiles ONNX graphs into programs and opens them."""

    name: str

    @property
    @abstractmethod
    def version(self) -> str:
        """Version of the underlying runtime/compiler; part of the compile hash."""

    @abstractmethod
    def compile(
        self, onnx_path: Path, out_dir: Path, specializations: list[Specialization], options: dict[str, Any]
    ) -> dict[str, Any]:
        """Write the program for `specializations` into `out_dir`; return manifest metadata.

        The metadata must include `specializations`, `inputs` (name -> dims, symbols as strings) and
        `outputs` (names).
        """

    @abstractmethod
    def open(self, program_dir: Path, manifest: dict[str, Any], **session_options: Any) -> Program:
        """Open a compiled program directory for running."""


def graph_symbols(input_dims: dict[str, list[int | str]]) -> set[str]:
    """The symbolic dimension names used by a graph's inputs."""
    return {d for dims in input_dims.values() for d in dims if isinstance(d, str)}


def check_specializations(specializations: list[Specialization], input_dims: dict[str, list[int | str]]) -> None:
    """Each specialisation must give a positive size to exactly the graph's symbolic dimensions."""
    if not specializations:
        raise ValueError("compile needs at least one specialisation.")
    symbols = graph_symbols(input_dims)
    for spec in specializations:
        if set(spec) != symbols:
            raise ValueError(
                f"Specialisation {spec} must set exactly the graph's symbolic dimensions {sorted(symbols)}."
            )
        bad = {k: v for k, v in spec.items() if v is not None and (not isinstance(v, int) or v < 1)}
        if bad:
            raise ValueError(f"Specialisation sizes must be positive integers (or None: dynamic); got {bad}.")
