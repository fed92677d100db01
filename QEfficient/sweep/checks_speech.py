"""Sweep check for speech-to-text encoder-decoders (`QEFFAutoModelForSpeechSeq2Seq`): exact greedy tokens against HF.

The check builds the tiny model with HF (`AutoModelForSpeechSeq2Seq.from_config`), makes two fixed encoder inputs of
the kind it takes (raw samples, or feature frames of the size its config names; `encoder_input`) and runs HF
`generate` on each alone; then it saves the model, loads it through `QEFFAutoModelForSpeechSeq2Seq.from_pretrained`,
validates every stage (`validate_speech_seq2seq`: transformed PyTorch, the exported graphs in ONNX Runtime and the
compiled program, both inputs in one `generate`) and compares the compiled tokens with the HF model as built.

Architectures outside the mechanism come back as `unsupported` with the reason: decoder-only audio LLMs (the audio's
embeddings spliced into a causal LM's prompt, not an encoder-decoder with cross-attention), models whose decoder
takes something other than token ids (audio codebooks), and models whose caches do not go through transformers'
`EncoderDecoderCache`.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from transformers import AutoModelForSpeechSeq2Seq
from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

from QEfficient.sweep.runner import (
    FAIL,
    HF_CANNOT_BUILD,
    HF_CANNOT_RUN,
    PASS,
    UNSUPPORTED,
    StageFailure,
    SweepRow,
    load_stage,
    run_stage,
)
from QEfficient.utils.errors import first_line

GENERATION_LEN = 12
FRAMES = 64  # feature frames of an encoder that takes any length (Whisper's fixed length is set by the override)
SAMPLES = 4000  # raw-audio samples (0.25 s at 16 kHz)
# Whisper's encoder takes exactly 2 x max_source_positions frames: 64 instead of 3000 keeps the tiny check fast.
OVERRIDES: dict[str, dict] = {"whisper": {"max_source_positions": 32}}
TINY_DECODER_START = 1


def sweep_inputs(shape: tuple[int, ...], count: int = 2) -> np.ndarray:
    """`count` fixed encoder inputs of one row's `shape` (unit-variance noise, as normalised features are)."""
    generator = np.random.default_rng(4321)
    return generator.standard_normal((count, *shape)).astype(np.float32)


def check_speech_seq2seq(model_type: str) -> SweepRow:
    """`AutoModelForSpeechSeq2Seq` tiny: HF `generate`'s greedy tokens == `QEFFAutoModelForSpeechSeq2Seq` at every
    stage, exactly."""
    from QEfficient.sweep.checks import build_tiny
    from QEfficient.transformers.encoder_decoder_cache import UnsupportedSpeechModelError
    from QEfficient.transformers.models.speech_seq2seq import (
        QEFFAutoModelForSpeechSeq2Seq,
        encoder_input,
        hf_generate_ids,
    )
    from QEfficient.validation import validate_speech_seq2seq

    row = SweepRow("speech-seq2seq", model_type, MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES.get(model_type, "?"))
    try:
        config, hf_model = build_tiny(AutoModelForSpeechSeq2Seq, model_type, **OVERRIDES.get(model_type, {}))
        row.architecture = type(hf_model).__name__
        if not getattr(config, "is_encoder_decoder", False):
            raise StageFailure(
                UNSUPPORTED,
                "transform",
                "decoder-only audio LLM (audio embeddings spliced into a causal LM's prompt), not an encoder-decoder "
                "with cross-attention",
            )
        generation = hf_model.generation_config
        if generation.decoder_start_token_id is None and generation.bos_token_id is None:
            # a composite config (SpeechEncoderDecoderConfig) has no start token field: a checkpoint's generation
            # config names it; the tiny model gets the tiny configs' own (TEXT_TOKENS["decoder_start_token_id"])
            generation.decoder_start_token_id = TINY_DECODER_START
        try:
            spec = encoder_input(hf_model)
            length = spec.length if spec.fixed_length else SAMPLES if spec.name == "input_values" else FRAMES
            spec = encoder_input(hf_model, length=length)
        except UnsupportedSpeechModelError as exc:
            raise StageFailure(UNSUPPORTED, "encoder input", first_line(exc)) from exc
        inputs = sweep_inputs(spec.shape)
        expected = [
            run_stage(
                "HF generate", HF_CANNOT_RUN, hf_generate_ids, hf_model, torch.from_numpy(x[None]), GENERATION_LEN
            )[0]
            for x in inputs
        ]
        with tempfile.TemporaryDirectory(prefix=f"qeff-sweep-{model_type}-") as folder:
            run_stage("save", HF_CANNOT_BUILD, hf_model.save_pretrained, folder)
            del hf_model
            load = QEFFAutoModelForSpeechSeq2Seq.from_pretrained
            qeff = load_stage(load, folder, encoder_ctx_len=spec.length, unsupported=(UnsupportedSpeechModelError,))
            report = validate_speech_seq2seq(qeff, inputs=inputs, generation_len=GENERATION_LEN)
            failed = next((s for s in report.stages if not s.passed), None)
            if failed is not None:
                status = HF_CANNOT_RUN if failed.stage == "HF generate" else FAIL
                raise StageFailure(status, failed.stage, failed.error or f"tokens equal to HF: {failed.detail}")
            got = run_stage(
                "compiled vs HF as built", FAIL, qeff.generate, inputs=inputs, generation_len=GENERATION_LEN
            )
    except StageFailure as failure:
        row.status, row.stage, row.reason = failure.status, failure.stage, failure.reason
        return row
    total = sum(len(e) for e in expected)
    if got.generated_ids != expected:
        row.status, row.stage = FAIL, "compiled vs HF as built"
        row.reason = f"tokens differ from the HF model as built: {got.generated_ids} vs {expected}"
    else:
        row.status, row.detail = PASS, f"{total}/{total} tokens"
    return row
