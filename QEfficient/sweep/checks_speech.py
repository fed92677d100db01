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

import inspect
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
from QEfficient.sweep.tiny_configs import VOCAB
from QEfficient.utils.errors import first_line

GENERATION_LEN = 12
FRAMES = 64  # feature frames of an encoder that takes any length (Whisper's fixed length is set by the override)
SAMPLES = 4000  # raw-audio samples (0.25 s at 16 kHz)
# Whisper's encoder takes exactly 2 x max_source_positions frames: 64 instead of 3000 keeps the tiny check fast.
# Audio LLMs: Voxtral's placeholder token (left to the checkpoint) and Whisper-like encoder; Granite Speech's
# Q-Former reads the tiny encoder's width, and its LoRA adapter (for which HF needs peft) is off.
# Its projector's window holds a whole number of downsampled queries (15 / 5, the checkpoints' values); Qwen3-ASR's
# encoder projects to the tiny text width.
_GRANITE = {"projector_config": {"encoder_hidden_size": 128}, "has_lora_adapter": False, "window_size": 15}
# VibeVoice-ASR's audio tokenizers at their default widths hold 340 M parameters each: a small tokenizer (8 filters,
# 160 samples per audio token) keeps the check fast.
_VIBEVOICE = {"num_filters": 8, "downsampling_ratios": [4, 5, 8], "depths": [1, 1, 1, 1]}
OVERRIDES: dict[str, dict] = {
    "whisper": {"max_source_positions": 32},
    "voxtral": {"audio_token_id": VOCAB - 11, "audio_config": {"max_source_positions": 32}},
    "qwen3_asr": {"audio_config": {"output_dim": 64}},
    "vibevoice_asr": {"acoustic_tokenizer_encoder_config": _VIBEVOICE, "semantic_tokenizer_encoder_config": _VIBEVOICE},
    "granite_speech": _GRANITE,
    "granite_speech_plus": _GRANITE,
}
AUDIO_FRAMES = (64, 100)  # feature frames tried for an audio LLM's encoder (Qwen3-ASR's take multiples of 100)
PROMPT_TEXT = 9  # random text tokens around an audio LLM's audio tokens
TINY_DECODER_START = 1
AUDIO_PREFILL_SEQ_LEN = 8  # an audio LLM's prompt is prefilled in chunks across its audio tokens


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
            return check_audio_text(row, hf_model)
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



def tiny_audio_inputs(model: torch.nn.Module) -> tuple[dict[str, np.ndarray], int]:
    """(encoder inputs, audio tokens they give) for a tiny audio LLM: the first layout of its feature function's
    inputs that HF's own `get_audio_features` accepts (raw samples `[1, S]` or `[1, 1, S]`; mel frames `[1, mel, T]`
    or `[1, T, mel]`), with all-ones masks `[1, steps]` where it takes one."""
    from QEfficient.transformers.models.image_inputs import AUDIO, features_parameters
    from QEfficient.transformers.models.vision_encoder import VisionEncoderForExport

    names = features_parameters(model, AUDIO) or []
    config = model.config
    audio = getattr(config, "audio_config", None) or getattr(config, "encoder_config", None) or config
    generator = np.random.default_rng(4321)
    layouts: list[tuple[dict[str, np.ndarray], int]] = []  # (inputs, time steps a mask covers)
    if "input_values" in names:
        for shape in ((1, SAMPLES), (1, 1, SAMPLES)):
            samples = (0.1 * generator.standard_normal(shape)).astype(np.float32)
            layouts.append(({"input_values": samples}, SAMPLES))
    else:
        sizes = (getattr(audio, k, None) for k in ("num_mel_bins", "input_dim", "feature_size"))
        mel = next((v for v in sizes if isinstance(v, int)), None)
        if mel is None:
            raise StageFailure(UNSUPPORTED, "encoder input", f"{type(model).__name__}'s audio config names no mel bins")
        for frames in AUDIO_FRAMES:
            for shape in ((1, mel, frames), (1, frames, mel)):
                layouts.append(({"input_features": generator.standard_normal(shape).astype(np.float32)}, frames))
    errors = []
    for inputs, steps in layouts:
        inputs.update({name: np.ones((1, steps), dtype=np.int64) for name in names if name.endswith("mask")})
        encoder = VisionEncoderForExport(model, AUDIO)
        tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
        graph = encoder.take_inputs(tensors)
        try:
            with torch.no_grad():
                features = encoder.outputs(*graph.values())["image_features"]
        except Exception as exc:  # noqa: BLE001 - try the next layout; all failing is HF's failure
            errors.append(first_line(exc))
            continue
        return inputs, int(features.shape[0])
    raise StageFailure(HF_CANNOT_RUN, "HF audio features", errors[-1] if errors else "no input layout")


def _hf_generate_audio(model: torch.nn.Module, ids: list[int], audio_inputs: dict[str, np.ndarray]) -> list[int]:
    """HF `generate`'s greedy tokens for a prompt with audio tokens and the audio's encoder inputs (a stochastic
    encoder's `sample=False`, as the encoder program runs it)."""
    inputs = {name: torch.from_numpy(value) for name, value in audio_inputs.items()}
    if "sample" in inspect.signature(model.forward).parameters:
        inputs["sample"] = False
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            **inputs,
            max_new_tokens=GENERATION_LEN,
            min_new_tokens=GENERATION_LEN,
            do_sample=False,
        )
    return out[0, len(ids) :].tolist()


def check_audio_text(row: SweepRow, hf_model: torch.nn.Module) -> SweepRow:
    """A decoder-only audio LLM: HF `generate` on text + audio tokens + text == `QEFFAutoModelForSpeechSeq2Seq`'s
    audio-LLM programs (`QEFFAutoModelForAudioTextToText`: audio encoder + language model), exact greedy tokens."""
    from QEfficient.transformers.models.audio_text_to_text import (
        QEFFAutoModelForAudioTextToText,
        check_audio_text_supported,
    )
    from QEfficient.transformers.models.causal_lm_wrapper import UnsupportedCausalLMError
    from QEfficient.transformers.models.image_inputs import AUDIO, placeholder_token_id
    from QEfficient.transformers.models.registry import UnsupportedModelError
    from QEfficient.transformers.models.speech_seq2seq import QEFFAutoModelForSpeechSeq2Seq

    try:
        try:
            check_audio_text_supported(hf_model)
        except UnsupportedModelError as exc:
            raise StageFailure(UNSUPPORTED, "transform", first_line(exc)) from exc
        token = placeholder_token_id(hf_model.config, AUDIO)
        audio_inputs, count = tiny_audio_inputs(hf_model)
        generator = torch.Generator().manual_seed(1234)
        text = torch.randint(8, VOCAB - 40, (PROMPT_TEXT,), generator=generator).tolist()
        ids = text[:3] + [token] * count + text[3:]
        expected = run_stage("HF generate", HF_CANNOT_RUN, _hf_generate_audio, hf_model, ids, audio_inputs)
        with tempfile.TemporaryDirectory(prefix=f"qeff-sweep-{row.model_type}-") as folder:
            run_stage("save", HF_CANNOT_BUILD, hf_model.save_pretrained, folder)
            unsupported = (UnsupportedModelError, UnsupportedCausalLMError)
            qeff = load_stage(QEFFAutoModelForSpeechSeq2Seq.from_pretrained, folder, unsupported=unsupported)
            if not isinstance(qeff, QEFFAutoModelForAudioTextToText):
                raise StageFailure(FAIL, "load", f"loaded as {type(qeff).__name__}, not as an audio LLM")
            ctx_len = len(ids) + GENERATION_LEN + AUDIO_PREFILL_SEQ_LEN
            compile_options = {"audio_inputs": audio_inputs, "prefill_seq_len": AUDIO_PREFILL_SEQ_LEN}
            run_stage("compile", FAIL, qeff.compile, ctx_len=ctx_len, **compile_options)
            got = run_stage("generate", FAIL, qeff.generate_ids, [ids], [audio_inputs], GENERATION_LEN)[0]
    except StageFailure as failure:
        row.status, row.stage, row.reason = failure.status, failure.stage, failure.reason
        return row
    if got != expected:
        first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), 0)
        row.status, row.stage = FAIL, "tokens"
        row.reason = f"first difference at new token {first}: {got[first : first + 3]} vs HF "
        row.reason += str(expected[first : first + 3])
    else:
        row.status, row.detail = PASS, f"{len(got)}/{len(expected)} tokens, audio LLM ({count} audio tokens)"
    return row
