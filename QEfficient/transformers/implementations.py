"""Export-time choices applied to a HF model only while an export wrapper calls it.

The wrappers (`CausalLMForExport`, `ClassifierForExport`) run the user's HF model with an attention function,
a mixture-of-experts implementation and an adapter that export well, and put the model back as it was
after every call: the HF model stays the untouched reference that validation compares against. One more
shim makes HF code that assumes eager, 2-D-mask execution traceable, again only for the duration of a call:
`alibi_from_4d_masks`; and `exportable_deepstack` replaces a boolean-mask update that the exporter cannot
generalise; `absent_image_outputs` lets a transformers 5.24 forward that reads an output field its language model
does not give (Llama4's) finish. (Tracer patches that every export needs are in `QEfficient/base/export_patches.py`.)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import torch
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


def _alibi_accepting_4d_masks(build: Callable) -> Callable:
    """transformers' `build_alibi_tensor(attention_mask [B, K], num_heads, dtype)` (Bloom, Falcon) for our 4-D
    mask too. ALiBi adds `slope * key_index`; a bias constant along a query row does not change softmax, so
    with a fixed cache whose slot j holds position j the bias is `slope * j`: an all-ones 2-D mask over the
    ctx_len slots gives exactly that (the 4-D mask still hides the slots each token must not read)."""

    def build_alibi_tensor(attention_mask, num_heads, dtype):  # noqa: ANN001, ANN202
        if attention_mask.dim() == 4:
            shape = (attention_mask.shape[0], attention_mask.shape[-1])
            attention_mask = torch.ones(shape, dtype=torch.int64, device=attention_mask.device)
        return build(attention_mask, num_heads, dtype)

    return build_alibi_tensor


@contextlib.contextmanager
def alibi_from_4d_masks(model: nn.Module) -> Iterator[None]:
    """Let the model's own consumers of a 2-D padding mask (ALiBi builders) take our 4-D mask, for one call."""
    modules = {sys.modules[type(m).__module__] for m in model.modules()}
    patched = [(mod, mod.build_alibi_tensor) for mod in modules if callable(getattr(mod, "build_alibi_tensor", None))]
    for mod, build in patched:
        mod.build_alibi_tensor = _alibi_accepting_4d_masks(build)
    try:
        yield
    finally:
        for mod, build in patched:
            mod.build_alibi_tensor = build


def _gathered_deepstack_process(
    self: nn.Module, hidden_states: torch.Tensor, visual_pos_masks: torch.Tensor, visual_embeds: torch.Tensor
) -> torch.Tensor:
    """HF's `_deepstack_process` (add a deepstack feature row at each visual position, in order) with a gather and
    a `where` instead of boolean-mask indexing, which the exporter records for the traced shape only. Same sums."""
    mask = visual_pos_masks.to(hidden_states.device)
    rows = visual_embeds.to(hidden_states.device, hidden_states.dtype)
    rows = torch.cat([rows, rows.new_zeros((1, rows.shape[-1]))])  # a row to read where there is no visual token
    index = (mask.reshape(-1).long().cumsum(0) - 1).clamp(min=0)
    added = rows[index].reshape(hidden_states.shape)
    return hidden_states + torch.where(mask[..., None], added, torch.zeros_like(added))


@contextlib.contextmanager
def exportable_deepstack(model: nn.Module) -> Iterator[None]:
    """Modules with HF's `_deepstack_process` (Qwen3-VL and its family) use `_gathered_deepstack_process`, for one
    call."""
    patched = [m for m in model.modules() if callable(getattr(type(m), "_deepstack_process", None))]
    for module in patched:
        module._deepstack_process = _gathered_deepstack_process.__get__(module)
    try:
        yield
    finally:
        for module in patched:
            del module._deepstack_process


@contextlib.contextmanager
def absent_image_outputs() -> Iterator[None]:
    """Outputs that do not declare `image_outputs` read as None for the duration of the block.

    transformers 5.24's `Llama4ForConditionalGeneration.forward` ends by reading `outputs.image_outputs` from its
    language model's output, which has no such field, so every call of it raises an AttributeError after the
    computation is done (HF itself cannot run it). The missing field only feeds the returned output's bookkeeping;
    with it read as None the model runs exactly as written. Used around QEfficient's calls and around the HF reference
    runs of the sweep and validation.
    """
    from transformers.utils import ModelOutput

    if "image_outputs" in vars(ModelOutput):
        yield
        return
    ModelOutput.image_outputs = None
    try:
        yield
    finally:
        del ModelOutput.image_outputs
