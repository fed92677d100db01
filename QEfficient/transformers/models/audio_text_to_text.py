"""Decoder-only audio LLMs: `QEFFAutoModelForAudioTextToText` (docs/speech_to_text.md, "Audio LLMs").

Voxtral, Qwen3-ASR, Granite Speech, OmniASR and VibeVoice-ASR are causal language models whose prompt holds
placeholder tokens (`audio_token_id`) that their audio encoder's output replaces: the mechanism of the image
placeholders of `QEFFAutoModelForImageTextToText`, with `get_audio_features` in place of `get_image_features`.
This class is that mechanism with the audio modality, so it runs as the same two programs:

- the **audio encoder**: HF's own `get_audio_features` (encoder and projector) as a static graph for one clip length
  (the feature extractor's output for `audio_seconds` of audio), `[N, H]` feature rows;
- the **language model**: the causal-LM program with the per-token features input; as these models' forwards take no
  precomputed features, the graph merges them into `inputs_embeds` (each audio token's embedding replaced by its
  feature row), which is what their own forwards do.

`QEFFAutoModelForSpeechSeq2Seq.from_pretrained` hands a decoder-only audio LLM of transformers' speech-seq2seq
mapping to this class.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSpeechSeq2Seq

from QEfficient.transformers.audio import DEFAULT_SAMPLING_RATE, load_audio
from QEfficient.transformers.models.image_inputs import (
    AUDIO,
    Modality,
    features_function,
    features_parameters,
    image_inputs_of,
    placeholder_token_id,
)
from QEfficient.transformers.models.image_text_to_text import QEFFAutoModelForImageTextToText
from QEfficient.transformers.models.modeling_auto import DEFAULT_CTX_LEN
from QEfficient.transformers.models.registry import UnsupportedModelError

DEFAULT_AUDIO_SECONDS = 30.0


def is_audio_llm(model_class: type) -> bool:
    """Whether a HF model class is a decoder-only audio LLM (it has `get_audio_features` and a forward that takes
    `inputs_embeds`), as opposed to an encoder-decoder."""
    forward = inspect.signature(model_class.forward).parameters
    return callable(getattr(model_class, AUDIO.features_function, None)) and "inputs_embeds" in forward


def check_audio_text_supported(model: nn.Module) -> None:
    """A clear error for an audio model outside the placeholder mechanism."""
    name = type(model).__name__
    if features_function(model, AUDIO) is None:
        raise UnsupportedModelError(f"{name} has no `get_audio_features`: it is not an audio LLM.")
    if getattr(model.config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{name} is an encoder-decoder model: load it with QEFFAutoModelForSpeechSeq2Seq, not as an audio LLM."
        )
    if "inputs_embeds" not in inspect.signature(model.forward).parameters:
        raise UnsupportedModelError(
            f"{name}'s forward takes no `inputs_embeds`, so its audio features cannot be merged into the prompt."
        )
    placeholder_token_id(model.config, AUDIO)


def audio_inputs_of(encoded: dict[str, Any], model: nn.Module) -> dict[str, np.ndarray]:
    """The audio encoder's part of a processor's output: what `get_audio_features` names (its mask too where it takes
    one), or, where it names nothing, every non-text input the model's forward takes."""
    wanted = features_parameters(model, AUDIO)
    if wanted is None:
        return image_inputs_of(encoded, model)
    arrays = image_inputs_of(encoded)
    return {name: arrays[name] for name in wanted if name in arrays}


class QEFFAutoModelForAudioTextToText(QEFFAutoModelForImageTextToText):
    """Decoder-only audio LLMs (Voxtral, Qwen3-ASR, Granite Speech, OmniASR, VibeVoice-ASR) as two programs.

    ```python
    model = QEFFAutoModelForAudioTextToText.from_pretrained(path)   # or QEFFAutoModelForSpeechSeq2Seq.from_pretrained
    model.compile(audio_seconds=30, prefill_seq_len=128, ctx_len=1024)
    out = model.generate(audio="speech.wav", prompts="Transcribe this audio.", generation_len=64)
    out.generated_texts
    ```

    `generate` applies the processor's chat template (`chat=True`) with an audio entry per clip, runs the audio
    encoder program on the processor's features and drives the language program with the features at the audio-token
    positions. Greedy tokens equal HF `generate`'s. The encoder program is compiled for one clip length: the
    processor's output for a clip of another length is refused with the length to compile for.
    """

    _hf_auto_class: ClassVar[Any] = AutoModelForSpeechSeq2Seq
    modality: ClassVar[Modality] = AUDIO
    compile_inputs_name: ClassVar[str] = "audio_inputs"

    @staticmethod
    def check_supported(model: nn.Module) -> None:
        check_audio_text_supported(model)

    @property
    def sampling_rate(self) -> int:
        processor = self.processor
        extractor = getattr(processor, "feature_extractor", None) or getattr(processor, "audio_processor", None)
        return int(getattr(extractor, "sampling_rate", 0) or DEFAULT_SAMPLING_RATE)

    def encoder_inputs_of(self, encoded: dict[str, Any]) -> dict[str, np.ndarray]:
        return audio_inputs_of(encoded, self.hf_model)

    def example_audio_inputs(self, audio_seconds: float = DEFAULT_AUDIO_SECONDS, processor: Any = None):  # noqa: ANN201
        """The processor's audio inputs for a silent clip of `audio_seconds` (the encoder graph's shapes)."""
        processor = processor or self.processor
        if processor is None:
            raise ValueError(
                "No processor was found with the model: pass processor= (or the example audio_inputs= to compile)."
            )
        silence = np.zeros(int(round(audio_seconds * self.sampling_rate)), dtype=np.float32)
        placeholder = getattr(processor, "audio_token", None) or "<audio>"
        _, encoded, _ = self._encode([silence], placeholder, processor, False, 0)
        return self.encoder_inputs_of(encoded)

    def compile(  # type: ignore[override] - the audio counterpart of the image arguments
        self,
        audio_seconds: float | None = None,
        prefill_seq_len: int = 32,
        ctx_len: int = DEFAULT_CTX_LEN,
        batch_size: int = 1,
        full_batch_size: int | None = None,
        audio_inputs: dict[str, np.ndarray] | None = None,
        backend: str = "onnxruntime",
        skip_encoder: bool = False,
        skip_lang: bool = False,
        **backend_options: Any,
    ) -> dict[str, Any]:
        """Compile the audio encoder program for clips of `audio_seconds` (30 by default; as the processor prepares
        them) or for the example `audio_inputs`, and the language program for `prefill_seq_len`, `ctx_len` and the
        batch. Returns `{"vision": dir, "language": dir}` (the encoder under the image-text class's key), or
        `{"program": dir}` with `kv_offload=False`."""
        if audio_inputs is None and not (skip_encoder and self.vision.onnx_path is not None):
            audio_inputs = self.example_audio_inputs(audio_seconds or DEFAULT_AUDIO_SECONDS)
        return super().compile(
            prefill_seq_len=prefill_seq_len,
            ctx_len=ctx_len,
            batch_size=batch_size,
            full_batch_size=full_batch_size,
            image_inputs=audio_inputs,
            backend=backend,
            skip_vision=skip_encoder,
            skip_lang=skip_lang,
            **backend_options,
        )

    def generate(  # type: ignore[override] - audio in the images' place
        self, audio: Any = None, prompts: str | Sequence[str] = (), processor: Any = None, **kwargs: Any
    ):  # noqa: ANN201 - GenerationOutput
        """Answer `prompts` about `audio` (for one prompt: a clip or a list of clips; for several, one entry per
        prompt). Clips are WAV paths or 1-D sample arrays at the processor's rate (`load_audio` resamples a file).
        Keyword arguments are `QEFFAutoModelForImageTextToText.generate`'s (`generation_len`, `chat`, sampling,
        `streamer`, `stop_strings`)."""
        return super().generate(audio, prompts, processor, **kwargs)

    def _media_items(self, items: list[Any]) -> list[np.ndarray]:
        """Clips as float32 mono arrays at the processor's rate (WAV files resampled; clear errors otherwise)."""
        return [load_audio(clip, target_rate=self.sampling_rate) for clip in items]

    def _chat_entries(self, items: list[Any]) -> list[dict[str, str]]:
        return [{"type": "audio"} for _ in items]

    def _process(self, processor: Any, items: list[Any], text: str) -> dict[str, Any]:
        # audio processors differ in the tensor types they return; PyTorch tensors are the common one
        encoded = processor(text=[text], audio=items or None, return_tensors="pt")
        return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in dict(encoded).items()}
