"""Speech to text: `QEFFAutoModelForSpeechSeq2Seq`, encoder-decoder models (Whisper and its kin) as two graphs.

```python
model = QEFFAutoModelForSpeechSeq2Seq.from_pretrained(whisper_folder)
model.compile(ctx_len=448)                                  # encoder (30 s of log-mel frames) + decoder
out = model.generate(audio="clip.wav")                      # a WAV path, a 1-D array, or a list of them
out.generated_texts, out.generated_ids, out.perf_metrics
```

The encoder graph computes every decoder layer's cross-attention keys and values once per clip; the decoder graph
runs the prompt and then one token per step with its self-attention cache and those keys and values as retained
state (`QEfficient/transformers/encoder_decoder_cache.py`, docs/speech_to_text.md). Greedy decoding applies the
model's own decoder prompt and logits processors, exactly as transformers' `generate` does, so the tokens are HF's.

Audio longer than the compiled window (30 s for Whisper) is an error unless `chunk_long_audio=True`: the clip is
then cut into consecutive windows, each transcribed on its own, and the texts are joined.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import transformers
from torch import nn
from transformers import AutoModelForSpeechSeq2Seq, LogitsProcessorList

from QEfficient.backends.base import Program, state_arrays
from QEfficient.base.modeling_qeff import GraphExport
from QEfficient.base.pytorch_transforms import PytorchTransform
from QEfficient.transformers.audio import DEFAULT_SAMPLING_RATE, AudioInputError, load_audio, windows
from QEfficient.transformers.encoder_decoder_cache import (
    ENCODER_MASK,
    Seq2SeqForExport,
    UnsupportedSpeechModelError,
    decoder_start_token,
    encoder_input_name,
)
from QEfficient.transformers.models.modeling_auto import QEFFTransformersBase

logger = logging.getLogger(__name__)

ENCODER, DECODER = "encoder", "decoder"
WINDOW_SECONDS = 30.0  # the audio window of a model whose encoder takes any length (Whisper's own window is fixed)
DEFAULT_HOP_LENGTH = 160  # audio samples per feature frame (10 ms at 16 kHz) when the feature extractor does not say
DEFAULT_DECODER_CTX_LEN = 448  # Whisper's decoder context (max_target_positions)
TRACE_BATCH = 2
TRACE_SEQ = 8


@dataclass(frozen=True)
class EncoderInput:
    """The encoder graph's input for one clip: its name (`input_features` or `input_values`), its shape at the
    compiled length, which axis is time, and whether the model accepts that length only (Whisper: 30 s of frames)."""

    name: str
    shape: tuple[int, ...]
    time_axis: int
    fixed_length: bool
    samples_per_step: int  # audio samples per step of the time axis (the feature hop; 1 for raw samples)

    @property
    def length(self) -> int:
        return self.shape[self.time_axis]

    def seconds(self, sampling_rate: int) -> float:
        """The audio window the compiled length covers."""
        return self.length * self.samples_per_step / sampling_rate

    def with_length(self, length: int) -> EncoderInput:
        shape = list(self.shape)
        shape[self.time_axis] = length
        return EncoderInput(self.name, tuple(shape), self.time_axis, self.fixed_length, self.samples_per_step)


def encoder_input(model: nn.Module, feature_extractor: Any = None, length: int | None = None) -> EncoderInput:
    """The encoder input a HF speech model takes, from its feature extractor and config.

    - `input_values` (raw samples: Moonshine, SpeechT5, ...): `[samples]`, 30 s by default;
    - log-mel frames with a fixed length (Whisper: its encoder takes exactly `max_source_positions` x its
      convolutions' strides frames): `[mel, frames]`;
    - other `input_features`: `[frames, features]` (Speech2Text, SeamlessM4T, Parakeet-based models), 30 s by
      default; the feature count from the feature extractor, else the config.
    """
    config = model.config
    name = encoder_input_name(model)
    hop = int(getattr(feature_extractor, "hop_length", 0) or DEFAULT_HOP_LENGTH)
    rate = int(getattr(feature_extractor, "sampling_rate", 0) or DEFAULT_SAMPLING_RATE)
    if name == "input_values":
        samples = length or int(WINDOW_SECONDS * rate)
        return EncoderInput(name, (samples,), 0, False, 1)
    encoder = model.get_encoder()
    strides = [getattr(getattr(encoder, conv, None), "stride", None) for conv in ("conv1", "conv2")]
    mel, positions = getattr(config, "num_mel_bins", None), getattr(config, "max_source_positions", None)
    if all(strides) and isinstance(mel, int) and isinstance(positions, int):  # Whisper's convolutional front end
        frames = positions * strides[0][0] * strides[1][0]
        if length is not None and length != frames:
            raise ValueError(
                f"{type(model).__name__}'s encoder takes exactly {frames} frames "
                f"({frames * hop / rate:.0f} s of audio); encoder_ctx_len={length} cannot be compiled."
            )
        return EncoderInput(name, (mel, frames), 1, True, hop)
    features = getattr(feature_extractor, "feature_size", None) or _config_feature_size(config)
    if not features:
        raise UnsupportedSpeechModelError(
            f"Cannot tell the size of {type(model).__name__}'s input features: save the model with its feature "
            "extractor (preprocessor_config.json)."
        )
    frames = length or int(WINDOW_SECONDS * rate) // hop
    return EncoderInput(name, (frames, int(features)), 0, False, hop)


def _config_feature_size(config: Any) -> int | None:
    """Input features per frame as a config states them (for a model saved without its feature extractor)."""
    if isinstance(getattr(config, "input_feat_per_channel", None), int):  # Speech2Text
        return config.input_feat_per_channel * int(getattr(config, "input_channels", 1) or 1)
    for source in (config, getattr(config, "encoder_config", None)):
        for attribute in ("feature_projection_input_dim", "num_mel_bins", "feature_size"):
            value = getattr(source, attribute, None)
            if isinstance(value, int):
                return value
    return None


class Seq2SeqTransform(PytorchTransform):
    """Put a HF encoder-decoder model behind the two-graph contract (`Seq2SeqForExport`): `example_input` is the
    audio input (one tensor) or the encoder inputs by keyword (images: `pixel_values`, ...)."""

    def __init__(self, example_input: torch.Tensor | dict[str, torch.Tensor]) -> None:
        self.example_input = example_input

    def apply(self, model: nn.Module) -> tuple[nn.Module, bool]:  # type: ignore[override]
        return Seq2SeqForExport(model, self.example_input), True


@dataclass
class SpeechPerfMetrics:
    """Timing of one `generate` call, measured on the host around the program's runs (feature extraction, the
    encoder, the decoder prompt and every decode step; decoding of the text included)."""

    audio_s: float  # seconds of audio transcribed
    windows: int  # encoder runs' rows: clips, or their windows with chunk_long_audio
    features_s: float  # audio -> encoder input (feature extraction)
    encoder_s: float
    ttft_s: float  # from the start of the call to the first transcribed token
    generated_tokens: int
    decode_tokens: int  # tokens produced by decode steps: all but each window's first
    decode_s: float
    total_s: float

    @property
    def real_time_factor(self) -> float:
        """Processing time per second of audio (lower is faster; 0.1 = ten times faster than real time)."""
        return self.total_s / self.audio_s if self.audio_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Transcribed tokens per second of the whole call."""
        return self.generated_tokens / self.total_s if self.total_s > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"audio {self.audio_s:.1f} s in {self.windows} window(s) | features {self.features_s * 1000:.0f} ms | "
            f"encoder {self.encoder_s * 1000:.0f} ms | TTFT {self.ttft_s * 1000:.0f} ms | decode "
            f"{self.decode_tokens} tokens at {self.decode_tokens_per_s:.1f} tokens/s | total {self.total_s:.2f} s | "
            f"real-time factor {self.real_time_factor:.3f}"
        )


@dataclass
class TranscriptionOutput:
    """What `generate` returns, per clip: the text, the token ids (each window's tokens, without the decoder prompt
    and the end-of-text token, concatenated), each window's ids, and why each window stopped."""

    generated_texts: list[str] | list[None]  # None without a tokenizer
    generated_ids: list[list[int]]
    window_ids: list[list[list[int]]]
    finish_reasons: list[list[str]]  # per clip, per window: "eos", "length" or "ctx_full"
    perf_metrics: SpeechPerfMetrics


@dataclass
class _Window:
    clip: int
    features: np.ndarray | dict[str, np.ndarray]  # one row of the encoder input(s), without the batch
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None


def _audio_llm_class(source: str | os.PathLike, kwargs: dict[str, Any]) -> type | None:
    """The HF class of a decoder-only audio LLM at `source` (its config's speech-seq2seq class), else None."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

    from QEfficient.transformers.models.audio_text_to_text import is_audio_llm

    if kwargs.get("gguf_file"):
        return None
    options = {k: kwargs[k] for k in ("revision", "trust_remote_code") if k in kwargs}
    try:
        config = AutoConfig.from_pretrained(source, **options)
    except (OSError, ValueError):
        return None  # from_pretrained below says what is wrong with the source
    name = MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES.get(config.model_type)
    model_class = getattr(transformers, name, None) if name else None
    if model_class is None or getattr(config, "is_encoder_decoder", False) or not is_audio_llm(model_class):
        return None
    return model_class


class QEFFEncoderDecoderBase(QEFFTransformersBase):
    """The encoder-decoder mechanism shared by `QEFFAutoModelForSpeechSeq2Seq` and `QEFFImageEncoderDecoder`
    (`QEfficient/transformers/models/image_seq2seq.py`): two graphs of one `Seq2SeqForExport`, an encoder that
    computes every decoder layer's cross-attention keys and values once per input, and a decoder that runs the
    decoder prompt (in chunks of the compiled prompt length) and then one token per step, with its self-attention
    cache and the cross keys and values as retained state. Greedy decoding applies HF's logits processors.

    A subclass says what its encoder takes (`_encoder_examples`: one row of every encoder input, by the HF model's
    keyword) and builds each round's decoder prompts; `_encode_round` and `_decode_round` do the rest.
    """

    _metadata_key: ClassVar[str] = "seq2seq"

    def _init_seq2seq(self) -> None:
        """Per-instance state of the mechanism (call after `QEFFTransformersBase.__init__`)."""
        self.compile_config: dict[str, Any] = {}
        self._exported_for: tuple[int, Any] | None = None  # (ctx_len, the encoder inputs' rows)
        self._decoder_state: Any = None
        self._encoder_mask: np.ndarray | None = None  # this round's cross-attention mask, where the model has one

    @property
    def hf_model(self) -> nn.Module:
        return self.model.model

    @property
    def layout(self):  # noqa: ANN201 - Seq2SeqLayout
        return self.model.layout

    def _encoder_examples(self) -> dict[str, np.ndarray]:
        """One row (no batch axis) of every encoder input, by the HF model's keyword, the floating-point one first:
        the shapes and dtypes the encoder graph is exported for."""
        raise NotImplementedError

    def _encoder_key(self) -> tuple:
        return tuple((name, tuple(a.shape), str(a.dtype)) for name, a in self._encoder_examples().items())

    # ---- export / compile ----------------------------------------------------------------------------

    def _max_target_positions(self) -> int | None:
        config = self.hf_model.config
        for name in ("max_target_positions", "max_position_embeddings"):
            for source in (config, getattr(config, "decoder", None), getattr(config, "text_config", None)):
                value = getattr(source, name, None)
                if isinstance(value, int) and value > 0:
                    return value
        return None

    def _default_ctx_len(self) -> int:
        """The model's decoder positions, at most `DEFAULT_DECODER_CTX_LEN` (448: Whisper's)."""
        return min(DEFAULT_DECODER_CTX_LEN, self._max_target_positions() or DEFAULT_DECODER_CTX_LEN)

    def ctx_len_for(self, generation_len: int) -> int:
        """The smallest decoder context that holds the longest decoder prompt and `generation_len` new tokens (at most
        the model's own)."""
        return min(self._default_ctx_len(), self._longest_prompt() + generation_len)

    def _longest_prompt(self) -> int:
        """The decoder prompt length the prompt graph is compiled for (longer prompts run in chunks of it)."""
        return 1

    def _export_seq2seq(self, export_dir: str | Path | None, ctx_len: int | None) -> Path:
        """Export the encoder and decoder graphs for one decoder `ctx_len` and the encoder inputs of
        `_encoder_examples` (cached); dynamic batch. Returns the encoder graph's path; `onnx_paths` has both."""
        ctx_len = ctx_len or (self._exported_for[0] if self._exported_for else self._default_ctx_len())
        examples = self._encoder_examples()
        encoder_len = self.model.encoder_output_length(examples)
        seq = min(TRACE_SEQ, ctx_len)
        positions = torch.arange(seq).repeat(TRACE_BATCH, 1)
        positions[1, max(1, seq // 2) :] = -1  # a padded row, so the padding path is traced
        decoder_inputs: dict[str, torch.Tensor] = {
            "input_ids": torch.zeros((TRACE_BATCH, seq), dtype=torch.int64),
            "position_ids": positions,
        }
        if self.model.encoder_mask:
            decoder_inputs[ENCODER_MASK] = torch.ones((TRACE_BATCH, encoder_len), dtype=torch.int64)
        for name, shape in self.layout.past_shapes(TRACE_BATCH, ctx_len).items():
            decoder_inputs[name] = torch.zeros(shape)
        for name, shape in self.layout.cross_shapes(TRACE_BATCH, encoder_len).items():
            decoder_inputs[name] = torch.zeros(shape)
        batch = {0: "batch_size"}
        tokens = {0: "batch_size", 1: "seq_len"}
        state_names = [*self.layout.past_names(), *self.layout.cross_names()]
        decoder_axes: dict[str, dict[int, str]] = {"input_ids": tokens, "position_ids": tokens, "logits": batch}
        if self.model.encoder_mask:
            decoder_axes[ENCODER_MASK] = batch
        for name in state_names:
            decoder_axes[name] = decoder_axes[f"{name}_RetainedState"] = batch
        encoder_outputs = self.model.encoder_output_names()
        encoder_axes = {**{name: batch for name in examples}, **{name: batch for name in encoder_outputs}}
        # the example batch: the example row repeated (token ids and masks must stay meaningful, e.g. image tokens)
        encoder_inputs = {
            name: torch.from_numpy(np.ascontiguousarray(np.repeat(a[None], TRACE_BATCH, axis=0)))
            for name, a in examples.items()
        }
        graphs = {
            ENCODER: GraphExport(encoder_inputs, encoder_outputs, encoder_axes),
            DECODER: GraphExport(decoder_inputs, self.model.decoder_output_names(), decoder_axes),
        }
        path = self._export_graphs(graphs, export_dir)
        self._exported_for = (ctx_len, self._encoder_key())
        return path

    def _compile_seq2seq(
        self,
        ctx_len: int | None,
        batch_size: int,
        prompt_len: int,
        backend: str,
        compile_dir: str | Path | None,
        backend_options: dict[str, Any],
        extra_config: dict[str, Any] | None = None,
    ) -> Path:
        """Compile the encoder (batch_size x the encoder inputs) and the decoder (batch_size x `prompt_len`, and
        batch_size x 1) for one decoder `ctx_len`; exports first if needed. Returns the program directory."""
        limit = self._max_target_positions()
        ctx_len = ctx_len or self._default_ctx_len()
        for name, value in (("ctx_len", ctx_len), ("batch_size", batch_size), ("prompt_len", prompt_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        if limit is not None and ctx_len > limit:
            raise ValueError(f"ctx_len {ctx_len} exceeds the model's decoder positions ({limit}).")
        if ctx_len <= prompt_len:
            raise ValueError(
                f"ctx_len {ctx_len} leaves no room to generate after the {prompt_len}-token decoder prompt."
            )
        if self._exported_for != (ctx_len, self._encoder_key()) or self.onnx_path is None:
            self._export_seq2seq(None, ctx_len)
        decoder_specs = [{"batch_size": batch_size, "seq_len": prompt_len}, {"batch_size": batch_size, "seq_len": 1}]
        decoder_specs = [dict(s) for s in {tuple(s.items()): s for s in decoder_specs}.values()]
        specializations = {ENCODER: [{"batch_size": batch_size}], DECODER: decoder_specs}
        self.compile_config = {
            "ctx_len": ctx_len,
            "batch_size": batch_size,
            "prompt_len": prompt_len,
            **(extra_config or {}),
        }
        metadata = {self._metadata_key: dict(self.compile_config)}
        program = self._compile(
            specializations, backend=backend, compile_dir=compile_dir, metadata=metadata, **backend_options
        )
        self.program.load_all()
        self._decoder_state = None
        return program

    @property
    def batch_size(self) -> int:
        self.program  # noqa: B018 - a clear error when not compiled
        return int(self.compile_config["batch_size"])

    @property
    def ctx_len(self) -> int:
        self.program  # noqa: B018
        return int(self.compile_config["ctx_len"])

    # ---- HF generate's rules -------------------------------------------------------------------------

    def _generic_logits_processors(
        self, prompt_len: int, config: Any = None, extra: list | None = None
    ) -> LogitsProcessorList:
        """HF's logits processors for greedy decoding after a `prompt_len`-token decoder prompt, from the generation
        config (a copy: `config`, else the model's)."""
        config = config if config is not None else copy.deepcopy(self.hf_model.generation_config)
        config.do_sample, config.num_beams = False, 1
        return self.hf_model._get_logits_processor(
            generation_config=config,
            input_ids_seq_length=prompt_len,
            encoder_input_ids=None,
            prefix_allowed_tokens_fn=None,
            logits_processor=LogitsProcessorList(extra or []),
            device="cpu",
            model_kwargs={},
        )

    def eos_token_ids(self) -> set[int]:
        """End-of-text ids: the generation config's, else the model config's."""
        for source in (self.hf_model.generation_config, self.hf_model.config):
            value = getattr(source, "eos_token_id", None)
            if value is not None:
                return set(value) if isinstance(value, (list, tuple)) else {int(value)}
        return set()

    def _hf_default_new_tokens(self, prompt_len: int) -> int:
        """New tokens HF `generate` allows by default after a `prompt_len`-token decoder prompt: the generation
        config's `max_new_tokens`, else its `max_length` (Whisper: `max_length` new tokens within its decoder
        positions; other models: `max_length` tokens in all, prompt included)."""
        config = self.hf_model.generation_config
        if config.max_new_tokens is not None:
            return int(config.max_new_tokens)
        if _is_whisper_style(self.hf_model):
            return min(int(config.max_length), (self._max_target_positions() or config.max_length) - prompt_len)
        return max(1, int(config.max_length) - prompt_len)

    def _vocab_size(self) -> int:
        config = self.hf_model.config
        return int(getattr(config, "vocab_size", None) or config.get_text_config(decoder=True).vocab_size)

    # ---- running ---------------------------------------------------------------------------------------

    def _state(self) -> Any:
        """The decoder's retained state (self-attention cache and cross keys/values), made once per compile: slots
        beyond a round's positions are never read, so a new round simply overwrites it."""
        if self._decoder_state is None:
            self._decoder_state = self._decoder().new_state({"batch_size": self.batch_size, "seq_len": 1})
        return self._decoder_state

    def _encoder(self) -> Program:
        return _graph(self.program, ENCODER)

    def _decoder(self) -> Program:
        return _graph(self.program, DECODER)

    @contextlib.contextmanager
    def running(self, program: Program) -> Iterator[None]:
        """Run `generate` on another program with the same graphs for the duration of the block (validation: the
        transformed PyTorch module, the exported graphs before compile)."""
        saved, self._program, self._decoder_state = self._program, program, None
        try:
            yield
        finally:
            self._program, self._decoder_state = saved, None

    def _encoder_batch(self, work: list[_Window]) -> dict[str, np.ndarray]:
        """The encoder inputs of one round `[batch_size, ...]`: each window's row, then copies of the last one in
        the rows no window uses (their tokens are dropped)."""
        width = self.batch_size
        name = self.model.encoder_input_name
        rows = [w.features if isinstance(w.features, dict) else {name: w.features} for w in work]
        rows += [rows[-1]] * (width - len(rows))
        return {name: np.stack([np.asarray(row[name]) for row in rows]) for name in rows[0]}

    def _encode_round(self, work: list[_Window], clock: _Clock) -> None:
        """Run the encoder on the round's windows and put its cross keys and values in the decoder's state (and keep
        the cross-attention mask, where the model has one, for the decoder's steps)."""
        batch = self._encoder_batch(work)
        t0 = time.perf_counter()
        out = self._encoder().run(batch)
        views = state_arrays(self._state())
        for name in self.layout.cross_names():
            views[name][...] = out[name]
        self._encoder_mask = np.asarray(out[ENCODER_MASK], dtype=np.int64) if ENCODER_MASK in out else None
        clock.encoder += time.perf_counter() - t0

    def _decoder_run(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One decoder step `[B, S]` on the state: the logits `[B, V]` of each row's last valid position."""
        step = {"input_ids": ids, "position_ids": positions}
        if self._encoder_mask is not None:
            step[ENCODER_MASK] = self._encoder_mask
        return self._decoder().run_with_state(step, self._state())["logits"][:, -1]

    def _decode_round(
        self,
        work: list[_Window],
        first: int,
        prompts: list[list[int]],
        picker: GreedyPicker,
        generation_len: int | None,
        clock: _Clock,
        emit: _InOrder,
    ) -> None:
        """The decoder prompt (one length for every row; in chunks of the compiled prompt length), then greedy
        decoding until each window stops: end-of-text, `generation_len` or a full context."""
        width, used = self.batch_size, len(work)
        prompts = list(prompts) + [prompts[-1]] * (width - len(prompts))
        prompt_len = len(prompts[0])
        if any(len(p) != prompt_len for p in prompts):
            raise ValueError("The decoder prompts of one round must have one length.")
        if prompt_len >= self.ctx_len:
            raise ValueError(
                f"The decoder prompt has {prompt_len} tokens; the program was compiled for a decoder context of "
                f"{self.ctx_len} (compile with a larger ctx_len)."
            )
        for i in range(used):
            emit.prompt(first + i, prompts[i])
        chunk = self.compile_config["prompt_len"]
        prompt = np.array(prompts, dtype=np.int64)
        for start in range(0, prompt_len, chunk):
            ids = np.zeros((width, chunk), dtype=np.int64)
            positions = np.full((width, chunk), -1, dtype=np.int64)
            piece = prompt[:, start : start + chunk]
            ids[:, : piece.shape[1]] = piece
            positions[:used, : piece.shape[1]] = np.arange(start, start + piece.shape[1])
            logits = self._decoder_run(ids, positions)
        eos = self.eos_token_ids()
        limit = min(self.ctx_len - prompt_len, generation_len or self._hf_default_new_tokens(prompt_len))
        sequence = prompt
        position = prompt_len
        while True:
            tokens = picker(sequence, logits)
            if clock.first_token is None:
                clock.first_token = time.perf_counter()
            active = [i for i in range(used) if work[i].finish_reason is None]
            for i in active:
                window, token = work[i], int(tokens[i])
                if token in eos:
                    window.finish_reason = "eos"
                    emit.done(first + i)
                    continue
                window.generated.append(token)
                emit.token(first + i, token)
                if len(window.generated) >= limit:
                    window.finish_reason = "ctx_full" if limit == self.ctx_len - prompt_len else "length"
                    emit.done(first + i)
            running = [i < used and work[i].finish_reason is None for i in range(width)]
            if not any(running):
                break
            sequence = np.concatenate([sequence, tokens.reshape(width, 1).astype(np.int64)], axis=1)
            t1 = time.perf_counter()
            logits = self._decoder_run(
                sequence[:, -1:], np.where(running, position, -1).astype(np.int64).reshape(width, 1)
            )
            clock.decode += time.perf_counter() - t1
            position += 1


class QEFFAutoModelForSpeechSeq2Seq(QEFFEncoderDecoderBase):
    """Speech-to-text encoder-decoder models (Whisper, ...) on fixed-shape backends (docs/speech_to_text.md).

    ```python
    model = QEFFAutoModelForSpeechSeq2Seq.from_pretrained(path)        # a HF Whisper folder, or a hub id
    model.compile(ctx_len=448, batch_size=1)                          # exports both graphs first if needed
    out = model.generate(audio="speech.wav")                          # or input_features=..., or a list of clips
    out.generated_texts, out.perf_metrics
    ```

    Any model of transformers' speech-seq2seq mapping that keeps its decoder's keys and values in transformers'
    `EncoderDecoderCache` works without model-specific code. Greedy tokens are HF `generate`'s: the same decoder
    prompt (start token, language and task for a multilingual Whisper, `<|notimestamps|>`), suppressed tokens and
    stopping rules. Timestamps are not predicted.
    """

    _hf_auto_class: ClassVar[Any] = AutoModelForSpeechSeq2Seq
    _metadata_key: ClassVar[str] = "speech"

    def __init__(
        self, model: nn.Module, processor: Any = None, encoder_ctx_len: int | None = None, **kwargs: Any
    ) -> None:
        self.processor = processor
        self.feature_extractor = getattr(processor, "feature_extractor", processor)
        tokenizer = kwargs.pop("tokenizer", None) or getattr(processor, "tokenizer", None)
        self.encoder_spec = encoder_input(model, self.feature_extractor, encoder_ctx_len)
        example = torch.zeros((1, *self.encoder_spec.shape))
        super().__init__(model, tokenizer=tokenizer, extra_pytorch_transforms=[Seq2SeqTransform(example)], **kwargs)
        self._init_seq2seq()

    @classmethod
    def _init_kwargs(cls) -> tuple[str, ...]:
        return ("processor", "tokenizer", "encoder_ctx_len")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load a HF speech-to-text model (a local folder, e.g. one converted by `ct2_whisper_folder`, or a hub id
        from the HF cache) with its processor (feature extractor and tokenizer) when the folder has one.

        A decoder-only audio LLM of transformers' speech-seq2seq mapping (Voxtral, Qwen3-ASR, Granite Speech, ...)
        comes back as a `QEFFAutoModelForAudioTextToText`, the mechanism for audio spliced into a causal LM's prompt.
        """
        audio_llm = _audio_llm_class(pretrained_model_name_or_path, kwargs)
        if audio_llm is not None:
            from QEfficient.transformers.models.audio_text_to_text import QEFFAutoModelForAudioTextToText

            logger.info(
                "%s is a decoder-only audio LLM: loading it as QEFFAutoModelForAudioTextToText.", audio_llm.__name__
            )
            for name in cls._init_kwargs():  # the encoder-decoder's own settings do not apply
                if name != "processor" and kwargs.pop(name, None) is not None:
                    logger.warning("%s= does not apply to an audio LLM; ignored.", name)
            return QEFFAutoModelForAudioTextToText.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if "processor" not in kwargs:
            kwargs["processor"] = _load_processor(str(pretrained_model_name_or_path))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @property
    def sampling_rate(self) -> int:
        return int(getattr(self.feature_extractor, "sampling_rate", 0) or DEFAULT_SAMPLING_RATE)

    @property
    def window_seconds(self) -> float:
        """Seconds of audio one encoder run covers (30 for Whisper)."""
        return self.encoder_spec.seconds(self.sampling_rate)

    # ---- export / compile ----------------------------------------------------------------------------

    def _encoder_examples(self) -> dict[str, np.ndarray]:
        spec = self.encoder_spec
        return {spec.name: np.zeros(spec.shape, dtype=np.float32)}

    def export(
        self, export_dir: str | Path | None = None, ctx_len: int | None = None, encoder_ctx_len: int | None = None
    ) -> Path:
        """Export the encoder and decoder graphs for one decoder `ctx_len` and encoder input length (cached); dynamic
        batch. Returns the encoder graph's path; `onnx_paths` has both."""
        self._set_encoder_length(encoder_ctx_len)
        return self._export_seq2seq(export_dir, ctx_len)

    def _set_encoder_length(self, encoder_ctx_len: int | None) -> None:
        if encoder_ctx_len is not None and encoder_ctx_len != self.encoder_spec.length:
            self.encoder_spec = encoder_input(self.hf_model, self.feature_extractor, encoder_ctx_len)

    def compile(
        self,
        ctx_len: int | None = None,
        encoder_ctx_len: int | None = None,
        batch_size: int = 1,
        backend: str = "onnxruntime",
        compile_dir: str | Path | None = None,
        **backend_options: Any,
    ) -> Path:
        """Compile the encoder (batch_size x the encoder input) and the decoder (batch_size x the decoder prompt, and
        batch_size x 1) for one decoder `ctx_len`.

        `ctx_len`: decoder positions, prompt included (default: the model's `max_target_positions`, at most 448).
        `encoder_ctx_len`: the encoder input's length in frames (or samples for models that take raw audio): default
        the model's own (3000 frames, 30 s, for Whisper, which takes no other) or 30 s of audio. Backend options
        (e.g. `weights="int8"`) go to the backend's compile. Exports first if needed. Returns the program directory.
        """
        self._set_encoder_length(encoder_ctx_len)
        extra = {"encoder_input": self.encoder_spec.name, "encoder_shape": list(self.encoder_spec.shape)}
        return self._compile_seq2seq(
            ctx_len, batch_size, self._longest_prompt(), backend, compile_dir, backend_options, extra
        )

    def _longest_prompt(self) -> int:
        """The longest decoder prompt `generate` uses: the start token, and for a multilingual Whisper the language,
        the task and `<|notimestamps|>`."""
        config = self.hf_model.generation_config
        if not _is_whisper_style(self.hf_model):
            return 1
        multilingual = getattr(config, "is_multilingual", None) or hasattr(config, "lang_to_id")
        return 4 if multilingual else len(self._decoder_prompts(1, None, None)[0])

    # ---- decoder prompt and logits processors (HF generate's own) -------------------------------------

    def _decoder_prompts(
        self, batch: int, language: str | list[str] | None, task: str | None, detect: Callable | None = None
    ) -> list[list[int]]:
        """Each row's decoder prompt as HF `generate` builds it (for Whisper: its `_retrieve_init_tokens`, with the
        language detected on the compiled program when needed)."""
        hf = self.hf_model
        if not _is_whisper_style(hf):
            if language is not None or task is not None:
                raise ValueError(f"{self.model_name} takes no language or task.")
            start = decoder_start_token(hf)
            return [[start] for _ in range(batch)]
        config = self._whisper_generation_config(language, task)
        proxy = _InitTokenHost(detect)
        frames = self.encoder_spec.length
        init = type(hf)._retrieve_init_tokens(proxy, None, batch, config, hf.config, frames, {})
        return init.tolist()

    def _whisper_generation_config(self, language: str | list[str] | None, task: str | None) -> Any:
        """A copy of the generation config set up as Whisper's `generate` sets it for short-form transcription
        without timestamps."""
        hf = self.hf_model
        config = copy.deepcopy(hf.generation_config)
        type(hf)._set_return_timestamps(hf, False, True, config)
        type(hf)._set_language_and_task(language, task, None, config)
        type(hf)._set_thresholds_and_condition(config, None, None, None, None)
        if config.no_speech_threshold is not None or config.logprob_threshold is not None:
            # HF applies these only with temperature fallback, which greedy decoding without it never triggers
            logger.info("Whisper's no-speech and log-prob thresholds are not applied (greedy decoding, no fallback).")
            config.no_speech_threshold = config.logprob_threshold = None
        return config

    def _logits_processors(self, prompt_len: int, language: Any, task: str | None) -> LogitsProcessorList:
        """HF's logits processors for greedy decoding after a `prompt_len`-token decoder prompt."""
        hf = self.hf_model
        if _is_whisper_style(hf):
            config = self._whisper_generation_config(language, task)
            extra = type(hf)._retrieve_logit_processors(hf, config, None, prompt_len, 1, "cpu")
            return self._generic_logits_processors(prompt_len, config, extra)
        return self._generic_logits_processors(prompt_len)

    # ---- audio -> encoder input ----------------------------------------------------------------------

    def _clips(self, audio: Any, sampling_rate: int | None) -> list[np.ndarray]:
        """Each clip as float32 mono at the model's rate (`load_audio`)."""
        if isinstance(audio, (str, os.PathLike)) or (isinstance(audio, np.ndarray) and audio.ndim != 2):
            audio = [audio]
        elif isinstance(audio, np.ndarray):  # 2-D: let load_audio explain (stereo or a batch?)
            audio = [audio]
        elif isinstance(audio, (list, tuple)) and audio and all(isinstance(x, (int, float)) for x in audio):
            audio = [np.asarray(audio, dtype=np.float32)]
        elif hasattr(audio, "detach"):
            audio = [audio]
        clips = list(audio)
        if not clips:
            raise AudioInputError("generate() got an empty list of clips.")
        return [load_audio(clip, sampling_rate, target_rate=self.sampling_rate) for clip in clips]

    def _features(self, clips: list[np.ndarray], feature_extractor: Any) -> np.ndarray:
        """The encoder input `[N, *shape]` of clips that each fit one window."""
        spec = self.encoder_spec
        if spec.name == "input_values" and feature_extractor is None:
            rows = np.zeros((len(clips), spec.length), dtype=np.float32)
            for i, clip in enumerate(clips):
                rows[i, : clip.size] = clip
            return rows
        if feature_extractor is None:
            raise ValueError(
                f"{self.model_name} needs its feature extractor to turn audio into {spec.name}: none was found with "
                "the model. Pass processor= (e.g. AutoProcessor.from_pretrained(path)), or input_features=."
            )
        out = feature_extractor(clips, sampling_rate=self.sampling_rate, return_tensors="np")
        values = np.asarray(out[spec.name], dtype=np.float32)
        return self._fit_length(values)

    def _fit_length(self, values: np.ndarray) -> np.ndarray:
        """Encoder inputs `[N, *shape]` padded with zeros (or cut) along time to the compiled length; a model with a
        fixed input length must get exactly that length."""
        spec = self.encoder_spec
        if values.ndim == len(spec.shape):
            values = values[None]
        if values.ndim != len(spec.shape) + 1:
            raise ValueError(
                f"{spec.name} must have shape [batch, {', '.join(map(str, spec.shape))}]; got {values.shape}."
            )
        axis = spec.time_axis + 1
        other = [s for i, s in enumerate(values.shape[1:]) if i != spec.time_axis]
        expected = [s for i, s in enumerate(spec.shape) if i != spec.time_axis]
        if other != expected:
            raise ValueError(
                f"{spec.name} has shape {values.shape}; the model takes [batch, {', '.join(map(str, spec.shape))}]."
            )
        length = values.shape[axis]
        if length == spec.length:
            return values.astype(np.float32, copy=False)
        if spec.fixed_length or length > spec.length:
            raise ValueError(
                f"{spec.name} has {length} steps along time; the compiled encoder takes {spec.length} "
                f"({self.window_seconds:.1f} s of audio). Pass audio= with chunk_long_audio=True for longer audio."
            )
        pad = [(0, 0)] * values.ndim
        pad[axis] = (0, spec.length - length)
        return np.pad(values.astype(np.float32, copy=False), pad)

    # ---- generation --------------------------------------------------------------------------------

    def generate(
        self,
        inputs: Any = None,
        audio: Any = None,
        sampling_rate: int | None = None,
        processor: Any = None,
        generation_len: int | None = None,
        language: str | list[str] | None = None,
        task: str | None = None,
        chunk_long_audio: bool = False,
        streamer: Any = None,
        input_features: Any = None,
    ) -> TranscriptionOutput:
        """Transcribe audio with greedy decoding on the compiled program (exactly HF `generate`'s tokens).

        `audio`: a WAV path, a 1-D array of samples (pass `sampling_rate=` unless it is the model's, 16 kHz), or a list
        of them; it goes through `QEfficient.transformers.audio.load_audio` (resampled, stereo WAV mixed down; empty,
        2-D or non-finite input is a clear error) and the model's feature extractor (`processor=` overrides it).
        `inputs` / `input_features`: the encoder input itself, `[batch, ...]`, one window per row.
        `generation_len`: new tokens at most per window (default: until end-of-text or the decoder context is full).
        `language`, `task`: for a multilingual Whisper (`"fr"`, `"transcribe"` / `"translate"`); the language is
        detected per window when not given, as HF does.
        `chunk_long_audio`: a clip longer than the compiled window (30 s for Whisper) is cut into consecutive windows,
        each transcribed on its own, and the texts are joined with spaces; without it such a clip is an error.
        `streamer`: anything with `put(token_ids)` / `end()` (transformers' `TextStreamer`), for one clip.
        """
        if input_features is not None:
            if inputs is not None:
                raise ValueError("Pass the encoder input once: inputs= or input_features=, not both.")
            inputs = input_features
        if (inputs is None) == (audio is None):
            raise ValueError("generate() takes audio= (paths or arrays) or inputs= (encoder input features), not both.")
        if generation_len is not None and (isinstance(generation_len, bool) or generation_len < 1):
            raise ValueError(f"generation_len must be a positive int; got {generation_len!r}.")
        start = time.perf_counter()
        feature_extractor = getattr(processor, "feature_extractor", processor) if processor else self.feature_extractor
        if audio is not None:
            features, owners, audio_s = self._prepare(audio, sampling_rate, feature_extractor, chunk_long_audio)
        else:
            features = self._fit_length(np.asarray(inputs.detach().cpu() if hasattr(inputs, "detach") else inputs))
            owners = list(range(features.shape[0]))
            audio_s = features.shape[0] * self.window_seconds
        if isinstance(language, (list, tuple)) and len(language) != len(set(owners)):
            clips = len(set(owners))
            raise ValueError(f"language= lists {len(language)} languages for {clips} clips; give one per clip.")
        if streamer is not None and len(set(owners)) != 1:
            raise ValueError("Streaming supports one clip at a time (as transformers' TextStreamer).")
        features_s = time.perf_counter() - start
        work = [_Window(clip, row) for clip, row in zip(owners, features)]
        clock = _Clock(start)
        emit = _InOrder(streamer, len(work))
        for first in range(0, len(work), self.batch_size):
            self._round(work[first : first + self.batch_size], first, generation_len, language, task, clock, emit)
        emit.finish()
        return self._output(work, audio_s, features_s, clock)

    def prepare(
        self, audio: Any, sampling_rate: int | None = None, processor: Any = None, chunk_long_audio: bool = False
    ) -> np.ndarray:
        """The encoder input `[windows, ...]` that `generate(audio=...)` computes: each clip (or, with
        `chunk_long_audio`, each of its windows) through `load_audio` and the feature extractor, at the compiled
        length. HF `generate` on one row gives the tokens `generate` gives for that window."""
        feature_extractor = getattr(processor, "feature_extractor", processor) if processor else self.feature_extractor
        return self._prepare(audio, sampling_rate, feature_extractor, chunk_long_audio)[0]

    def _prepare(
        self, audio: Any, sampling_rate: int | None, feature_extractor: Any, chunk_long_audio: bool
    ) -> tuple[np.ndarray, list[int], float]:
        """(encoder input of every window, the clip each window belongs to, seconds of audio)."""
        clips = self._clips(audio, sampling_rate)
        pieces = self._windows(clips, chunk_long_audio)
        features = self._features([piece for _, piece in pieces], feature_extractor)
        return features, [clip for clip, _ in pieces], sum(c.size for c in clips) / self.sampling_rate

    def _windows(self, clips: list[np.ndarray], chunk_long_audio: bool) -> list[tuple[int, np.ndarray]]:
        """(clip index, samples) of every window: a clip longer than the compiled window is cut into consecutive
        windows with `chunk_long_audio`, else it is an error."""
        window = int(round(self.window_seconds * self.sampling_rate))
        out = []
        for i, clip in enumerate(clips):
            if clip.size > window and not chunk_long_audio:
                raise AudioInputError(
                    f"Clip {i} is {clip.size / self.sampling_rate:.1f} s long, longer than the compiled window of "
                    f"{self.window_seconds:.0f} s. Pass chunk_long_audio=True (qeff transcribe --chunk-long-audio) "
                    f"to transcribe it in consecutive {self.window_seconds:.0f} s windows whose texts are joined, or "
                    "split the audio yourself."
                )
            out += [(i, piece) for piece in windows(clip, window)]
        return out

    def _round(
        self,
        work: list[_Window],
        first: int,
        generation_len: int | None,
        language: Any,
        task: str | None,
        clock: _Clock,
        emit: _InOrder,
    ) -> None:
        """Up to `batch_size` windows together: encoder, decoder prompt, then decode until each one stops."""
        width, used = self.batch_size, len(work)
        self._encode_round(work, clock)
        languages = language
        if isinstance(language, (list, tuple)):  # one per clip: each window takes its clip's (padding rows the last)
            languages = [language[w.clip] for w in work]
            languages += [languages[-1]] * (width - used)
        prompts = self._decoder_prompts(width, languages, task, detect=lambda: self._detect_language(width, used))
        picker = GreedyPicker(self._logits_processors(len(prompts[0]), languages, task), self._vocab_size())
        self._decode_round(work, first, prompts, picker, generation_len, clock, emit)

    def _detect_language(self, width: int, used: int) -> torch.Tensor:
        """Each row's language id, as Whisper's `detect_language`: the decoder's logits after the start token alone,
        restricted to the language tokens (the encoder has already run: the cross keys and values are in the state)."""
        config = self.hf_model.generation_config
        start = int(config.decoder_start_token_id)
        compiled = self.compile_config["prompt_len"]
        ids = np.full((width, compiled), start, dtype=np.int64)
        positions = np.full((width, compiled), -1, dtype=np.int64)
        positions[:used, 0] = 0
        logits = torch.from_numpy(np.ascontiguousarray(self._decoder_run(ids, positions)))
        keep = torch.zeros(logits.shape[-1], dtype=torch.bool)
        keep[list(config.lang_to_id.values())] = True
        return logits.masked_fill(~keep, -np.inf).argmax(dim=-1)

    def _output(self, work: list[_Window], audio_s: float, features_s: float, clock: _Clock) -> TranscriptionOutput:
        clips = sorted({w.clip for w in work})
        per_clip = {c: [w for w in work if w.clip == c] for c in clips}
        window_ids = [[w.generated for w in per_clip[c]] for c in clips]
        ids = [[t for window in windows_ for t in window] for windows_ in window_ids]
        if self.tokenizer is None:
            texts: list[str] | list[None] = [None] * len(clips)
        else:
            texts = [
                " ".join(
                    piece.strip()
                    for piece in self.tokenizer.batch_decode(windows_, skip_special_tokens=True)
                    if piece.strip()
                )
                if len(windows_) > 1
                else self.tokenizer.decode(windows_[0], skip_special_tokens=True)
                for windows_ in window_ids
            ]
        total = time.perf_counter() - clock.start
        metrics = SpeechPerfMetrics(
            audio_s=audio_s,
            windows=len(work),
            features_s=features_s,
            encoder_s=clock.encoder,
            ttft_s=(clock.first_token or time.perf_counter()) - clock.start,
            generated_tokens=sum(len(w.generated) for w in work),
            decode_tokens=sum(max(0, len(w.generated) - 1) for w in work),
            decode_s=clock.decode,
            total_s=total,
        )
        reasons = [[w.finish_reason or "eos" for w in per_clip[c]] for c in clips]
        return TranscriptionOutput(texts, ids, window_ids, reasons, metrics)


def hf_generate_ids(
    hf_model: nn.Module, encoder_input: torch.Tensor, generation_len: int, **kwargs: Any
) -> list[list[int]]:
    """HF `generate`'s greedy tokens for each row of `encoder_input`, as `QEFFAutoModelForSpeechSeq2Seq.generate`
    reports them: without the decoder prompt, up to (not including) the first end-of-text token. `kwargs` (e.g.
    `language=`) go to `generate`."""
    with torch.no_grad():
        out = hf_model.generate(
            **{encoder_input_name(hf_model): encoder_input},
            max_new_tokens=generation_len,
            do_sample=False,
            num_beams=1,
            **kwargs,
        )
    rows = out.tolist()
    if not _is_whisper_style(hf_model):  # Whisper returns the new tokens only; generate() in general, the prompt too
        rows = [row[1:] for row in rows]
    eos = set()
    for source in (hf_model.generation_config, hf_model.config):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            eos = set(value) if isinstance(value, (list, tuple)) else {int(value)}
            break
    return [row[: next((i for i, t in enumerate(row) if t in eos), len(row))] for row in rows]


# ---- helpers ---------------------------------------------------------------------------------------------


def _graph(program: Program, name: str) -> Program:
    graphs = getattr(program, "graphs", None)
    if not graphs or name not in graphs:
        raise RuntimeError(f"The program has no {name} graph: compile it with QEFFAutoModelForSpeechSeq2Seq.compile().")
    return graphs[name]


def _is_whisper_style(hf_model: nn.Module) -> bool:
    """Whether the model generates as Whisper does (its `WhisperGenerationMixin`: decoder prompt with language, task
    and `<|notimestamps|>`, suppressed tokens, only the new tokens returned)."""
    from transformers.models.whisper.generation_whisper import WhisperGenerationMixin

    return isinstance(hf_model, WhisperGenerationMixin)


class _InitTokenHost:
    """What Whisper's `_retrieve_init_tokens` reads from the model: its device, and `detect_language`, which here runs
    the compiled decoder instead of the PyTorch model."""

    device = torch.device("cpu")

    def __init__(self, detect: Callable[[], torch.Tensor] | None) -> None:
        self._detect = detect

    def detect_language(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._detect is None:
            raise ValueError("The language must be detected from the audio here; pass language= instead.")
        return self._detect()


class GreedyPicker:
    """Greedy choice after HF's logits processors, applied in their order: the suppressing ones (Whisper's
    `suppress_tokens`, and `begin_suppress_tokens` at the first generated position) as boolean masks made once, any
    other processor through its own `__call__`. Same tokens as HF, without rebuilding the masks at every step."""

    def __init__(self, processors: LogitsProcessorList, vocab_size: int) -> None:
        from transformers import SuppressTokensAtBeginLogitsProcessor, SuppressTokensLogitsProcessor

        self.steps: list[tuple[np.ndarray | None, int | None, Any]] = []  # (mask, only at this length, processor)
        for processor in processors:
            if type(processor) is SuppressTokensLogitsProcessor:
                self.steps.append((_mask(processor.suppress_tokens, vocab_size), None, None))
            elif type(processor) is SuppressTokensAtBeginLogitsProcessor:
                mask = _mask(processor.begin_suppress_tokens, vocab_size)
                self.steps.append((mask, int(processor.begin_index), None))
            else:
                self.steps.append((None, None, processor))

    def __call__(self, sequence: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The next token of each row `[B]`, from the decoder sequences so far `[B, L]` and the logits `[B, V]`."""
        scores = np.array(logits, dtype=np.float32)  # a copy: the caller's logits stay as they were
        for mask, length, processor in self.steps:
            if processor is not None:
                scores = processor(torch.from_numpy(sequence), torch.from_numpy(scores)).numpy()
            elif length is None or sequence.shape[-1] == length:
                scores[:, mask] = -np.inf
        return scores.argmax(axis=-1)


def _mask(token_ids: torch.Tensor, vocab_size: int) -> np.ndarray:
    mask = np.zeros(vocab_size, dtype=bool)
    ids = np.asarray(token_ids.tolist(), dtype=np.int64).reshape(-1)
    mask[ids[(ids >= 0) & (ids < vocab_size)]] = True
    return mask


@dataclass
class _Clock:
    start: float
    encoder: float = 0.0
    decode: float = 0.0
    first_token: float | None = None


class _InOrder:
    """Streams the windows' tokens in window order: the earliest unfinished window's tokens go out as they come,
    later windows' tokens wait until the windows before them are done."""

    def __init__(self, streamer: Any, count: int) -> None:
        self.streamer = streamer
        self.pending: list[list[int]] = [[] for _ in range(count)]
        self.finished = [False] * count
        self.next = 0
        self.started = False

    def prompt(self, index: int, ids: list[int]) -> None:
        if self.streamer is not None and not self.started:
            self.streamer.put(np.array(ids))  # TextStreamer(skip_prompt=True) skips it, as for causal LMs
            self.started = True

    def token(self, index: int, token: int) -> None:
        if self.streamer is None:
            return
        if index == self.next:
            self.streamer.put(np.array([token]))
        else:
            self.pending[index].append(token)

    def done(self, index: int) -> None:
        if self.streamer is None:
            return
        self.finished[index] = True
        while self.next < len(self.finished) and self.finished[self.next]:
            self.next += 1
            if self.next < len(self.pending) and self.pending[self.next]:
                self.streamer.put(np.array(self.pending[self.next]))
                self.pending[self.next] = []

    def finish(self) -> None:
        if self.streamer is not None:
            self.streamer.end()


def _load_processor(source: str) -> Any:
    """The processor (feature extractor + tokenizer) saved with a model, else its feature extractor, else None."""
    from transformers import AutoFeatureExtractor, AutoProcessor

    from QEfficient.transformers.loading import local_then_hub, resolve_model_source

    try:
        folder, is_local = resolve_model_source(source)
    except FileNotFoundError:
        return None
    for loader in (AutoProcessor, AutoFeatureExtractor):
        try:
            processor = local_then_hub(
                lambda loader=loader, **extra: loader.from_pretrained(folder, **extra), folder, is_local
            )
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.info("No %s with %s (%s).", loader.__name__, source, exc)
            continue
        if hasattr(processor, "feature_extractor") or hasattr(processor, "sampling_rate"):
            return processor
    return None
