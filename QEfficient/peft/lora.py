"""LoRA in the exported graph: the adapter matrices are graph inputs, so adapters change without re-export or recompile.

Graph inputs (after the causal-LM contract's own, docs/lora.md):

| name | shape | meaning |
|---|---|---|
| `adapter_ids` | [B, 1] int64 | per input row, the adapter slot it uses; -1: none (the base model) |
| `lora_a.{module}` | [N, in, R] | per slot, `A^T` of the targeted module, ranks zero-padded to R |
| `lora_b.{module}` | [N, R, out] | per slot, `scaling * B^T` |

N (slots, `max_adapters`) and R (`max_lora_rank`) are fixed when the graph is exported. A targeted module's output
gains `((x @ A[id]) * (id >= 0)) @ B[id]`: the row's slot is gathered (`Gather`) and applied with two small batched
MatMuls; with one slot there is nothing to gather: the matrices are read where they are (broadcast over the rows).
Zero-padded ranks and empty slots add exact zeros.

`LoraSlots` keeps the host copy of those inputs and which adapter sits in which slot; the program binds them once
(`Program.bind_constants`) and every step reuses them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from QEfficient.peft.adapters import AdapterError, LoraAdapter

ADAPTER_IDS = "adapter_ids"


@dataclass(frozen=True)
class LoraLayout:
    """What the graph's LoRA inputs look like: the targeted modules (name -> (in, out), in model order), the rank R
    and the number of slots N."""

    modules: tuple[tuple[str, tuple[int, int]], ...]
    max_rank: int
    slots: int

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """The adapter weight inputs, name -> shape, in graph order."""
        shapes: dict[str, tuple[int, ...]] = {}
        for name, (fan_in, fan_out) in self.modules:
            shapes[f"lora_a.{name}"] = (self.slots, fan_in, self.max_rank)
            shapes[f"lora_b.{name}"] = (self.slots, self.max_rank, fan_out)
        return shapes

    def input_names(self) -> list[str]:
        return [ADAPTER_IDS, *self.input_shapes()]

    @property
    def identity(self) -> dict:
        """What the layout adds to the export's identity (the adapter values do not enter it)."""
        return {"modules": [name for name, _ in self.modules], "max_rank": self.max_rank, "slots": self.slots}


class LoraGraph:
    """Forward hooks on the targeted modules of a HF model that add the LoRA term from the graph's inputs.

    The hooks act only inside `applied(...)` (the export wrapper's forward); elsewhere the model is its own.
    """

    def __init__(self, model: nn.Module, layout: LoraLayout) -> None:
        self.layout = layout
        self._ids: torch.Tensor | None = None
        self._weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = [
            model.get_submodule(name).register_forward_hook(self._hook(name)) for name, _ in layout.modules
        ]

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def input_names(self) -> list[str]:
        return self.layout.input_names()

    def example_inputs(self, batch: int) -> dict[str, torch.Tensor]:
        """Inputs to trace with: every row on a slot (the last row on none), small random weights (zeros could be
        folded away)."""
        ids = torch.arange(batch, dtype=torch.int64).remainder(self.layout.slots).reshape(batch, 1)
        ids[-1] = -1
        generator = torch.Generator().manual_seed(0)
        weights = {
            name: torch.randn(shape, generator=generator) * 0.01 for name, shape in self.layout.input_shapes().items()
        }
        return {ADAPTER_IDS: ids, **weights}

    @contextlib.contextmanager
    def applied(self, inputs: Sequence[torch.Tensor]) -> Iterator[None]:
        """The hooks add the LoRA terms of `inputs` (`adapter_ids`, then the weights in `input_names` order)."""
        ids, *weights = inputs
        names = [name for name, _ in self.layout.modules]
        self._ids = ids
        self._weights = {name: (weights[2 * i], weights[2 * i + 1]) for i, name in enumerate(names)}
        try:
            yield
        finally:
            self._ids, self._weights = None, {}

    def _hook(self, name: str):  # noqa: ANN202 - a forward hook
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self._ids is None:
                return None
            a, b = self._weights[name]
            return output + self.delta(name, args[0], a, b)

        return hook

    def delta(self, name: str, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """`((x @ A[id]) * (id >= 0)) @ B[id]` per row; x `[B, S, in]`, or `[B, ..., S, in]` (a module applied to a
        cache, e.g. DeepSeek-V3's `kv_b_proj` on its compressed `[B, 1, ctx, r]` cache: each row on its adapter)."""
        ids = self._ids
        if x.dim() < 3 or x.shape[0] != ids.shape[0]:
            raise AdapterError(
                f"Module {name!r} sees input of shape {tuple(x.shape)}, not [batch, ..., seq, features]: its rows "
                "cannot be matched with their adapters (LoRA is supported on modules that keep the batch, not on MoE "
                "experts)."
            )
        on = (ids >= 0).to(x.dtype).unsqueeze(-1)  # [B, 1, 1]
        if self.layout.slots > 1:  # one slot: read in place, its batch dimension of 1 broadcast over the rows
            rows = ids.clamp(min=0).reshape(-1)
            a, b = a.index_select(0, rows), b.index_select(0, rows)  # [B, in, R], [B, R, out]
        for _ in range(x.dim() - 3):  # dimensions between the batch and the sequence: broadcast over them
            on, a, b = on.unsqueeze(1), a.unsqueeze(1), b.unsqueeze(1)
        return torch.matmul(torch.matmul(x, a) * on, b).to(x.dtype)


class LoraSlots:
    """The host copy of the graph's adapter weights (`LoraLayout.input_shapes`) and which adapter occupies each slot.

    `place(names)` makes the adapters resident, writing those that are not into the least recently used slots that
    the call does not need; it returns the arrays that changed, for the program to update.
    """

    def __init__(self, layout: LoraLayout) -> None:
        self.layout = layout
        self.arrays = {name: np.zeros(shape, np.float32) for name, shape in layout.input_shapes().items()}
        self.resident: list[str | None] = [None] * layout.slots
        self._used: list[int] = [0] * layout.slots
        self._clock = 0

    def check(self, adapter: LoraAdapter) -> None:
        """The adapter fits this layout: its modules are targeted and its rank is at most R."""
        targeted = dict(self.layout.modules)
        outside = [m for m in adapter.modules if m not in targeted]
        if outside:
            raise AdapterError(
                f"Adapter {adapter.name!r} targets {outside[:3]}{' ...' if len(outside) > 3 else ''}, which the "
                "compiled program has no LoRA inputs for: compile again with this adapter loaded."
            )
        if adapter.rank > self.layout.max_rank:
            raise AdapterError(
                f"Adapter {adapter.name!r} has rank {adapter.rank}, above the compiled max_lora_rank "
                f"{self.layout.max_rank}: compile again with compile(max_lora_rank={adapter.rank})."
            )

    def place(self, adapters: Sequence[LoraAdapter]) -> bool:
        """Make `adapters` resident (at most N); returns whether any slot was written."""
        if len(adapters) > self.layout.slots:
            raise AdapterError(
                f"{len(adapters)} adapters are used at once ({', '.join(a.name for a in adapters)}), but the program "
                f"was compiled for max_adapters={self.layout.slots}: compile again with "
                f"compile(max_adapters={len(adapters)})."
            )
        self._clock += 1
        wanted = {a.name for a in adapters}
        written = False
        for adapter in adapters:
            if adapter.name in self.resident:
                self._used[self.resident.index(adapter.name)] = self._clock
                continue
            free = [s for s in range(self.layout.slots) if self.resident[s] not in wanted]
            slot = min(free, key=lambda s: (self.resident[s] is not None, self._used[s]))
            self._write(slot, adapter)
            self._used[slot] = self._clock
            written = True
        return written

    def slot_of(self, name: str | None) -> int:
        """The slot of a resident adapter; -1 for None (the base model)."""
        return -1 if name is None else self.resident.index(name)

    def evict(self, name: str) -> None:
        """Forget an adapter (its slot keeps the values until reused; nothing reads it)."""
        if name in self.resident:
            self.resident[self.resident.index(name)] = None

    def _write(self, slot: int, adapter: LoraAdapter) -> None:
        self.check(adapter)
        for module, _ in self.layout.modules:
            a_slot, b_slot = self.arrays[f"lora_a.{module}"][slot], self.arrays[f"lora_b.{module}"][slot]
            a_slot[:] = 0
            b_slot[:] = 0
            if module in adapter.weights:
                a, b = adapter.weights[module]
                a_slot[:, : a.shape[1]] = a
                b_slot[: b.shape[0]] = b
        self.resident[slot] = adapter.name
