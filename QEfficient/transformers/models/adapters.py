"""The adapter registry: model-specific code for the few architectures that depart from transformers' interfaces.

Everything else runs through the generic mechanism with no per-model code. An adapter lives in its own package
`QEfficient/transformers/models/<arch>/` and is registered here by the HF architecture (model class) name:

```python
ADAPTERS = {"DeepseekV2ForCausalLM": "QEfficient.transformers.models.deepseek_v2"}  # module exposing ADAPTER
```

An `Adapter` maps HF module classes to subclasses that override `forward`. The swap happens only while the
export wrapper runs (the same rule as the attention choice): the HF model itself, which validation uses as
the reference, is never changed. User code registers its own with `register_adapter`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from torch import nn


@dataclass(frozen=True)
class Adapter:
    """Module classes to use, while exporting and running, in place of HF's (weights are kept)."""

    name: str
    module_mapping: Mapping[type[nn.Module], type[nn.Module]]

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Swap the mapped module classes in `model` for the duration of the block, then restore them."""
        swapped = []
        for module in model.modules():
            replacement = self.module_mapping.get(type(module))
            if replacement is not None:
                swapped.append((module, type(module)))
                module.__class__ = replacement
        try:
            yield model
        finally:
            for module, original in swapped:
                module.__class__ = original


# Architecture name (HF model class) -> module that defines `ADAPTER`, or the Adapter itself.
ADAPTERS: dict[str, str | Adapter] = {
    "DeepseekV2ForCausalLM": "QEfficient.transformers.models.deepseek_v2",
    "DbrxForCausalLM": "QEfficient.transformers.models.dbrx",
    "JetMoeForCausalLM": "QEfficient.transformers.models.jetmoe",
    "LongcatFlashForCausalLM": "QEfficient.transformers.models.longcat_flash",
    "Llama4ForCausalLM": "QEfficient.transformers.models.llama4",
    "Llama4ForConditionalGeneration": "QEfficient.transformers.models.llama4",
    "GPTNeoForCausalLM": "QEfficient.transformers.models.gpt_neo",
}

# Architectures whose generation does not fit a causal key/value cache at all, with the reason (they raise
# UnsupportedCausalLMError with it instead of failing somewhere in the export).
NOT_SUPPORTED: dict[str, str] = {
    "CpmAntForCausalLM": "CPM-Ant prepends its prompt tokens at every call and attends bidirectionally within "
    "the window it is given, so its outputs depend on how the sequence is chunked.",
    "ProphetNetForCausalLM": "ProphetNet's n-gram stream attention builds its own 5-D masks and relative "
    "buckets from the cache length, and HF itself only decodes one token per step with a cache.",
    "MiniMaxForCausalLM": "MiniMax's lightning-attention layers keep a recurrent state in its own cache class "
    "(MiniMaxCache); retained recurrent state is not supported yet.",
    "XLMWithLMHeadModel": "XLM generates as a masked LM: each step appends a mask token to the whole "
    "sequence and re-encodes it bidirectionally, with no causal key/value cache.",
}


def register_adapter(architecture: str, adapter: Adapter | str) -> None:
    """Register `adapter` (or the module path that defines `ADAPTER`) for models of class `architecture`."""
    ADAPTERS[architecture] = adapter


def adapter_for(model: nn.Module) -> Adapter | None:
    """The adapter registered for `model`'s class, if any.

    An adapter registered for one head of a family (`XForCausalLM`) also applies to the family's other heads
    (`XForSequenceClassification`, ...): it maps the shared inner modules.
    """
    name = type(model).__name__
    if name in ADAPTERS:
        return adapter_for_name(name)
    family = name.split("For")[0]
    return next((adapter_for_name(a) for a in ADAPTERS if "For" in name and a.split("For")[0] == family), None)


def adapter_for_name(architecture: str) -> Adapter | None:
    """The adapter registered for the architecture (model class) named `architecture`, if any."""
    entry = ADAPTERS.get(architecture)
    if isinstance(entry, str):
        entry = importlib.import_module(entry).ADAPTER
    return entry


def adapter_sizes() -> dict[str, dict[str, int | str]]:
    """Per built-in adapter (registered by module path): its package and line count, for the docs."""
    sizes: dict[str, dict[str, int | str]] = {}
    for architecture, entry in ADAPTERS.items():
        if not isinstance(entry, str):
            continue
        spec = importlib.util.find_spec(entry)
        folder = Path(spec.origin).parent
        lines = sum(len(p.read_text().splitlines()) for p in folder.glob("*.py"))
        sizes[architecture] = {"module": entry, "lines": lines}
    return sizes
