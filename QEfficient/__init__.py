"""QEfficient: HF transformers models on fixed-shape inference backends — export, compile, run, validate."""

__version__ = "0.1.0"

from QEfficient.base.modeling_qeff import QEFFBaseModel  # noqa: E402
from QEfficient.transformers.models.modeling_auto import (  # noqa: E402
    QEFFAutoModel,
    QEFFAutoModelForCausalLM,
    QEFFAutoModelForSequenceClassification,
    QEFFTransformersBase,
)
from QEfficient.validation import validate  # noqa: E402

__all__ = [
    "QEFFAutoModel",
    "QEFFAutoModelForCausalLM",
    "QEFFAutoModelForSequenceClassification",
    "QEFFBaseModel",
    "QEFFTransformersBase",
    "__version__",
    "validate",
]
