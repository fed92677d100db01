"""Encoders' `compile(weights="int8")`: ONNX Runtime's dynamic int8 quantisation (per-channel int8 weights, uint8
activations quantised at run time), the FFN output projections kept fp32, recorded in the manifest; cosine >= 0.99 to
fp32 on the real all-MiniLM-L6-v2."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from QEfficient import QEFFAutoModel, QEFFAutoModelForSequenceClassification
from QEfficient.cli.main import build_parser
from tests.tiny_models import ENCODER_CONFIGS

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply on Monday.",
    "The capital of France is Paris.",
    "how to cook rice",
    "Researchers at the university published the results of the survey after a long debate, with mixed results.",
]


def program_ops(model) -> Counter:  # noqa: ANN001
    graph = onnx.load(str(model.program_path / "model.onnx"), load_external_data=False).graph
    return Counter(node.op_type for node in graph.node)


@pytest.fixture(scope="module")
def minilm_fp32(minilm_path: str) -> np.ndarray:
    model = QEFFAutoModel.from_pretrained(minilm_path, pooling="mean", normalize=True)
    model.compile(seq_len="dynamic", batch_size=[1, 4])
    return model.encode(SENTENCES, batch_size=4)


@pytest.fixture(scope="module")
def minilm_int8(minilm_path: str) -> QEFFAutoModel:
    model = QEFFAutoModel.from_pretrained(minilm_path, pooling="mean", normalize=True)
    model.compile(seq_len="dynamic", batch_size=[1, 4], weights="int8")
    return model


def test_minilm_int8_is_within_cosine_0_99_of_fp32(minilm_int8: QEFFAutoModel, minilm_fp32: np.ndarray) -> None:
    ours = minilm_int8.encode(SENTENCES, batch_size=4)
    assert ours.shape == minilm_fp32.shape == (len(SENTENCES), 384)
    cosines = np.sum(ours * minilm_fp32, axis=1)  # both L2-normalised
    assert cosines.min() >= 0.99, cosines
    assert not np.allclose(ours, minilm_fp32, atol=1e-5)  # it really is another program
    single = minilm_int8.encode(SENTENCES[0])  # batch 1 on the same program
    assert float(single @ minilm_fp32[0]) >= 0.99


def test_minilm_int8_manifest_and_graph_say_dynamic_int8(minilm_int8: QEFFAutoModel) -> None:
    manifest = minilm_int8.program.manifest
    assert manifest["options"]["weights"] == "int8-dynamic"
    assert not {"block_size", "accuracy_level", "exact_grids"} & set(manifest["options"])
    record = manifest["int8_dynamic"]
    assert record["method"] == "onnxruntime.quantization.quantize_dynamic"
    assert "per output channel" in record["weights"] and "run time" in record["activations"]
    kept = record["fp32_weight_matmuls"]
    assert len(kept) == 6 and all("/output/dense/" in name and "attention" not in name for name in kept)
    assert record["int8_matmuls"] == 18  # per layer: packed Q/K/V, attention output, intermediate
    assert record["smoothed_inputs"] == 18  # their inputs: two LayerNorm outputs and the attention context
    ops = program_ops(minilm_int8)
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulInteger"] == 18
    assert "MatMulNBits" not in ops


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weights": "int3"}, r"weights must be one of fp32, int8, int4 for an encoder .*got 'int3'"),
        ({"weights": "INT8"}, r"weights must be one of fp32, int8, int4"),
        ({"weights": "int8", "block_size": 64}, r"weights='int8' is dynamic int8 .* block_size cannot be set"),
        ({"weights": "int8", "exact_grids": False}, r"exact_grids cannot be set"),
    ],
)
def test_bad_weight_options_are_clear_errors(tiny_encoder_dirs, options: dict, message: str) -> None:
    model = QEFFAutoModel.from_pretrained(str(tiny_encoder_dirs["bert"]), pooling="mean")
    with pytest.raises(ValueError, match=message):
        model.compile(seq_len=16, **options)
    assert model.onnx_path is None  # rejected before any export


def test_backend_rejects_block_options_with_int8_dynamic(tiny_encoder_dirs) -> None:
    model = QEFFAutoModel.from_pretrained(str(tiny_encoder_dirs["bert"]), pooling="mean")
    with pytest.raises(ValueError, match="int8-dynamic.*block_size"):
        model._compile([{"batch_size": 1, "seq_len": 16}], weights="int8-dynamic", block_size=32)


def test_classifier_int8_is_the_same_dynamic_path(tmp_path, minilm_path: str) -> None:
    torch.manual_seed(0)
    config = AutoConfig.for_model("bert", **ENCODER_CONFIGS["bert"], num_labels=3)
    AutoModelForSequenceClassification.from_config(config).eval().save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(tmp_path)
    logits = {}
    for weights in ("fp32", "int8"):
        model = QEFFAutoModelForSequenceClassification.from_pretrained(str(tmp_path))
        model.compile(seq_len="dynamic", batch_size=[1, 4], weights=weights)
        logits[weights] = model.classify(SENTENCES, batch_size=4).logits
    manifest = model.program.manifest
    assert manifest["options"]["weights"] == "int8-dynamic" and manifest["int8_dynamic"]["int8_matmuls"] > 0
    # kept fp32: each layer's FFN output projection (GELU input) and the classifier (tanh pooler output)
    kept = manifest["int8_dynamic"]["fp32_weight_matmuls"]
    assert any("classifier" in name for name in kept) and sum("/output/dense/" in name for name in kept) == 2
    np.testing.assert_allclose(logits["int8"], logits["fp32"], atol=0.05)


def test_cli_passes_int8_without_block_options() -> None:
    from QEfficient.cli.main import _compile

    class Recorder:
        onnx_paths, onnx_path = {}, None

        def export(self) -> None:
            pass

        def compile(self, **kwargs):  # noqa: ANN003, ANN202
            self.kwargs = kwargs
            return "program"

    for weights, expected in (("int8", {"weights": "int8"}), ("fp32", {}), ("int4", {"weights": "int4"})):
        args = build_parser().parse_args(["compile", "--weights", weights])
        recorder = Recorder()
        _compile(recorder, args)
        options = {k: v for k, v in recorder.kwargs.items() if k not in ("seq_len", "batch_size")}
        assert {k: options[k] for k in expected} == expected
        if weights == "int8":
            assert options == expected
