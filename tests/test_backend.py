"""The backend interface: a second backend plugs in beside ONNX Runtime without touching the model classes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from QEfficient import QEFFAutoModel
from QEfficient.backends import Backend, Program, get_backend, register_backend
from QEfficient.backends.base import check_specializations
from QEfficient.backends.onnxruntime import graph_input_dims

SENTENCES = ["a short one", "a rather longer sentence for the second row"]


class GatherElements(OpRun):
    """GatherElements is `np.take_along_axis` (onnx 1.23's reference kernel fails on the BERT graph)."""

    def _run(self, data: np.ndarray, indices: np.ndarray, axis: int = 0) -> tuple[np.ndarray]:
        indices = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, indices, axis=axis),)


class ReferenceProgram(Program):
    def __init__(self, program_dir: Path, manifest: dict[str, Any]) -> None:
        super().__init__(manifest)
        self.evaluator = ReferenceEvaluator(str(Path(program_dir) / "model.onnx"), new_ops=[GatherElements])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.specialization_of({name: a.shape for name, a in inputs.items()})
        outputs = self.evaluator.run(self.output_names, {n: inputs[n] for n in self.input_dims})
        return dict(zip(self.output_names, outputs))


@register_backend
class OnnxReferenceBackend(Backend):
    """onnx's pure-Python reference evaluator: slow, but an independent implementation of every op."""

    name = "onnx-reference"

    @property
    def version(self) -> str:
        return onnx.__version__

    def compile(self, onnx_path: Path, out_dir: Path, specializations: list, options: dict[str, Any]) -> dict:
        graph = onnx.load(str(onnx_path), load_external_data=False)
        input_dims = graph_input_dims(graph)
        check_specializations(specializations, input_dims)
        for name in ("model.onnx", "model.onnx.data"):
            shutil.copy(Path(onnx_path).parent / name, Path(out_dir) / name)
        outputs = [o.name for o in graph.graph.output]
        return {"specializations": specializations, "inputs": input_dims, "outputs": outputs, "options": options}

    def open(self, program_dir: Path, manifest: dict[str, Any], **session_options: Any) -> ReferenceProgram:
        return ReferenceProgram(program_dir, manifest)


def test_second_backend_runs_the_same_model(tiny_encoder_dirs) -> None:
    folder = tiny_encoder_dirs["bert"]
    reference = QEFFAutoModel.from_pretrained(folder, pooling="mean", normalize=True)
    program = reference.compile(seq_len=16, batch_size=2, backend="onnx-reference")
    assert program.name.startswith("onnx-reference-")
    ort_model = QEFFAutoModel.from_pretrained(folder, pooling="mean", normalize=True)
    ort_model.compile(seq_len=16, batch_size=2)
    np.testing.assert_allclose(reference.encode(SENTENCES), ort_model.encode(SENTENCES), atol=1e-5, rtol=0)
    pytorch = ort_model.generate(ort_model.tokenizer(SENTENCES, padding=True), runtime="pytorch")
    np.testing.assert_allclose(reference.encode(SENTENCES), pytorch["sentence_embedding"], atol=1e-5, rtol=0)


def test_unknown_backend_lists_available() -> None:
    try:
        get_backend("tpu")
    except ValueError as exc:
        assert "onnxruntime" in str(exc) and "Unknown backend 'tpu'" in str(exc)
    else:
        raise AssertionError("get_backend accepted an unknown name")


def test_one_session_serves_every_specialisation(tiny_encoder_dirs) -> None:
    model = QEFFAutoModel.from_pretrained(tiny_encoder_dirs["bert"], pooling="cls")
    program_dir = model.compile(seq_len=[8, 16, 32], batch_size=2)
    assert sorted(p.name for p in program_dir.iterdir()) == ["model.onnx", "model.onnx.data", "qeff_manifest.json"]
    model.encode(["one", "two words", "three words here " * 3], batch_size=2)
    program = model.program
    assert program.pinned_dims == {"batch_size": 2}  # seq_len differs between specialisations: left symbolic
    assert program.session().get_inputs()[0].shape == [2, "seq_len"]
    with pytest.raises(ValueError, match="match no compiled specialisation"):  # still only the compiled shapes
        program.run({"input_ids": np.ones((2, 12), np.int64), "attention_mask": np.ones((2, 12), np.int64)})


def test_program_opens_on_its_own(tiny_encoder_dirs) -> None:
    """`open_program(dir)` runs a compiled program without its model; a text generator refuses an encoder's."""
    from QEfficient.backends import open_program
    from QEfficient.generation.text_generation import TextGenerator

    model = QEFFAutoModel.from_pretrained(tiny_encoder_dirs["bert"], pooling="cls")
    program_dir = model.compile(seq_len=16, batch_size=2)
    inputs = {
        k: v.astype(np.int64)
        for k, v in model.tokenizer(SENTENCES, padding="max_length", max_length=16, return_tensors="np").items()
        if k in model.program.input_names
    }
    alone = open_program(program_dir)
    for name, value in model.program.run(inputs).items():
        np.testing.assert_array_equal(alone.run(inputs)[name], value)
    with pytest.raises(ValueError, match="no generation settings"):
        TextGenerator.from_program(program_dir)


def _state_graph(writer: str, extra_reader_after: bool = False) -> onnx.ModelProto:
    """X [2, 4] plus updates U [2, 1] written at column I [2, 1]: X_RetainedState by `writer`, and Y = 2 * X read
    before it (an ancestor: it feeds the updates) or, with `extra_reader_after`, a reader that needs the output."""
    h, tp = onnx.helper, onnx.TensorProto
    nodes = [h.make_node("Mul", ["X", "two"], ["Y"]), h.make_node("Gather", ["Y", "zero"], ["Y0"])]
    nodes.append(h.make_node("ReduceSum", ["Y0"], ["S"], keepdims=1))
    nodes.append(h.make_node("Add", ["U", "S"], ["V"]))
    if writer == "ScatterElements":
        nodes.append(h.make_node("ScatterElements", ["X", "I", "V"], ["X_RetainedState"], axis=1))
    elif writer == "ScatterND":
        nodes.append(h.make_node("ScatterND", ["X", "row", "W"], ["X_RetainedState"]))
        nodes.insert(-1, h.make_node("ReduceSum", ["V", "zero_axes"], ["VW"], keepdims=1))
        nodes.insert(-1, h.make_node("Expand", ["VW", "shape_w"], ["W"]))
    elif writer == "Where":
        nodes.append(h.make_node("Where", ["mask", "X", "V"], ["X_RetainedState"]))
    else:
        nodes.append(h.make_node(writer, ["X"], ["X_RetainedState"], perm=[0, 1]))
    outputs = [h.make_tensor_value_info("X_RetainedState", tp.FLOAT, [2, 4])]
    if extra_reader_after:
        nodes.append(h.make_node("Add", ["X", "X_RetainedState"], ["Z"]))
        outputs.append(h.make_tensor_value_info("Z", tp.FLOAT, [2, 4]))
    inits = [
        onnx.numpy_helper.from_array(np.array(2, np.float32), "two"),
        onnx.numpy_helper.from_array(np.array(0, np.int64), "zero"),
        onnx.numpy_helper.from_array(np.array([[1]], np.int64), "row"),
        onnx.numpy_helper.from_array(np.array([0], np.int64), "zero_axes"),
        onnx.numpy_helper.from_array(np.array([1, 4], np.int64), "shape_w"),
        onnx.numpy_helper.from_array(np.array([[True, False, True, False]] * 2), "mask"),
    ]
    inputs = [
        h.make_tensor_value_info("X", tp.FLOAT, [2, 4]),
        h.make_tensor_value_info("U", tp.FLOAT, [2, 1]),
        h.make_tensor_value_info("I", tp.INT64, [2, 1]),
    ]
    graph = h.make_graph(nodes, "state", inputs, outputs, inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("writer", ["ScatterElements", "ScatterND"])
def test_state_written_in_place_matches_a_separate_output(writer) -> None:
    """A state the analysis allows in place gives the same result with its output bound to the input's own buffer
    as with a fresh output (ONNX Runtime's kernels read before they write)."""
    import onnxruntime as ort

    from QEfficient.backends.onnxruntime import in_place_states

    model = _state_graph(writer)
    assert in_place_states(model) == ["X"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    feeds = {"X": x, "U": np.array([[10], [20]], np.float32), "I": np.array([[2], [3]], np.int64)}
    (expected,) = session.run(None, feeds)
    buffer = ort.OrtValue.ortvalue_from_numpy(x.copy())
    binding = session.io_binding()
    binding.bind_ortvalue_input("X", buffer)
    binding.bind_cpu_input("U", feeds["U"])
    binding.bind_cpu_input("I", feeds["I"])
    binding.bind_ortvalue_output("X_RetainedState", buffer)
    session.run_with_iobinding(binding)
    np.testing.assert_array_equal(buffer.numpy(), expected)
    assert not np.array_equal(expected, x)


@pytest.mark.parametrize(
    ("writer", "reader_after"), [("ScatterElements", True), ("Transpose", False), ("Where", False)]
)
def test_state_not_in_place_when_unsafe(writer, reader_after) -> None:
    """Not in place when the input is read after the output is written, or the writer is not a scatter (ONNX Runtime's
    `Where` fills its output in two passes)."""
    from QEfficient.backends.onnxruntime import in_place_states

    assert in_place_states(_state_graph(writer, reader_after)) == []
