"""Export-time choices applied to a HF model only while an export wrapper calls it.

The wrappers (`CausalLMForExport`, `ClassifierForExport`) run the user's HF model with an attention function,
a mixture-of-experts implementation and an adapter that export well, and put the model back as it was
after every call: the HF model stays the untouched reference that validation compares against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from QEfficient.transformers.models.adapters import Adapter

# Mixture-of-experts layers that dispatch through transformers' ExpertsInterface run HF's "batched_mm" (a
# gather of each token's experts + bmm: static shapes, plain ONNX ops) instead of the default grouped_mm,
# whose token counting (histc) and data-dependent splits do not export.
EXPORTABLE_EXPERTS = "batched_mm"


def exportable_experts(model: nn.Module) -> str | None:
    """`EXPORTABLE_EXPERTS` when the model's experts go through transformers' ExpertsInterface, else None."""
    can_set = getattr(model, "_can_set_experts_implementation", None)
    return EXPORTABLE_EXPERTS if can_set is not None and can_set() else None


@contextlib.contextmanager
def applied(
    model: nn.Module, attention: str | None = None, experts: str | None = None, adapter: Adapter | None = None
) -> Iterator[None]:
    """Run the block with `model` using `attention` (a transformers attention implementation name), `experts`
    and `adapter`'s modules; restore the model's own choices afterwards."""
    config = model.config
    loaded = config._attn_implementation
    if attention is not None:
        config._attn_implementation = attention
    previous_experts = model.get_experts_implementation() if experts else None
    if experts:
        model.set_experts_implementation(experts)
    try:
        with adapter.applied(model) if adapter else contextlib.nullcontext():
            yield
    finally:
        config._attn_implementation = loaded
        if previous_experts is not None:
            model.set_experts_implementation(previous_experts)
