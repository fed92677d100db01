"""Which kind of model a HF config describes: encoder-only, causal decoder or encoder-decoder.

QEfficient keeps no list of supported architectures: any encoder-only model loads in `QEFFAutoModel` and
any causal LM in `QEFFAutoModelForCausalLM`, and an architecture that does not fit fails in the mechanism
that cannot handle it (export, masks, the KV cache), with that mechanism's error. What this module decides
is the kind, from transformers' own auto mappings and the config's flags:

- encoder-decoder: `config.is_encoder_decoder` (T5, BART, ...);
- causal decoder: `config.is_decoder` (e.g. BERT saved as `BertLMHeadModel`), or a model type that has a
  causal-LM head and no masked-LM head (Llama, GPT-2, ...), or, for any other model type, a config whose
  `architectures` name a `...ForCausalLM` / `...LMHeadModel`;
- encoder-only: any other text model (a masked-LM, sequence- or token-classification model type, or a
  model type transformers does not know). BERT has both heads and is an encoder unless its config says
  `is_decoder`.
"""

from __future__ import annotations

from typing import Any

# Encoder families the test suite checks against HF on tiny random configs (tests/test_encoders.py).
# Informational: support is not limited to them.
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


def _mappings() -> tuple[set[str], set[str], set[str]]:
    """(masked-LM, causal-LM, other text-encoder heads) model types, from transformers' auto mappings."""
    from transformers.models.auto import modeling_auto as auto

    masked = set(auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    causal = set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    text_heads = set(auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES) | set(
        auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES
    )
    return masked, causal, text_heads


def is_encoder_decoder_config(config: Any) -> bool:
    """Whether the config describes an encoder-decoder (seq2seq) model."""
    return bool(getattr(config, "is_encoder_decoder", False))


def is_causal_decoder_config(config: Any) -> bool:
    """Whether the config describes a decoder-only (causal) language model."""
    if is_encoder_decoder_config(config):
        return False
    if getattr(config, "is_decoder", False):
        return True
    masked, causal, text_heads = _mappings()
    model_type = getattr(config, "model_type", "")
    if model_type in masked:
        return False
    if model_type in causal:
        return True
    architectures = getattr(config, "architectures", None) or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def is_encoder_config(config: Any) -> bool:
    """Whether the config describes an encoder-only model (what `QEFFAutoModel` takes)."""
    if is_encoder_decoder_config(config) or is_causal_decoder_config(config):
        return False
    masked, causal, text_heads = _mappings()
    from transformers import CONFIG_MAPPING

    model_type = getattr(config, "model_type", "")
    return model_type in masked or model_type in text_heads or model_type not in CONFIG_MAPPING


def _describe(config: Any) -> str:
    architectures = getattr(config, "architectures", None)
    model_type = getattr(config, "model_type", type(config).__name__)
    return f"'{model_type}'" + (f" ({', '.join(architectures)})" if architectures else "")


def check_encoder_supported(config: Any) -> None:
    """Raise `UnsupportedModelError`, naming the class to use instead, unless the config is an encoder-only model."""
    if is_encoder_config(config):
        return
    if is_encoder_decoder_config(config):
        kind = "an encoder-decoder (seq2seq) model, which QEfficient does not support yet"
    elif is_causal_decoder_config(config):
        kind = (
            "a decoder-only language model: load it with QEFFAutoModelForCausalLM (generation) or "
            "QEFFAutoModelForSequenceClassification (classification)"
        )
    else:
        kind = "not a text encoder (it has no masked-LM or text-classification architecture in transformers)"
    raise UnsupportedModelError(
        f"QEFFAutoModel does not support model type {_describe(config)}: it is {kind}. QEFFAutoModel takes "
        f"encoder-only models (masked-LM architectures such as {', '.join(SUPPORTED_ENCODER_MODEL_TYPES)})."
    )


def check_sequence_classification_supported(config: Any) -> None:
    """Raise `UnsupportedModelError` for an encoder-decoder: QEfficient exports encoders and decoders only."""
    if is_encoder_decoder_config(config):
        raise UnsupportedModelError(
            f"QEFFAutoModelForSequenceClassification does not support model type {_describe(config)}: it is an "
            "encoder-decoder (seq2seq) model. Encoder-only and decoder-only classifiers are supported."
        )


def is_encoder(name_or_path: str, gguf_file: str | None = None) -> bool:
    """Whether a model folder or hub id holds an encoder-only model (QEFFAutoModel) rather than a causal LM.

    A GGUF checkpoint is always a causal LM here; otherwise the config decides (`is_encoder_config`).
    """
    from transformers import AutoConfig

    from QEfficient.transformers.loading import split_gguf_path

    folder, gguf = split_gguf_path(name_or_path, gguf_file)
    return gguf is None and is_encoder_config(AutoConfig.from_pretrained(folder))
