"""`QEFFAutoLoraModelForCausalLM` (several LoRA adapters, one per prompt of a batch) and `QEFFAutoPeftModelForCausalLM`
(peft's one-active-adapter interface), both on one compiled program whose adapter weights are inputs (docs/lora.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from QEfficient.base.modeling_qeff import GraphExport
from QEfficient.peft.adapters import AdapterError, LoraAdapter, check_adapter, read_adapter, read_adapter_config
from QEfficient.peft.lora import ADAPTER_IDS, LoraGraph, LoraLayout, LoraSlots
from QEfficient.transformers.models.causal_lm import QEFFAutoModelForCausalLM


class QEFFAutoLoraModelForCausalLM(QEFFAutoModelForCausalLM):
    """A causal LM with LoRA adapters that are inputs of its compiled program: adapters load, switch and mix within
    a batch with no re-export or recompile (docs/lora.md).

    ```python
    model = QEFFAutoLoraModelForCausalLM.from_pretrained(base_path)
    model.load_adapter("adapters/math", "math")
    model.load_adapter("adapters/code", "code")
    model.compile(prefill_seq_len=32, ctx_len=256, batch_size=3)   # max_lora_rank / max_adapters: from the adapters
    out = model.generate(prompts=["2+2=", "def f():", "Hello"], adapter_names=["math", "code", None])  # None: base
    ```

    The program has `max_adapters` slots (default: the adapters loaded at compile time) of rank `max_lora_rank`
    (default: their largest rank) on the modules they target. A `generate` call may use up to `max_adapters`
    adapters; those not in a slot replace the least recently used ones (a host-to-program copy, no recompile).
    """

    # Slots compiled when compile() is not given max_adapters; None: one per loaded adapter.
    _default_slots: ClassVar[int | None] = None

    def __init__(self, model: nn.Module, continuous_batching: bool = False, **kwargs: Any) -> None:
        super().__init__(model, continuous_batching=continuous_batching, **kwargs)
        self.adapters: dict[str, LoraAdapter] = {}
        self.active_adapter: str | None = None  # what generate() uses when given no adapter_name(s)
        self.lora_slots: LoraSlots | None = None  # the compiled program's slots
        self._next_adapter_ids: list[int] | None = None

    # ---- adapters ------------------------------------------------------------------------------------

    def load_adapter(self, path: str | os.PathLike, adapter_name: str | None = None) -> str:
        """Read a peft LoRA adapter folder under `adapter_name` (default: the folder's name) and check it against the
        base model (and, once compiled, against the program's LoRA inputs). Returns the name."""
        name = adapter_name or Path(path).name
        if name in self.adapters:
            raise AdapterError(f"An adapter named {name!r} is loaded already; unload_adapter({name!r}) first.")
        adapter = read_adapter(path, name)
        check_adapter(adapter, self.hf_model)
        if self.lora_slots is not None:
            self.lora_slots.check(adapter)
        self.adapters[name] = adapter
        return name

    def unload_adapter(self, adapter_name: str) -> None:
        """Forget an adapter (the active one: generation goes back to the base model)."""
        self._adapter(adapter_name)
        del self.adapters[adapter_name]
        if self.lora_slots is not None:
            self.lora_slots.evict(adapter_name)
        if self.active_adapter == adapter_name:
            self.active_adapter = None

    def set_adapter(self, adapter_name: str) -> None:
        """Make `adapter_name` the adapter generate() uses by default."""
        self._adapter(adapter_name)
        self.active_adapter = adapter_name

    def disable_adapter(self) -> contextlib.AbstractContextManager:
        """Generate with the base model (no adapter) from now on; as a context manager (`with
        model.disable_adapter():`, as in peft) the active adapter comes back on exit."""
        previous, self.active_adapter = self.active_adapter, None

        @contextlib.contextmanager
        def restore() -> Iterator[None]:
            try:
                yield
            finally:
                self.active_adapter = previous

        return restore()

    @property
    def adapter_names(self) -> list[str]:
        return list(self.adapters)

    def _adapter(self, name: str) -> LoraAdapter:
        if name not in self.adapters:
            raise AdapterError(f"Unknown adapter {name!r}; loaded adapters: {self.adapter_names or 'none'}.")
        return self.adapters[name]

    # ---- export / compile ----------------------------------------------------------------------------

    def _lora_layout(self, max_lora_rank: int | None, max_adapters: int | None) -> LoraLayout:
        """The LoRA inputs to compile: the modules the loaded adapters target, rank and slots (given, or from the
        adapters). Without arguments a compiled layout that still fits every loaded adapter is kept."""
        if not self.adapters:
            raise AdapterError("No LoRA adapter is loaded: load_adapter(path, name) before compile().")
        for value, what in ((max_lora_rank, "max_lora_rank"), (max_adapters, "max_adapters")):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{what} must be a positive int; got {value!r}.")
        current = self.model.lora.layout if self.model.lora is not None else None
        if current is not None and max_lora_rank is None and max_adapters is None:
            with contextlib.suppress(AdapterError):
                slots = LoraSlots(current)
                for adapter in self.adapters.values():
                    slots.check(adapter)
                return current
        features: dict[str, tuple[int, int]] = {}
        for adapter in self.adapters.values():
            features.update(check_adapter(adapter, self.hf_model))
        rank = max(adapter.rank for adapter in self.adapters.values())
        if max_lora_rank is not None and max_lora_rank < rank:
            worst = max(self.adapters.values(), key=lambda a: a.rank)
            raise AdapterError(
                f"Adapter {worst.name!r} has rank {rank}, above max_lora_rank {max_lora_rank}: raise max_lora_rank."
            )
        modules = tuple((name, features[name]) for name, _ in self.hf_model.named_modules() if name in features)
        slots = max_adapters or self._default_slots or len(self.adapters)
        return LoraLayout(modules, max_lora_rank or rank, slots)

    def compile(
        self, *args: Any, max_lora_rank: int | None = None, max_adapters: int | None = None, **kwargs: Any
    ) -> Path:
        """`QEFFAutoModelForCausalLM.compile` with LoRA inputs: `max_adapters` slots (adapters usable in one
        generate call; default: the loaded adapters, or 1 for `QEFFAutoPeftModelForCausalLM`) of rank
        `max_lora_rank` (default: the loaded adapters' largest) on the modules the loaded adapters target. Adapters
        that fit load later with no recompile."""
        layout = self._lora_layout(max_lora_rank, max_adapters)
        if self.model.lora is None or self.model.lora.layout != layout:
            self.model.use_lora(LoraGraph(self.hf_model, layout))
            self.onnx_path = None  # other graph inputs: export again
        program = super().compile(*args, **kwargs)
        self.lora_slots = LoraSlots(layout)
        # resident from the start: the active adapter first, then the others in load order, while slots last
        first = [self.active_adapter] if self.active_adapter else []
        names = list(dict.fromkeys([*first, *self.adapters]))[: layout.slots]
        self.lora_slots.place([self.adapters[name] for name in names])
        self.program.bind_constants(self.lora_slots.arrays)
        return program

    def _graph_export(self, seq: int, ctx_len: int, dynamic_seq_len: bool = False) -> GraphExport:
        graph = super()._graph_export(seq, ctx_len, dynamic_seq_len)
        if self.model.lora is not None:  # after the past inputs, as the wrapper's forward takes them
            graph.example_inputs.update(self.model.lora.example_inputs(graph.example_inputs["input_ids"].shape[0]))
            graph.dynamic_axes[ADAPTER_IDS] = {0: "batch_size"}
        return graph

    # ---- generation ----------------------------------------------------------------------------------

    def generate(
        self,
        tokenizer: Any = None,
        prompts: str | Sequence[str] | Sequence[Sequence[int]] = (),
        *args: Any,
        adapter_name: str | None = None,
        adapter_names: Sequence[str | None] | None = None,
        **kwargs: Any,
    ):  # noqa: ANN201 - GenerationOutput
        """`QEFFAutoModelForCausalLM.generate`, each prompt with a LoRA adapter: `adapter_names` (one per prompt,
        None: the base model), else `adapter_name` for all, else the active adapter (`set_adapter`; none: the base
        model). With continuous batching each request keeps its adapter in whichever cache row it runs."""
        if self.lora_slots is None:
            raise RuntimeError(f"{type(self).__name__} is not compiled yet; call .compile(...) first.")
        count = _prompt_count(prompts)
        if adapter_names is not None:
            if adapter_name is not None:
                raise ValueError("Give adapter_name (all prompts) or adapter_names (one per prompt), not both.")
            names = list(adapter_names)
            if len(names) != count:
                raise ValueError(f"adapter_names has {len(names)} entries for {count} prompts.")
        else:
            names = [adapter_name if adapter_name is not None else self.active_adapter] * count
        used = [self._adapter(name) for name in dict.fromkeys(n for n in names if n is not None)]
        if self.lora_slots.place(used):
            self.program.bind_constants(self.lora_slots.arrays)
        self._next_adapter_ids = [self.lora_slots.slot_of(name) for name in names]
        try:
            return super().generate(tokenizer, prompts, *args, **kwargs)
        finally:
            self._next_adapter_ids = None

    @property
    def step_inputs(self) -> dict[str, np.ndarray]:
        """The inputs of a bare program step besides ids and positions (`QEfficient.generation.quality.perplexity`):
        every row on the active adapter (none: the base model)."""
        if self.lora_slots is None:
            raise RuntimeError(f"{type(self).__name__} is not compiled yet; call .compile(...) first.")
        if self.active_adapter is not None and self.lora_slots.place([self._adapter(self.active_adapter)]):
            self.program.bind_constants(self.lora_slots.arrays)
        batch = self.compile_config.get("batch_size") or 1
        return {ADAPTER_IDS: np.full((batch, 1), self.lora_slots.slot_of(self.active_adapter), dtype=np.int64)}

    def text_generator(self, program: Any = None, tokenizer: Any = None):  # noqa: ANN201 - TextGenerator
        generator = super().text_generator(program, tokenizer)
        generator.adapter_ids = self._next_adapter_ids
        return generator


class QEFFAutoPeftModelForCausalLM(QEFFAutoLoraModelForCausalLM):
    """A peft LoRA adapter folder on its base model, with peft's interface: `load_adapter`, `set_adapter`,
    `disable_adapter` switch adapters on the same compiled program (one adapter slot; docs/lora.md).

    ```python
    model = QEFFAutoPeftModelForCausalLM.from_pretrained("adapters/math")   # base: base_model_name_or_path
    model.compile(prefill_seq_len=32, ctx_len=256)
    model.generate(prompts=["2+2="])
    model.load_adapter("adapters/code", "code"); model.set_adapter("code")   # no recompile
    with model.disable_adapter():
        model.generate(prompts=["Hello"])                                      # the base model
    ```
    """

    _default_slots: ClassVar[int | None] = 1

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        base_model: str | os.PathLike | None = None,
        adapter_name: str = "default",
        **kwargs: Any,
    ) -> QEFFAutoPeftModelForCausalLM:
        """Load the adapter folder's base model (`base_model`, else its config's `base_model_name_or_path`) as
        `QEFFAutoModelForCausalLM.from_pretrained` does (other keyword arguments go there), then the adapter, active
        under `adapter_name`."""
        config = read_adapter_config(pretrained_model_name_or_path)  # a non-LoRA adapter fails before the base loads
        base = base_model or config.get("base_model_name_or_path")
        if not base:
            raise AdapterError(
                f"{pretrained_model_name_or_path}'s adapter_config.json names no base_model_name_or_path: pass "
                "base_model=<folder of the base model>."
            )
        model = super().from_pretrained(base, *args, **kwargs)
        model.load_adapter(pretrained_model_name_or_path, adapter_name)
        model.set_adapter(adapter_name)
        return model


def _prompt_count(prompts: Any) -> int:
    """The number of prompts `generate` sees (as `TextGenerator.generate` reads them)."""
    if isinstance(prompts, str):
        return 1
    prompts = list(prompts)
    return 1 if prompts and all(isinstance(t, int) for t in prompts) else len(prompts)
