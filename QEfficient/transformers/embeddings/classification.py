"""Sequence classifiers with the export signature `(input_ids, attention_mask) -> logits [B, num_labels]`.

The HF `...ForSequenceClassification` model does its own pooling: encoders classify the [CLS] (first) token
or a pooled output, decoders the last non-padding token, which HF finds from `input_ids != pad_token_id`.
The wrapper therefore writes `pad_token_id` at every masked position before calling HF, so that the
pooled position follows the attention mask whatever id the caller padded with, and a fixed-shape program
can pad rows to its compiled length.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from QEfficient.base.pytorch_transforms import PytorchTransform
from QEfficient.transformers.implementations import applied, exportable_experts
from QEfficient.transformers.models.adapters import adapter_for


def _accepts(module: nn.Module, name: str) -> bool:
    """Whether `module.forward` takes keyword `name` (by name or through **kwargs)."""
    parameters = inspect.signature(module.forward).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def text_pad_token_id(config: object) -> int | None:
    """The pad id HF's classifiers read: the text config's (`config.get_text_config()`), else the config's."""
    get_text_config = getattr(config, "get_text_config", None)
    pad = getattr(get_text_config(), "pad_token_id", None) if get_text_config is not None else None
    return pad if pad is not None else getattr(config, "pad_token_id", None)


class ClassifierForExport(nn.Module):
    """A HF sequence classifier as `(input_ids, attention_mask) -> logits [B, num_labels]`."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.experts = exportable_experts(classifier)
        self.adapter = adapter_for(classifier)
        self._use_cache = _accepts(classifier, "use_cache") and hasattr(classifier.config, "use_cache")

    @property
    def config(self):  # noqa: ANN201 - the wrapped HF config
        return self.classifier.config

    @property
    def export_identity(self) -> dict:
        """What, beyond config and weights, determines the exported graph (part of the export hash)."""
        adapter = self.adapter.name if self.adapter else None
        return {"experts": self.experts, "adapter": adapter, "pad_token_id": text_pad_token_id(self.config)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pad = text_pad_token_id(self.config)
        if pad is not None:
            input_ids = torch.where(attention_mask.bool(), input_ids, torch.full_like(input_ids, pad))
        kwargs = {"use_cache": False} if self._use_cache else {}
        with applied(self.classifier, experts=self.experts, adapter=self.adapter):
            out = self.classifier(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return out.logits.float()


class ClassificationTransform(PytorchTransform):
    """Wrap a HF sequence classifier as `(input_ids, attention_mask) -> logits` (`ClassifierForExport`)."""

    @property
    def name(self) -> str:
        return "ClassificationTransform"

    def apply(self, model: nn.Module) -> tuple[nn.Module, bool]:  # type: ignore[override]
        if isinstance(model, ClassifierForExport):
            raise ValueError("The model is already wrapped for export.")
        return ClassifierForExport(model), True
