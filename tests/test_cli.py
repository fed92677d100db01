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


def test_bench_report_without_llamacpp_says_how_to_install(tmp_path, monkeypatch) -> None:
    """`qeff bench --peers` without llama-cpp-python: no llama.cpp row, and a line with the install command."""
    from QEfficient.cli import bench
    from QEfficient.cli.bench_llamacpp import LLAMACPP_KINDS

    monkeypatch.setenv("QEFF_LLAMACPP_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    monkeypatch.setenv("QEFF_PEERS_DIR", str(tmp_path / "peers"))
    prep = {"model_name": "m", "source": "m.gguf", "hf_folder": str(tmp_path), "gguf": str(tmp_path / "m.gguf"),
            "prompt_ids": [1, 2, 3], "eval_ids": [1, 2, 3, 4], "eval_words": 4}  # fmt: skip
    running, missing = bench._llamacpp_setup(prep, 1, context=None)
    assert running == [] and missing == list(LLAMACPP_KINDS)
    rows = [bench.EngineResult(bench._engine_name("fp32", prep), 10.0, 100.0, 50.0, 300.0, 10**8, 40.0, [1, 2])]
    report = bench._report(bench.BenchConfig(threads=1, new_tokens=2), prep, rows, 20.0, missing, 1.0)
    assert "| QEfficient ORT fp32 |" in report and "llama.cpp Q" not in report
    (line,) = [line for line in report.splitlines() if line.startswith("llama.cpp")]
    assert "not run" in line and 'CMAKE_ARGS="-DGGML_NATIVE=ON"' in line and "llama-cpp-python==" in line
    assert "vector flags:" in report
    prep["llamacpp"] = {"types": {"llamacpp": "Q4_1"}}
    assert bench._engine_name("llamacpp", prep) == "llama.cpp Q4_1 (the GGUF as shipped)"


def test_bench_llamacpp_f32_copy_of_a_gguf(tmp_path) -> None:
    """The F32 file the llama.cpp F32/F16/Q8_0 rows start from: every tensor dequantised, the metadata kept, the file
    type ALL_F32; weights read per token count a tied embedding table once."""
    gguf = pytest.importorskip("gguf")
    from QEfficient.cli.bench_llamacpp import dequantized_copy, gguf_matmul_bytes, gguf_type_name

    rng = np.random.default_rng(0)
    embedding, norm = rng.standard_normal((8, 64)).astype(np.float32), np.ones(64, dtype=np.float32)
    q8 = gguf.quants.quantize(embedding, gguf.GGMLQuantizationType.Q8_0)
    source = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(source), "llama")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_context_length(32)
    writer.add_tensor("token_embd.weight", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", norm)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    copy = dequantized_copy(source, tmp_path / "F32.gguf")
    reader = gguf.GGUFReader(str(copy))
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    expected = gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(np.asarray(tensors["token_embd.weight"].data), expected)
    np.testing.assert_array_equal(np.asarray(tensors["output_norm.weight"].data), norm)
    assert reader.fields["llama.context_length"].contents() == 32
    assert (gguf_type_name(source), gguf_type_name(copy)) == ("Q8_0", "F32")
    assert gguf_matmul_bytes(copy) == 8 * 64 * 4  # the tied LM head (no output.weight); norms not counted
    assert not list(tmp_path.glob("*.partial"))


def test_bench_runs_the_lora_and_gptq_rows(tmp_path, minilm_path: str) -> None:
    """`qeff bench --weights fp32 fp32-lora gptq-int4` on a tiny llama: the adapter and the GPTQ checkpoint are made in
    the run, each row runs in its own process (the LoRA program with its adapter bound, without PyTorch), and the
    GPTQ program holds the checkpoint's own 4-bit weights."""
    from transformers import AutoTokenizer

    from QEfficient.backends import open_program
    from QEfficient.cli.bench import BenchConfig, _prepare_child, run_generation_bench
    from tests.tiny_models import tiny_decoder

    folder = tmp_path / "tiny_llama"
    tiny_decoder("llama").save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    kinds = ("fp32", "fp32-lora", "gptq-int4")
    report = run_generation_bench(
        str(folder), prompt_tokens=12, new_tokens=4, prefill_seq_len=(8, 32), ctx_len=64, rounds=1, threads=1,
        weights=kinds,
    )  # fmt: skip
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in report.splitlines() if line.startswith("| Q")}
    lora, gptq = rows["QEfficient ORT fp32 + LoRA (rank 16, all linear)"], rows[next(r for r in rows if "GPTQ" in r)]
    assert float(lora[3]) > 0 and float(gptq[3]) > 0  # decode tokens/s
    assert float(lora[9]) != float(rows["QEfficient ORT fp32"][9])  # the adapter changes the perplexity
    assert "prefill_seq_len [8, 32], ctx_len 64" in report

    programs = _prepare_child(BenchConfig(str(folder), 12, 4, (8, 32), 64, 1, 1, kinds))["programs"]  # cached now
    manifest = open_program(programs["gptq-int4"]).manifest
    assert manifest["checkpoint_weights"]["method"] == "gptq" and manifest["options"]["weights"] == "int8"
