"""docs/adding_a_model.md runs as written: its python blocks in one namespace, its bash blocks in a shell, all in a
scratch folder; the text block is the expected output of the bash block before it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_model.md"
ADAPTER = Path(__file__).resolve().parents[1] / "QEfficient" / "transformers" / "models" / "deepseek_v2" / "__init__.py"


def _sections() -> dict[str, list[tuple[str, str]]]:
    """Code blocks (language, code) per `## ` section of the doc."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for part in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        title = part.splitlines()[0]
        sections[title] = re.findall(r"```(\w+)\n(.*?)```", part, flags=re.S)
    return sections


def _run(blocks: list[tuple[str, str]], folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Execute the blocks in order in `folder`; return the output of each bash block."""
    monkeypatch.chdir(folder)
    namespace: dict = {"__name__": "__doc_example__"}
    outputs = []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for language, code in blocks:
        if language == "python":
            exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the doc's own example
        elif language == "bash":
            done = subprocess.run(["bash", "-c", code], capture_output=True, text=True, env=env, timeout=600)
            assert done.returncode == 0, done.stdout + done.stderr
            outputs.append(done.stdout)
    return outputs


def test_doc_has_the_three_ways() -> None:
    titles = list(_sections())
    assert titles[:3] == [
        "1. Nothing to write: validate it",
        "2. An adapter and one registry line",
        "3. A model outside transformers' auto classes",
    ]


def test_way_1_validate_a_tiny_checkpoint(tmp_path, monkeypatch) -> None:
    blocks = _sections()["1. Nothing to write: validate it"]
    (output,) = _run(blocks, tmp_path, monkeypatch)
    expected = next(code for language, code in blocks if language == "text")
    assert expected.strip() in output  # the table printed in the doc is the one the command prints


def test_way_2_adapter_is_the_package_file_and_passes(tmp_path, monkeypatch) -> None:
    from QEfficient.transformers.models import adapters

    blocks = _sections()["2. An adapter and one registry line"]
    assert ADAPTER.read_text() in [code for _, code in blocks]  # the doc shows the adapter verbatim
    saved = dict(adapters.ADAPTERS)
    try:
        (output,) = _run(blocks, tmp_path, monkeypatch)
        assert adapters.adapter_for_name("DeepseekV2ForCausalLM").name == "deepseek_v2"
    finally:
        adapters.ADAPTERS.clear()
        adapters.ADAPTERS.update(saved)
    assert re.search(r"causal-lm\s+deepseek_v2\s+pass", output), output


def test_way_3_model_outside_the_auto_classes(tmp_path, monkeypatch, capsys) -> None:
    _run(_sections()["3. A model outside transformers' auto classes"], tmp_path, monkeypatch)
    assert "max |diff| vs PyTorch" in capsys.readouterr().out
