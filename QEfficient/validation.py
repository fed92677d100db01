"""Validation: the same inputs through HF PyTorch, transformed PyTorch, ONNX Runtime and the compiled program.

`validate(...)` returns a `ValidationReport` whose `table()` prints one row per stage with its largest
absolute difference from HF. Embeddings and hidden states must agree within `atol` (1e-5 by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from QEfficient.base.modeling_qeff import SINGLE_GRAPH
from QEfficient.transformers.embeddings.batching import pad_to_shape
from QEfficient.utils.errors import first_line

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
    """One stage compared with HF: its largest absolute difference (or, for generation, differing tokens)."""

    stage: str
    max_abs_diff: float
    shape: tuple[int, ...]
    passed: bool
    detail: str = ""
    error: str = ""  # the first line of the exception when the stage raised


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
        tokens = any(s.detail for s in self.stages)
        title = "exact greedy tokens" if tokens else f"tolerance {self.atol:g} absolute"
        column = "tokens equal to HF" if tokens else "max |diff| vs HF"
        lines = [
            f"Validation of {self.model} ({title})",
            f"{'stage':<22} {'shape':<16} {column:>18}  result",
            "-" * 67,
        ]
        for s in self.stages:
            measure = s.detail or f"{s.max_abs_diff:.3e}"
            result = "PASS" if s.passed else "FAIL" + (f": {s.error}" if s.error else "")
            lines.append(f"{s.stage:<22} {str(s.shape):<16} {measure:>18}  {result}")
        lines.append(f"overall: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def _masked(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Hidden states at valid positions only (padding positions carry no meaning)."""
    return values[mask.astype(bool)] if values.ndim == 3 else values


def validate(
    model: Any,
    sentences: Sequence[str] | Sequence[Sequence[int]] = DEFAULT_SENTENCES,
    tokenizer: Any = None,
    seq_len: int | Sequence[int] | None = None,
    atol: float = 1e-5,
    **from_pretrained_kwargs: Any,
) -> ValidationReport:
    """Compare HF PyTorch, QEfficient's transformed PyTorch, ONNX Runtime and the compiled program.

    `model` is a QEfficient model or a path/hub id. Encoders (`QEFFAutoModel`, loaded with
    `from_pretrained(model, **from_pretrained_kwargs)`, e.g. `pooling="mean"`) compare embeddings or
    hidden states within `atol`, and sequence classifiers (`QEFFAutoModelForSequenceClassification`) their
    logits; causal LMs go to `validate_causal_lm` (exact greedy tokens; `sentences` are the prompts).

    `sentences` are strings (through the tokenizer) or lists of token ids (no tokenizer needed; the batch is
    right-padded with the model's pad id). A stage that raises is recorded as failed, with the first line
    of the error in `StageResult.error`, and the later stages are not run.
    """
    from QEfficient.transformers.models.modeling_auto import (
        QEFFAutoModel,
        QEFFAutoModelForCausalLM,
        QEFFTransformersBase,
    )
    from QEfficient.transformers.models.registry import is_encoder

    if not isinstance(model, QEFFTransformersBase):
        if is_encoder(model, from_pretrained_kwargs.get("gguf_file")):
            model = QEFFAutoModel.from_pretrained(model, **from_pretrained_kwargs)
        else:
            model = QEFFAutoModelForCausalLM.from_pretrained(model, **from_pretrained_kwargs)
    if isinstance(model, QEFFAutoModelForCausalLM):
        prompts = DEFAULT_PROMPTS if sentences is DEFAULT_SENTENCES else sentences
        return validate_causal_lm(model, prompts, tokenizer)
    input_ids, mask = _padded_batch(model, sentences, tokenizer)
    ids_t, mask_t = torch.from_numpy(input_ids), torch.from_numpy(mask)
    report = ValidationReport(model=model.model_name, atol=atol)
    reference: np.ndarray | None = None

    def add(stage: str, run: Any) -> bool:
        """Run one stage and compare it with HF; a stage that raises is recorded as failed."""
        nonlocal reference
        try:
            values = run()
            if reference is None:
                reference = values
            diff = float(np.max(np.abs(_masked(values, mask) - _masked(reference, mask))))
        except Exception as exc:  # noqa: BLE001 - reported as the failing stage
            report.stages.append(StageResult(stage, float("inf"), (), False, error=first_line(exc, limit=300)))
            return False
        report.stages.append(StageResult(stage, diff, tuple(values.shape), bool(diff <= atol)))
        return True

    def onnx_runtime() -> np.ndarray:
        onnx_path = model.onnx_paths.get(SINGLE_GRAPH) or model.export()
        if not model.graph_holds_any_shape:  # the static graph of this batch's shape
            batch, seq = input_ids.shape
            onnx_path = model.export_static([(batch, seq)])[f"b{batch}_s{seq}"]
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        return session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]

    def compiled() -> np.ndarray:
        if model._program is None:
            longest = int(mask.sum(1).max())
            model.compile(seq_len=seq_len or [max(8, 1 << (longest - 1).bit_length())])
        return model.generate({"input_ids": input_ids, "attention_mask": mask})[model.output_name]

    stages = (
        ("HF PyTorch", lambda: model.hf_reference(ids_t, mask_t).numpy()),
        ("transformed PyTorch", lambda: _no_grad(model.model, ids_t, mask_t)),
        ("ONNX Runtime", onnx_runtime),
        ("compiled program", compiled),
    )
    for stage, run in stages:
        if not add(stage, run):
            break
    return report


def _no_grad(module: Any, *args: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module(*args).numpy()


def _padded_batch(model: Any, sentences: Any, tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64, right-padded: from texts through the tokenizer, or from token ids."""
    items = list(sentences)
    if not items:
        raise ValueError("validate() got no sentences.")
    if all(isinstance(s, str) for s in items):
        tokenizer = tokenizer or model.tokenizer
        if tokenizer is None:
            raise ValueError("validate() needs a tokenizer for text inputs; pass tokenizer=, or lists of token ids.")
        batch = tokenizer(items, padding=True, return_tensors="np")
        return batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    if any(isinstance(s, str) for s in items):
        raise TypeError("validate() takes strings or lists of token ids, not a mix of both.")
    rows = [[int(t) for t in row] for row in items]
    if any(not row for row in rows):
        raise ValueError("validate() got an empty list of token ids.")
    batch = pad_to_shape(rows, len(rows), max(len(r) for r in rows), model._pad_token_id())
    return batch["input_ids"], batch["attention_mask"]


DEFAULT_PROMPTS = ("The capital of France is", "Once upon a time, in a small village by the sea, there lived")


def default_token_prompts(vocab_size: int) -> list[list[int]]:
    """Two fixed token-id prompts (17 and 5 tokens) for a model saved without a tokenizer; ids avoid the first
    and last few of the vocabulary, where special tokens usually sit."""
    generator = torch.Generator().manual_seed(1234)
    low, high = min(8, vocab_size // 4), max(vocab_size - 32, vocab_size * 3 // 4)
    return [torch.randint(low, high, (n,), generator=generator).tolist() for n in (17, 5)]


def validate_causal_lm(
    model: Any,
    prompts: Sequence[str] | Sequence[Sequence[int]] = DEFAULT_PROMPTS,
    tokenizer: Any = None,
    generation_len: int = 32,
    prefill_seq_len: int = 8,
    ctx_len: int = 128,
    **from_pretrained_kwargs: Any,
) -> ValidationReport:
    """Greedy tokens of HF `generate`, the transformed PyTorch model, the exported graph in ONNX Runtime and
    the compiled program, per prompt; every stage must equal HF exactly.

    Prompts are strings (through the tokenizer) or lists of token ids; a model saved without a tokenizer is
    validated on `default_token_prompts`. A
    `prefill_seq_len` shorter than the prompts exercises chunked prefill; a model whose recurrent prefill must fit in
    one chunk (`single_chunk_prefill`) is validated with `prefill_seq_len` raised to its longest prompt. A stage
    that raises is recorded
    as failed, with the first line of the error, and the later stages are not run.
    """
    from QEfficient.transformers.models.causal_lm import QEFFAutoModelForCausalLM

    if not isinstance(model, QEFFAutoModelForCausalLM):
        model = QEFFAutoModelForCausalLM.from_pretrained(model, **from_pretrained_kwargs)
    tokenizer = tokenizer or model.tokenizer
    if tokenizer is None and prompts is DEFAULT_PROMPTS:
        prompts = default_token_prompts(model.hf_model.config.get_text_config(decoder=True).vocab_size)
    rows = [list(p) if not isinstance(p, str) else None for p in prompts]
    if any(r is None for r in rows):
        if tokenizer is None:
            raise ValueError("validate_causal_lm() needs a tokenizer for text prompts; pass tokenizer=.")
        rows = [r if r is not None else tokenizer(p)["input_ids"] for r, p in zip(rows, prompts)]
    report = ValidationReport(model=model.model_name, atol=0.0)
    shape = (len(rows), generation_len)
    try:
        expected = [_hf_greedy(model.hf_model, r, generation_len) for r in rows]
    except Exception as exc:  # noqa: BLE001 - reported as the failing stage
        report.stages.append(StageResult("HF generate", 0, shape, False, first_line(exc, limit=300)))
        return report
    total = sum(len(e) for e in expected)
    report.stages.append(StageResult("HF generate", 0, shape, True, f"{total}/{total}"))
    if model.model.prefill_starts_from_zero:
        prefill_seq_len = max(prefill_seq_len, *(len(r) for r in rows))
    try:
        programs = _programs_to_validate(model, prefill_seq_len, ctx_len)
    except Exception as exc:  # noqa: BLE001
        report.stages.append(StageResult("export and compile", total, shape, False, first_line(exc, limit=300)))
        return report
    for stage, program in programs.items():
        try:
            got = model.text_generator(program(), tokenizer).generate(rows, generation_len).generated_ids
        except Exception as exc:  # noqa: BLE001
            report.stages.append(StageResult(stage, total, shape, False, first_line(exc, limit=300)))
            return report
        equal = sum(_common_prefix(g, e) for g, e in zip(got, expected))
        report.stages.append(StageResult(stage, total - equal, shape, got == expected, f"{equal}/{total}"))
    return report


def _hf_greedy(hf_model: Any, ids: list[int], generation_len: int) -> list[int]:
    """HF `generate`'s greedy continuation of one prompt (exactly `generation_len` tokens unless EOS)."""
    input_ids = torch.tensor([ids])
    pad = getattr(hf_model.generation_config, "pad_token_id", None)
    with torch.no_grad():
        out = hf_model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=generation_len,
            do_sample=False,
            pad_token_id=pad if pad is not None else 0,
        )
    return out[0, input_ids.shape[1] :].tolist()


def _programs_to_validate(model: Any, prefill_seq_len: int, ctx_len: int) -> dict[str, Any]:
    """Stage name -> a callable opening that stage's program (transformed PyTorch, raw ONNX, compiled)."""
    from QEfficient.backends.base import MultiGraphProgram
    from QEfficient.backends.onnxruntime import OnnxRuntimeProgram, graph_input_dims, in_place_states
    from QEfficient.backends.pytorch import PyTorchProgram

    model.compile(prefill_seq_len=prefill_seq_len, ctx_len=ctx_len, batch_size=1)
    manifest = dict(model.program.manifest)

    def raw_graph(path: Any, compiled: dict[str, Any]) -> OnnxRuntimeProgram:
        """The exported graph before the backend's compile, with the compiled program's specialisations."""
        raw = onnx.load(str(path), load_external_data=False)
        options = {**compiled["options"], "session_optimization_level": "all"}
        manifest = {**compiled, "file": path.name, "inputs": graph_input_dims(raw), "options": options}
        return OnnxRuntimeProgram(path.parent, {**manifest, "in_place_state": in_place_states(raw)})

    def onnx_runtime() -> Any:
        if "graphs" not in manifest:
            return raw_graph(model.onnx_path, manifest)
        graphs = {name: raw_graph(model.onnx_paths[name], meta) for name, meta in manifest["graphs"].items()}
        return MultiGraphProgram(manifest, graphs)

    return {
        "transformed PyTorch": lambda: PyTorchProgram(model.model, manifest, model.model.input_names()),
        "ONNX Runtime": onnx_runtime,
        "compiled program": lambda: model.program,
    }


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Number of leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
