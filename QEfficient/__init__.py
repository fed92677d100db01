"""QEfficient: HF transformers models on fixed-shape inference backends — export, compile, run, validate.

The model classes need PyTorch and transformers and are imported on first use, so that running a compiled program
(`QEfficient.backends.open_program`, `QEfficient.generation.text_generation.TextGenerator.from_program`) does not
load either.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "QEFFBaseModel": "QEfficient.base.modeling_qeff",
    "QEFFAutoModel": "QEfficient.transformers.models.encoders",
    "QEFFAutoModelForCausalLM": "QEfficient.transformers.models.causal_lm",
    "QEFFAutoModelForCTC": "QEfficient.transformers.models.speech_ctc",
    "QEFFAutoModelForSequenceClassification": "QEfficient.transformers.models.encoders",
    "QEFFAutoModelForImageTextToText": "QEfficient.transformers.models.image_text_to_text",
    "QEFFAutoModelForAudioTextToText": "QEfficient.transformers.models.audio_text_to_text",
    "QEFFAutoModelForSpeechSeq2Seq": "QEfficient.transformers.models.speech_seq2seq",
    "QEFFTransformersBase": "QEfficient.transformers.models.modeling_auto",
    "QEFFAutoLoraModelForCausalLM": "QEfficient.peft.auto",
    "QEFFAutoPeftModelForCausalLM": "QEfficient.peft.auto",
    "validate": "QEfficient.validation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'QEfficient' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "QEFFAutoModel",
    "QEFFAutoModelForCTC",
    "QEFFAutoLoraModelForCausalLM",
    "QEFFAutoModelForCausalLM",
    "QEFFAutoModelForImageTextToText",
    "QEFFAutoModelForAudioTextToText",
    "QEFFAutoModelForSequenceClassification",
    "QEFFAutoModelForSpeechSeq2Seq",
    "QEFFAutoPeftModelForCausalLM",
    "QEFFBaseModel",
    "QEFFTransformersBase",
    "__version__",
    "validate",
]
