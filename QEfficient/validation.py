"""Validation: the same inputs through HF PyTorch, transformed PyTorch, ONNX Runtime and the compiled program.

`validate(...)` returns a `ValidationReport` whose `table()` prints one row per stage with its largest
absolute difference from HF. Embeddings and hidden states must agree within `atol` (1e-5 by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from QEfficient.transformers.embeddings.pooling import EncoderForExport

DEFAULT_SENTENCES = (
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates again.",
    "Paris",
    "QEfficient exports HF transformers models to ONNX, compiles them for a fixed-shape backend, and checks "
    "at every stage that the numbers still match the original PyTorch model, token for token.",
)


@dataclass
class StageResult:
    stage: str
    max_abs_diff: float
    shape: tuple[int, ...]
    passed: bool


@dataclass
class ValidationReport:
    """Per-stage comparison against HF PyTorch."""

    model: str
    atol: float
    stages: list[StageResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.stages)

    def table(self) -> str:
        lines = [
            f"Validation of {self.model} (tolerance {self.atol:g} absolute)",
            f"{'stage':<22} {'shape':<16} {'max |diff| vs HF':>17}  result",
            "-" * 66,
        ]
        for s in self.stages:
            lines.append(f"{s.stage:<22} {str(s.shape):<16} {s.max_abs_diff:>17.3e}  {'PASS' if s.passed else 'FAIL'}")
        lines.append(f"overall: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def _masked(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Hidden states at valid positions only (padding positions carry no meaning)."""
    return values[mask.astype(bool)] if values.ndim == 3 else values


def validate(
    model: Any,
    sentences: Sequence[str] = DEFAULT_SENTENCES,
    tokenizer: Any = None,
    seq_len: int | Sequence[int] | None = None,
    atol: float = 1e-5,
    **from_pretrained_kwargs: Any,
) -> ValidationReport:
    """Compare HF PyTorch, QEfficient's transformed PyTorch, ONNX Runtime and the compiled program.

    `model` is a `QEFFAutoModel` (or other `QEFFTransformersBase`) or a path/hub id, loaded with
    `QEFFAutoModel.from_pretrained(model, **from_pretrained_kwargs)` (e.g. `pooling="mean"`).
    """
    from QEfficient.transformers.models.modeling_auto import QEFFAutoModel, QEFFTransformersBase

    if not isinstance(model, QEFFTransformersBase):
        model = QEFFAutoModel.from_pretrained(model, **from_pretrained_kwargs)
    tokenizer = tokenizer or model.tokenizer
    if tokenizer is None:
        raise ValueError("validate() needs a tokenizer; pass tokenizer=.")
    batch = tokenizer(list(sentences), padding=True, return_tensors="np")
    input_ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    ids_t, mask_t = torch.from_numpy(input_ids), torch.from_numpy(mask)
    report = ValidationReport(model=model.model_name, atol=atol)

    wrapper = model.model
    with torch.no_grad():
        hidden = model.hf_model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        reference = hidden
        if isinstance(wrapper, EncoderForExport) and wrapper.pooling is not None:
            reference = wrapper.pooling(hidden, mask_t)
            if wrapper.normalize:
                reference = torch.nn.functional.normalize(reference, p=2, dim=-1)
        reference = reference.numpy()
        transformed = wrapper(ids_t, mask_t).numpy()

    def add(stage: str, values: np.ndarray) -> None:
        diff = float(np.max(np.abs(_masked(values, mask) - _masked(reference, mask))))
        report.stages.append(StageResult(stage, diff, tuple(values.shape), diff <= atol))

    add("HF PyTorch", reference)
    add("transformed PyTorch", transformed)
    onnx_path = model.onnx_path or model.export()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    add("ONNX Runtime", session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0])
    if model._program is None:
        longest = int(mask.sum(1).max())
        model.compile(seq_len=seq_len or [max(8, 1 << (longest - 1).bit_length())])
    add("compiled program", model.generate(batch)[model.output_name])
    return report
