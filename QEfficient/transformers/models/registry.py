"""Which HF architectures each QEfficient auto class supports, by `config.model_type`.

The encoder list holds the families that the test suite checks against HF on a tiny random config;
they need no model-specific code. An adapter for an architecture that departs from transformers'
interfaces is registered here too, by model type.
"""

from __future__ import annotations

SUPPORTED_ENCODER_MODEL_TYPES: tuple[str, ...] = (
    "albert",
    "bert",
    "camembert",
    "deberta-v2",
    "distilbert",
    "electra",
    "mpnet",
    "roberta",
    "xlm-roberta",
)


class UnsupportedModelError(ValueError):
    """The model's architecture is not one this auto class supports."""


def check_encoder_supported(model_type: str, architectures: list[str] | None = None) -> None:
    """Raise `UnsupportedModelError`, listing the supported families, for an unsupported encoder."""
    if model_type in SUPPORTED_ENCODER_MODEL_TYPES:
        return
    name = f"'{model_type}'" + (f" ({', '.join(architectures)})" if architectures else "")
    raise UnsupportedModelError(
        f"QEFFAutoModel does not support model type {name}. Supported encoder families: "
        f"{', '.join(SUPPORTED_ENCODER_MODEL_TYPES)}. Decoder-only language models belong to "
        "QEFFAutoModelForCausalLM."
    )


def is_encoder(name_or_path: str, gguf_file: str | None = None) -> bool:
    """Whether a model folder or hub id holds a supported encoder (QEFFAutoModel) rather than a causal LM.

    A GGUF checkpoint is always a causal LM here; otherwise the config's `model_type` decides.
    """
    from transformers import AutoConfig

    from QEfficient.transformers.loading import split_gguf_path

    folder, gguf = split_gguf_path(name_or_path, gguf_file)
    return gguf is None and AutoConfig.from_pretrained(folder).model_type in SUPPORTED_ENCODER_MODEL_TYPES
