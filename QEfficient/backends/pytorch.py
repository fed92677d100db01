"""Running the transformed PyTorch module behind the `Program` interface (validation, `runtime="pytorch"`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from QEfficient.backends.base import Program


class PyTorchProgram(Program):
    """The export-ready PyTorch module, run eagerly with the same inputs and outputs as the compiled graph.

    It accepts any shapes (no specialisation is pinned); `manifest` supplies input dims and output names,
    `input_names` the order of the module's positional arguments.
    """

    def __init__(self, module: nn.Module, manifest: dict[str, Any], input_names: list[str]) -> None:
        super().__init__(manifest)
        self.module = module.eval()
        self.argument_order = input_names

    def specialization_of(self, shapes: dict[str, tuple[int, ...]]) -> int:
        return 0

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in self.argument_order]
        with torch.no_grad():
            outputs = self.module(*args)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return {name: t.numpy() for name, t in zip(self.output_names, outputs)}
