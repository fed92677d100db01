"""The `qeff` command: export, compile, execute, validate, embed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from QEfficient import QEFFAutoModel
from QEfficient.cli.main import main


def test_export_then_compile_print_paths(tiny_encoder_dirs, capsys) -> None:
    folder = str(tiny_encoder_dirs["bert"])
    assert main(["export", "--model", folder, "--pooling", "mean", "--normalize"]) == 0
    out = capsys.readouterr()
    onnx_path = Path(out.out.split("onnx: ")[1].split()[0])
    assert onnx_path.is_file()
    assert "Exporting ONNX graph: done" in out.err
    assert main(["compile", "--model", folder, "--pooling", "mean", "--normalize", "--seq-len", "16,32"]) == 0
    out = capsys.readouterr()
    program = Path(out.out.split("program: ")[1].split()[0])
    assert program.is_dir() and program.is_relative_to(onnx_path.parent)
    assert "Compiling for ONNX Runtime: done" in out.err


def test_execute_prints_embeddings(tiny_encoder_dirs, capsys) -> None:
    folder = str(tiny_encoder_dirs["bert"])
    texts = ["first sentence", "second one"]
    assert (
        main(
            [
                "execute",
                "--model",
                folder,
                "--pooling",
                "cls",
                "--seq-len",
                "16",
                "--text",
                texts[0],
                "--text",
                texts[1],
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["text"] for line in lines] == texts
    expected = QEFFAutoModel.from_pretrained(folder, pooling="cls").encode(texts)
    np.testing.assert_allclose(np.array([line["embedding"] for line in lines]), expected, atol=1e-5)


def test_validate_prints_table(tiny_encoder_dirs, capsys) -> None:
    assert main(["validate", "--model", str(tiny_encoder_dirs["xlm-roberta"]), "--pooling", "mean"]) == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime" in out and "compiled program" in out and "overall: PASS" in out


def test_clear_error_exit_code(capsys) -> None:
    assert main(["export", "--model", "/no/such/folder"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_texts_file_and_token_embeddings(tiny_encoder_dirs, tmp_path, capsys) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("alpha beta\n\ngamma\n")
    assert (
        main(
            [
                "execute",
                "--model",
                str(tiny_encoder_dirs["bert"]),
                "--pooling",
                "none",
                "--seq-len",
                "8",
                "--texts-file",
                str(texts),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "(4, 32) alpha beta" in out and "(3, 32) gamma" in out


def test_main_job_embed_on_default_model(qeff_home) -> None:
    """`qeff embed` as the README runs it: default model, real weights, similarity matrix."""
    env = {**os.environ, "QEFF_HOME": str(qeff_home)}
    result = subprocess.run(
        [sys.executable, "-m", "QEfficient.cli.main", "embed"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "pooling=mean, normalize=True" in result.stdout
    rows = {line[:3]: line for line in result.stdout.splitlines() if line.startswith("[") and "." in line[4:12]}
    cat_row = [float(v) for v in rows["[0]"].split()[1:]]
    assert cat_row[0] == pytest.approx(1.0, abs=1e-3) and cat_row[1] > 0.5 > cat_row[2]
