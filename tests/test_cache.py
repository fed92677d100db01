"""Artefact cache: keyed by content hash, reused, atomic, locked, and never trusted when corrupt."""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from QEfficient import QEFFAutoModel
from QEfficient.utils.cache import MANIFEST_NAME, CorruptArtifactError, build_artifact, hash_params, read_manifest

SENTENCES = ["one sentence", "and a second, longer sentence"]


def test_hash_is_stable_and_order_independent() -> None:
    assert hash_params({"a": 1, "b": [1, 2]}) == hash_params({"b": [1, 2], "a": 1})
    assert hash_params({"a": 1}) != hash_params({"a": 2})
    assert len(hash_params({})) == 16


def test_export_and_compile_are_reused(tiny_encoder_dirs, qeff_home: Path) -> None:
    folder = tiny_encoder_dirs["electra"]
    first = QEFFAutoModel.from_pretrained(folder, pooling="cls")
    onnx_path = first.export()
    program = first.compile(seq_len=16)
    assert onnx_path.is_relative_to(qeff_home) and program.is_relative_to(onnx_path.parent)
    stamp = onnx_path.stat().st_mtime_ns
    second = QEFFAutoModel.from_pretrained(folder, pooling="cls")
    assert second.export() == onnx_path and onnx_path.stat().st_mtime_ns == stamp
    assert second.compile(seq_len=16) == program
    assert second.model_hash == first.model_hash
    other = QEFFAutoModel.from_pretrained(folder, pooling="mean")
    assert other.export() != onnx_path
    assert other.compile(seq_len=16).parent.parent != program.parent.parent


def test_manifests_record_provenance(tiny_encoder_dirs) -> None:
    model = QEFFAutoModel.from_pretrained(tiny_encoder_dirs["bert"], pooling="mean")
    program = model.compile(seq_len=[8, 16], batch_size=[1, 2])
    export_manifest = read_manifest(model.onnx_path.parent)
    manifest = read_manifest(program)
    assert manifest["backend"] == "onnxruntime"
    assert manifest["source_export_hash"] == export_manifest["export_hash"] == model.export_hash
    assert manifest["specializations"] == [{"batch_size": b, "seq_len": s} for b in (1, 2) for s in (8, 16)]
    assert manifest["options"]["optimization_level"] == "extended"
    assert "PoolingTransform(pooling=mean, normalize=False)" in export_manifest["hash_params"]["pytorch_transforms"]


@pytest.mark.parametrize("target", ["export", "program"])
def test_corrupt_file_is_detected_and_rebuilt(target: str, tiny_encoder_dirs, caplog) -> None:
    folder = tiny_encoder_dirs["albert"]
    model = QEFFAutoModel.from_pretrained(folder, pooling="mean")
    program = model.compile(seq_len=32)
    expected = model.encode(SENTENCES)
    directory = model.onnx_path.parent if target == "export" else program
    weights = directory / "model.onnx.data"
    original = weights.read_bytes()
    corrupted = bytearray(original)
    corrupted[len(corrupted) // 2] ^= 0xFF
    weights.write_bytes(bytes(corrupted))
    with pytest.raises(CorruptArtifactError, match="SHA-256"):
        read_manifest(directory)

    again = QEFFAutoModel.from_pretrained(folder, pooling="mean")
    with caplog.at_level(logging.WARNING):
        again.compile(seq_len=32)
    assert "corrupt and will be rebuilt" in caplog.text
    assert weights.read_bytes() == original
    np.testing.assert_array_equal(again.encode(SENTENCES), expected)


def test_missing_manifest_is_rebuilt(tiny_encoder_dirs) -> None:
    model = QEFFAutoModel.from_pretrained(tiny_encoder_dirs["bert"], pooling="max")
    onnx_path = model.export()
    (onnx_path.parent / MANIFEST_NAME).unlink()
    again = QEFFAutoModel.from_pretrained(tiny_encoder_dirs["bert"], pooling="max")
    assert again.export() == onnx_path
    read_manifest(onnx_path.parent)


def test_interrupted_build_leaves_nothing(tmp_path: Path) -> None:
    def failing(tmp: Path) -> dict:
        (tmp / "half-written.bin").write_bytes(b"x" * 100)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_artifact(tmp_path / "artefact", failing)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def _slow_build(directory: str, log: str) -> None:
    def build(tmp: Path) -> dict:
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        (tmp / "data.bin").write_bytes(b"payload")
        return {"kind": "test"}

    build_artifact(Path(directory), build)


def test_concurrent_builds_build_once(tmp_path: Path) -> None:
    directory, log = tmp_path / "artefact", tmp_path / "log.txt"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_slow_build, args=(str(directory), str(log))) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert log.read_text().count("built") == 1
    assert json.loads((directory / MANIFEST_NAME).read_text())["files"]["data.bin"]["size"] == 7
