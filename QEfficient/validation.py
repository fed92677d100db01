"""Validation: the same inputs through HF PyTorch, transformed PyTorch, ONNX Runtime and the compiled program.

`validate(...)` returns a `ValidationReport` whose `table()` prints one row per stage with its largest
absolute difference from HF. Embeddings and hidden states must agree within `atol` (1e-5 by default).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    atol: float | None = None,
    **from_pretrained_kwargs: Any,
) -> ValidationReport:
    """Compare HF PyTorch, QEfficient's transformed PyTorch, ONNX Runtime and the compiled program.

    `model` is a QEfficient model or a path/hub id. Encoders (`QEFFAutoModel`, loaded with
    `from_pretrained(model, **from_pretrained_kwargs)`, e.g. `pooling="mean"`) compare embeddings or
    hidden states within `atol`, and sequence classifiers (`QEFFAutoModelForSequenceClassification`) their
    logits; causal LMs go to `validate_causal_lm` (exact greedy tokens; `sentences` are the prompts), CTC speech
    models to `validate_ctc` (logits on synthetic clips, `atol` default 1e-4). `atol` defaults to 1e-5.

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
    from QEfficient.transformers.models.speech_ctc import QEFFAutoModelForCTC

    if isinstance(model, QEFFAutoModelForCTC) or (not isinstance(model, QEFFTransformersBase) and is_ctc(model)):
        return validate_ctc(model, seq_len=seq_len, atol=atol or 1e-4, **from_pretrained_kwargs)
    atol = 1e-5 if atol is None else atol
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
        report.stages.append(_token_stage(stage, got, expected, shape))
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

    # a pre-quantised checkpoint's own integer weights computed in fp32 (accuracy_level 0): the arithmetic of the
    # dequantised model HF runs (the default, int8 activations in the kernel, is the fast form;
    # docs/quantized_checkpoints.md)
    exact = {"accuracy_level": 0} if model.quantized_checkpoint is not None else {}
    model.compile(prefill_seq_len=prefill_seq_len, ctx_len=ctx_len, batch_size=1, **exact)
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


def _token_stage(stage: str, got: list[list[int]], expected: list[list[int]], shape: tuple[int, ...]) -> StageResult:
    """A generation stage against HF: the tokens each row shares with HF's from its start, out of all of HF's; it
    passes when every row is equal."""
    total = sum(len(e) for e in expected)
    equal = sum(_common_prefix(g, e) for g, e in zip(got, expected))
    return StageResult(stage, total - equal, shape, got == expected, f"{equal}/{total}")


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Number of leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def default_ctc_audio(sampling_rate: int = 16000) -> list[np.ndarray]:
    """Two fixed synthetic clips (0.55 s and 1.3 s: tones with a glide and a little noise), float32 in [-1, 1]."""
    generator = np.random.default_rng(2024)
    clips = []
    for seconds, base in ((0.55, 220.0), (1.3, 330.0)):
        t = np.arange(int(seconds * sampling_rate)) / sampling_rate
        tone = 0.4 * np.sin(2 * np.pi * (base + 200 * t) * t) + 0.2 * np.sin(2 * np.pi * 3 * base * t)
        clips.append((tone + 0.05 * generator.standard_normal(t.size)).astype(np.float32))
    return clips


def validate_ctc(
    model: Any,
    audio: Sequence[Any] | None = None,
    sampling_rate: int | None = None,
    inputs: Sequence[np.ndarray] | None = None,
    seq_len: int | Sequence[int] | None = None,
    atol: float = 1e-4,
    **from_pretrained_kwargs: Any,
) -> ValidationReport:
    """CTC logits of HF PyTorch (each clip alone, unpadded), the transformed PyTorch model and the exported graph in
    ONNX Runtime (the clips as one right-padded batch), and the compiled program (the batch, and each clip alone,
    on the smallest compiled length that fits); every stage within `atol` of HF at each clip's valid frames.

    `model` is a `QEFFAutoModelForCTC` or a path. `audio`: clips (WAV paths or 1-D samples at `sampling_rate`), through
    `model.prepare` (resampling, feature extractor); default `default_ctc_audio()`. Or `inputs`: the model's own
    unpadded inputs (1-D samples or [T, F] feature frames). When the model is not compiled yet, it is compiled for
    lengths a little above each clip's (`seq_len` to choose), so that every clip runs padded.
    """
    from QEfficient.transformers.models.speech_ctc import QEFFAutoModelForCTC

    if not isinstance(model, QEFFAutoModelForCTC):
        model = QEFFAutoModelForCTC.from_pretrained(model, **from_pretrained_kwargs)
    report = ValidationReport(model=model.model_name, atol=atol)
    try:
        if inputs is None:
            clips = default_ctc_audio(model.sampling_rate) if audio is None else audio
            rate = model.sampling_rate if audio is None else sampling_rate
            inputs = model.prepare(list(clips), rate)
        rows = [np.asarray(x, dtype=np.float32) for x in inputs]
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("validate_ctc() needs at least one non-empty clip.")
    except Exception as exc:  # noqa: BLE001 - reported as the failing stage
        report.stages.append(StageResult("inputs", float("inf"), (), False, error=first_line(exc, limit=300)))
        return report
    longest = max(len(r) for r in rows)
    values = np.zeros((len(rows), longest, *rows[0].shape[1:]), np.float32)
    mask = np.zeros((len(rows), longest), np.int64)
    for i, row in enumerate(rows):
        values[i, : len(row)], mask[i, : len(row)] = row, 1
    frames = model.output_lengths([len(r) for r in rows])
    reference: list[np.ndarray] = []

    def add(stage: str, run: Any) -> bool:
        try:
            got = run()
            if not reference:
                reference.extend(got)
            diff = max(float(np.max(np.abs(g[: len(r)] - r))) for g, r in zip(got, reference))
            if any(len(g) < len(r) for g, r in zip(got, reference)):
                raise ValueError(f"fewer frames than HF: {[len(g) for g in got]} vs {[len(r) for r in reference]}")
        except Exception as exc:  # noqa: BLE001 - reported as the failing stage
            report.stages.append(StageResult(stage, float("inf"), (), False, error=first_line(exc, limit=300)))
            return False
        shape = (len(rows), int(max(frames)), int(reference[0].shape[-1]))
        report.stages.append(StageResult(stage, diff, shape, bool(diff <= atol)))
        return True

    def hf() -> list[np.ndarray]:
        return [model.hf_reference(row)[0].numpy() for row in rows]

    def trimmed(batch_logits: np.ndarray) -> list[np.ndarray]:
        return [row[: int(n)] for row, n in zip(batch_logits, frames)]

    def pytorch() -> list[np.ndarray]:
        return trimmed(model.generate({model.layout.name: values, "attention_mask": mask}, runtime="pytorch")["logits"])

    def onnx_runtime() -> list[np.ndarray]:
        onnx_path = model.onnx_paths.get(SINGLE_GRAPH) or model.export()
        if not model.graph_holds_any_shape:
            onnx_path = model.export_static([values.shape[:2]])[f"b{values.shape[0]}_s{values.shape[1]}"]
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        return trimmed(session.run(None, {model.layout.name: values, "attention_mask": mask})[0])

    def compiled() -> list[np.ndarray]:
        if model._program is None:
            step = 1024 if model.layout.raw_audio else 16
            lengths = seq_len or sorted({(len(r) // step + 1) * step for r in rows})
            model.compile(seq_len=lengths, batch_size=sorted({1, len(rows)}))
        together = trimmed(model.generate({model.layout.name: values, "attention_mask": mask})["logits"])
        alone = [model.generate({model.layout.name: row})["logits"][0] for row in rows]
        # the worse of the two runs of each clip: padded in the batch, and on its own smallest compiled length
        return [
            max((a, b), key=lambda x, r=r: float(np.max(np.abs(x[: len(r)] - r))))
            for a, b, r in zip(together, alone, reference)
        ]

    for stage, run in (
        ("HF PyTorch", hf),
        ("transformed PyTorch", pytorch),
        ("ONNX Runtime", onnx_runtime),
        ("compiled program", compiled),
    ):
        if not add(stage, run):
            break
    return report


def is_speech_seq2seq(model: Any) -> bool:
    """Whether a model path (or hub id in the HF cache) holds a speech-to-text encoder-decoder (Whisper, ...): a model
    type of transformers' speech-seq2seq mapping."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(str(model))
    except Exception:  # noqa: BLE001 - no config there (a GGUF file, an id not in the HF cache): not a speech model
        return False
    return getattr(config, "model_type", None) in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES


def validate_speech_seq2seq(
    model: Any,
    audio: Sequence[Any] | None = None,
    sampling_rate: int | None = None,
    generation_len: int = 24,
    ctx_len: int | None = None,
    inputs: np.ndarray | None = None,
    **from_pretrained_kwargs: Any,
) -> ValidationReport:
    """Greedy tokens of HF `generate`, the transformed PyTorch model, the exported graphs in ONNX Runtime and the
    compiled program, per clip; every stage must equal HF exactly.

    `model` is a `QEFFAutoModelForSpeechSeq2Seq` or a path. `audio`: clips (WAV paths or 1-D samples at
    `sampling_rate`) that each fit the model's window; default `default_ctc_audio()` (two synthetic clips). Or
    `inputs`: the encoder input itself, `[clips, ...]` at the model's encoder length (a model saved without its
    feature extractor). HF runs on each clip's encoder input alone; the other stages run the clips together through
    `generate`. When the model is not
    compiled yet, it is compiled with batch size 1 and `ctx_len` (default: the decoder prompt plus `generation_len`).
    A stage that raises is recorded as failed, with the first line of the error, and the later stages are not run.
    """
    from QEfficient.transformers.models.speech_seq2seq import QEFFAutoModelForSpeechSeq2Seq, hf_generate_ids

    if not isinstance(model, QEFFAutoModelForSpeechSeq2Seq):
        model = QEFFAutoModelForSpeechSeq2Seq.from_pretrained(model, **from_pretrained_kwargs)
    if not isinstance(model, QEFFAutoModelForSpeechSeq2Seq):  # a decoder-only audio LLM
        return validate_audio_text_to_text(model, audio, generation_len=generation_len)
    report = ValidationReport(model=model.model_name, atol=0.0)
    try:
        if inputs is not None:
            features = np.asarray(inputs, dtype=np.float32)
        else:
            clips = list(audio) if audio is not None else default_ctc_audio(model.sampling_rate)
            features = model.prepare(clips, sampling_rate if audio is not None else None)
        expected = [hf_generate_ids(model.hf_model, torch.from_numpy(row[None]), generation_len)[0] for row in features]
    except Exception as exc:  # noqa: BLE001 - reported as the failing stage
        report.stages.append(StageResult("HF generate", 0, (), False, error=first_line(exc, limit=300)))
        return report
    total = sum(len(e) for e in expected)
    shape = (len(features), generation_len)
    report.stages.append(StageResult("HF generate", 0, shape, True, f"{total}/{total}"))
    def run() -> list[list[int]]:
        return model.generate(inputs=features, generation_len=generation_len).generated_ids

    return _encoder_decoder_stages(report, model, [model.encoder_spec.name], expected, run, generation_len, ctx_len)


def validate_image_seq2seq(
    model: Any,
    image_inputs: Sequence[Mapping[str, Any]],
    generation_len: int = 16,
    ctx_len: int | None = None,
) -> ValidationReport:
    """`validate_speech_seq2seq` for an image-to-text encoder-decoder (`QEFFImageEncoderDecoder`): greedy tokens of HF
    `generate` (each image's encoder inputs alone), the transformed PyTorch module, the exported graphs in ONNX
    Runtime and the compiled program (the images together); every stage must equal HF exactly."""
    from QEfficient.transformers.models.image_seq2seq import hf_image_generate_ids

    report = ValidationReport(model=model.model_name, atol=0.0)
    shape = (len(image_inputs), generation_len)
    try:
        expected = [hf_image_generate_ids(model.hf_model, row, generation_len) for row in image_inputs]
    except Exception as exc:  # noqa: BLE001 - reported as the failing stage
        report.stages.append(StageResult("HF generate", 0, (), False, error=first_line(exc, limit=300)))
        return report
    total = sum(len(e) for e in expected)
    report.stages.append(StageResult("HF generate", 0, shape, True, f"{total}/{total}"))
    def run() -> list[list[int]]:
        return model.generate_ids(image_inputs, generation_len)

    return _encoder_decoder_stages(report, model, list(model.encoder_examples), expected, run, generation_len, ctx_len)


def _encoder_decoder_stages(
    report: ValidationReport,
    model: Any,
    encoder_inputs: list[str],
    expected: list[list[int]],
    run: Callable[[], list[list[int]]],
    generation_len: int,
    ctx_len: int | None,
) -> ValidationReport:
    """Compile an encoder-decoder (when it is not yet) and compare `run()`'s tokens with HF's `expected` on each
    program of `_encoder_decoder_programs`; a stage that raises or differs ends the report."""
    total = sum(len(e) for e in expected)
    shape = (len(expected), generation_len)
    try:
        if model._program is None:
            model.compile(ctx_len=ctx_len or model.ctx_len_for(generation_len))
        manifest = dict(model.program.manifest)
    except Exception as exc:  # noqa: BLE001
        report.stages.append(StageResult("export and compile", total, shape, False, first_line(exc, limit=300)))
        return report
    argument_order = {"encoder": encoder_inputs, "decoder": model.model.decoder_input_names()}
    for stage, program in _encoder_decoder_programs(model, manifest, argument_order):
        try:
            with model.running(program()):
                got = run()
        except Exception as exc:  # noqa: BLE001
            report.stages.append(StageResult(stage, total, shape, False, first_line(exc, limit=300)))
            return report
        report.stages.append(_token_stage(stage, got, expected, shape))
    return report


def _encoder_decoder_programs(
    model: Any, manifest: dict[str, Any], argument_order: dict[str, list[str]]
) -> list[tuple[str, Callable[[], Any]]]:
    """The stages an encoder-decoder's generation is compared at, each as a function that makes the program the
    model runs on: the transformed PyTorch module, the exported graphs in ONNX Runtime (unoptimised offline), and
    the compiled program."""
    from QEfficient.backends.base import MultiGraphProgram
    from QEfficient.backends.onnxruntime import OnnxRuntimeProgram, graph_input_dims, in_place_states
    from QEfficient.backends.pytorch import PyTorchProgram

    def pytorch() -> MultiGraphProgram:
        graphs = {
            name: PyTorchProgram(model.model, meta, argument_order[name]) for name, meta in manifest["graphs"].items()
        }
        return MultiGraphProgram(manifest, graphs)

    def onnx_runtime() -> MultiGraphProgram:
        graphs = {}
        for name, meta in manifest["graphs"].items():
            path = model.onnx_paths[name]
            raw = onnx.load(str(path), load_external_data=False)
            raw_manifest = {
                **meta,
                "file": path.name,
                "inputs": graph_input_dims(raw),
                "options": {**meta["options"], "session_optimization_level": "all"},
                "in_place_state": in_place_states(raw),
            }
            graphs[name] = OnnxRuntimeProgram(path.parent, raw_manifest)
        return MultiGraphProgram(manifest, graphs)

    compiled = ("compiled program", lambda: model.program)
    return [("transformed PyTorch", pytorch), ("ONNX Runtime", onnx_runtime), compiled]


def is_ctc(model: Any) -> bool:
    """Whether a model path (or hub id in the HF cache) holds a CTC speech model (wav2vec2, HuBERT, ...): a model type
    of transformers' CTC mapping."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(str(model))
    except (OSError, ValueError):
        return False
    return getattr(config, "model_type", None) in MODEL_FOR_CTC_MAPPING_NAMES


def is_image_text_to_text(model: Any) -> bool:
    """Whether a model path (or hub id in the HF cache) holds a vision-language model: a model type of transformers'
    image-text-to-text mapping with a vision config."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(str(model))
    except (OSError, ValueError):
        return False
    has_vision = getattr(config, "vision_config", None) is not None
    return has_vision and getattr(config, "model_type", None) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def validate_image_text_to_text(
    model: Any,
    images: Sequence[Any] | None = None,
    prompt: str = "Describe this image.",
    generation_len: int = 16,
    prefill_seq_len: int = 32,
) -> ValidationReport:
    """HF `generate` (greedy, on the processor's inputs) against the compiled vision and language programs: the
    vision features (max |diff| from the PyTorch vision encoder) and the new tokens (exact). `images` default to one
    random picture of the vision config's size."""
    from QEfficient.transformers.models.image_inputs import as_rgb_image, default_img_size
    from QEfficient.transformers.models.image_text_to_text import QEFFAutoModelForImageTextToText

    if not isinstance(model, QEFFAutoModelForImageTextToText):
        model = QEFFAutoModelForImageTextToText.from_pretrained(model)
    if not images:
        side = default_img_size(model.hf_model.config)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8)]
    images = [as_rgb_image(image, i) for i, image in enumerate(images)]
    return _validate_placeholder_model(model, images, prompt, generation_len, prefill_seq_len, "vision program")


def validate_audio_text_to_text(
    model: Any,
    audio: Sequence[Any] | None = None,
    prompt: str = "Transcribe the audio.",
    generation_len: int = 16,
    prefill_seq_len: int = 32,
) -> ValidationReport:
    """`validate_image_text_to_text` for a decoder-only audio LLM (`QEFFAutoModelForAudioTextToText`): HF `generate`
    against the compiled audio encoder and language programs. `audio` (WAV paths or 1-D samples) defaults to one
    second of noise."""
    from QEfficient.transformers.models.audio_text_to_text import QEFFAutoModelForAudioTextToText

    if not isinstance(model, QEFFAutoModelForAudioTextToText):
        model = QEFFAutoModelForAudioTextToText.from_pretrained(model)
    if not audio:
        audio = [(0.1 * np.random.default_rng(0).standard_normal(model.sampling_rate)).astype(np.float32)]
    return _validate_placeholder_model(model, list(audio), prompt, generation_len, prefill_seq_len, "audio program")


def _validate_placeholder_model(
    qeff: Any, media: list[Any], prompt: str, generation_len: int, prefill_seq_len: int, encoder_stage: str
) -> ValidationReport:
    """HF `generate` on the processor's inputs for `prompt` with `media`, then the encoder program (features against
    the PyTorch encoder's) and the language program's greedy tokens (exactly HF's)."""
    from QEfficient.transformers.implementations import absent_image_outputs

    report = ValidationReport(qeff.model_name, 0.0)
    chat = getattr(qeff.processor, "chat_template", None) is not None
    ids, encoder_inputs = qeff.prepare(media, prompt, chat=chat)
    hf_inputs = qeff.hf_inputs(media, prompt, chat=chat)
    with torch.no_grad(), absent_image_outputs():
        out = qeff.hf_model.generate(
            **hf_inputs, max_new_tokens=generation_len, min_new_tokens=generation_len, do_sample=False
        )
    expected = out[0, hf_inputs["input_ids"].shape[1] :].tolist()
    report.stages.append(StageResult("HF generate", 0.0, (1, len(ids)), True, f"{len(expected)} tokens"))
    ctx_len = len(ids) + generation_len + prefill_seq_len
    qeff.compile(prefill_seq_len=prefill_seq_len, ctx_len=ctx_len, **{qeff.compile_inputs_name: encoder_inputs})
    reference = qeff.image_features(encoder_inputs, runtime="pytorch")  # features, or cross keys and values
    outputs = qeff.image_features(encoder_inputs)
    diff = max(float(np.max(np.abs(outputs[name] - value))) for name, value in reference.items())
    tolerance = 1e-3 * max(1.0, *(float(np.max(np.abs(value))) for value in reference.values()))
    got_features = next(iter(outputs.values()))
    report.stages.append(StageResult(encoder_stage, diff, got_features.shape, diff <= tolerance))
    try:
        got = qeff.generate_ids([ids], [encoder_inputs], generation_len)[0]
    except Exception as exc:  # noqa: BLE001
        report.stages.append(StageResult("language program", float(len(expected)), (1,), False, error=first_line(exc)))
        return report
    report.stages.append(_token_stage("language program", [got], [expected], (1, len(expected))))
    return report
    report.stages.append(_token_stage("language program", [got], [expected], (1, len(expected))))
    return report
