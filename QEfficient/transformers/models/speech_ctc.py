"""CTC speech recognition: `QEFFAutoModelForCTC` (wav2vec2, HuBERT, WavLM, ...: audio -> logits -> text).

The exported graph is the HF `...ForCTC` model's own forward, as

    (input_values [B, S] | input_features [B, T, F], attention_mask [B, S|T]) -> logits [B, frames, V]

with dynamic batch and length. A fixed-shape program is compiled for a few audio lengths; each clip runs on the
smallest that fits, zero-padded, and its logits are cut to the frames HF computes for the clip alone
(`_get_feat_extract_output_lengths` or the encoder's `_get_subsampling_output_length`).

Padding never changes a clip's logits: they equal HF's on the clip unpadded, in a batch or alone, whatever the
compiled length. The graph zeroes the padded steps, passes the mask to HF (which masks the attention and the
padded frames), and closes the two places where HF itself lets padding in:

- a feature encoder whose first layer is a GroupNorm over time (wav2vec2-base, HuBERT, WavLM: the models whose
  feature extractor returns no attention mask) normalises with statistics of the valid steps only;
- a convolution over frames in the encoder ("same" padding: conformer depthwise convolutions, positional
  convolutions) sees zeros at the padded frames, as it sees zeros beyond the end of an unpadded clip.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForCTC

from QEfficient.base.pytorch_transforms import PytorchTransform
from QEfficient.transformers.audio import DEFAULT_SAMPLING_RATE, AudioInputError, load_audio, to_samples
from QEfficient.transformers.embeddings.batching import plan_batches, smallest_fit
from QEfficient.transformers.models.modeling_auto import QEFFTransformersBase, _as_sizes
from QEfficient.transformers.models.registry import UnsupportedModelError

logger = logging.getLogger(__name__)

DEFAULT_AUDIO_LENS = (5.0, 10.0, 30.0)  # seconds
PROBE_SAMPLES = 3200  # 0.2 s at 16 kHz: long enough for any feature encoder's receptive field
PROBE_FRAMES = 64
# Methods HF CTC models (or their encoder) use for "frames out for this many steps in", found by name.
LENGTH_METHODS = ("_get_feat_extract_output_lengths", "_get_subsampling_output_length")
# Config fields that may give the per-frame size of `input_features` (mel bins, possibly stacked), in order.
FEATURE_SIZE_FIELDS = ("feature_size", "feature_projection_input_dim", "input_feat_per_channel", "num_mel_bins")


def check_ctc_supported(config: Any) -> None:
    """Reject a config that is not one of transformers' CTC architectures (`MODEL_FOR_CTC_MAPPING_NAMES`)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CTC_MAPPING_NAMES:
        raise UnsupportedModelError(
            f"{type(config).__name__} (model_type {model_type!r}) is not a CTC speech model; "
            f"QEFFAutoModelForCTC takes {', '.join(sorted(MODEL_FOR_CTC_MAPPING_NAMES))}. "
            "For Whisper-style encoder-decoders use QEFFAutoModelForSpeechSeq2Seq."
        )


# ---- what the HF model takes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CTCInputLayout:
    """How the HF model takes its input: raw samples or feature frames, the mask's keyword, the extra axes."""

    name: str  # "input_values" (raw samples) or "input_features" (e.g. log-mel frames)
    mask_name: str | None  # the forward's mask keyword: "attention_mask", "padding_mask", or None
    feature_size: int | None = None  # F of input_features [B, T, F]; None for samples [B, S]
    channel_axis: bool = False  # HF takes samples as [B, 1, S] (the graph still takes [B, S])

    @property
    def raw_audio(self) -> bool:
        return self.name == "input_values"

    def hf_input(self, steps: torch.Tensor) -> torch.Tensor:
        """The graph's input ([B, S] or [B, T, F]) in the layout HF's forward takes."""
        return steps.unsqueeze(1) if self.channel_axis else steps


def _forward_parameters(model: nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _feature_size_candidates(config: Any, feature_extractor: Any = None) -> list[int]:
    """Per-frame sizes to try for `input_features`: the feature extractor's, then the config's (and its
    sub-configs') mel sizes, also doubled and quadrupled (delta features, stacked frames)."""
    sizes: list[int] = []
    fe_size = getattr(feature_extractor, "feature_size", None)
    if isinstance(fe_size, int) and fe_size > 1:
        sizes.append(fe_size)
    configs = [config, *(v for v in vars(config).values() if hasattr(v, "to_dict") and hasattr(v, "model_type"))]
    for name in FEATURE_SIZE_FIELDS:
        for conf in configs:
            value = getattr(conf, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                sizes += [value, 2 * value, 4 * value]
    return list(dict.fromkeys(sizes))


def detect_input_layout(model: nn.Module, feature_extractor: Any = None) -> CTCInputLayout:
    """Find how `model` (a HF `...ForCTC`) takes its input, by running it once on a short silent clip.

    Raw-sample models are tried as [1, S], then [1, 1, S]; feature models as [1, T, F] for each candidate F
    (`_feature_size_candidates`). Raises `UnsupportedModelError` when no layout runs.
    """
    params = _forward_parameters(model)
    name = getattr(model, "main_input_name", "input_values")
    if name not in ("input_values", "input_features") or name not in params:
        name = "input_values" if "input_values" in params else "input_features" if "input_features" in params else ""
    if not name:
        raise UnsupportedModelError(f"{type(model).__name__} takes neither input_values nor input_features.")
    mask_name = next((m for m in ("attention_mask", "padding_mask") if m in params), None)
    if name == "input_values":
        candidates = [CTCInputLayout(name, mask_name), CTCInputLayout(name, mask_name, channel_axis=True)]
        steps = PROBE_SAMPLES
    else:
        sizes = _feature_size_candidates(model.config, feature_extractor)
        candidates = [CTCInputLayout(name, mask_name, feature_size=f) for f in sizes]
        steps = PROBE_FRAMES
    errors = []
    for layout in candidates:
        shape = (1, steps) if layout.feature_size is None else (1, steps, layout.feature_size)
        try:
            with torch.no_grad():
                model(**{name: layout.hf_input(torch.zeros(shape))})
        except Exception as exc:  # noqa: BLE001 - try the next layout
            errors.append(f"{list(layout.hf_input(torch.zeros(shape)).shape)}: {str(exc).splitlines()[0][:150]}")
            continue
        return layout
    raise UnsupportedModelError(
        f"{type(model).__name__} ran on none of the input layouts tried ({'; '.join(errors) or 'no feature size'})."
    )


def output_length_function(model: nn.Module) -> Any:
    """HF's own "frames out for this many steps in" of `model` (the CTC model or a submodule), or None."""
    for module in [model, *model.modules()]:
        for name in LENGTH_METHODS:
            method = getattr(module, name, None)
            if callable(method):
                return method
    return None


# ---- the export wrapper -------------------------------------------------------------------------------------


def _conv_output_length(conv: nn.Conv1d, length: torch.Tensor) -> torch.Tensor:
    """Valid output steps of a 1-D convolution for `length` valid input steps (PyTorch's formula)."""
    (kernel,), (stride,), (dilation,) = conv.kernel_size, conv.stride, conv.dilation
    padding = conv.padding[0] if isinstance(conv.padding, tuple) else 0
    return torch.div(length + 2 * padding - dilation * (kernel - 1) - 1, stride, rounding_mode="floor") + 1


def _masked_group_norm(norm: nn.GroupNorm, lengths: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm of [B, C, T] with each row's statistics taken over its first `lengths[b]` steps only."""
    batch, channels, steps = x.shape
    groups = norm.num_groups
    mask = (torch.arange(steps, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)  # [B, T]
    grouped = x.reshape(batch, groups, channels // groups, steps)
    weight = mask[:, None, None, :]
    count = (lengths.clamp(min=1).to(x.dtype) * (channels // groups))[:, None]  # [B, 1]
    mean = (grouped * weight).sum(dim=(2, 3)) / count
    centred = grouped - mean[:, :, None, None]
    var = (centred * centred * weight).sum(dim=(2, 3)) / count
    out = (centred / torch.sqrt(var[:, :, None, None] + norm.eps)).reshape(batch, channels, steps)
    if norm.affine:
        out = out * norm.weight[None, :, None] + norm.bias[None, :, None]
    return out


def _feature_encoder_norms(model: nn.Module) -> list[tuple[nn.GroupNorm, list[nn.Conv1d]]]:
    """GroupNorms over time inside raw-audio feature encoders (`conv_layers` whose layers have `conv`): each with
    the convolutions from the clip up to it (their arithmetic gives its valid length)."""
    found = []
    for module in model.modules():
        layers = getattr(module, "conv_layers", None)
        if not isinstance(layers, nn.ModuleList):
            continue
        chain: list[nn.Conv1d] = []
        for layer in layers:
            conv = getattr(layer, "conv", None)
            if not isinstance(conv, nn.Conv1d):
                break
            chain.append(conv)
            for child in layer.children():
                if isinstance(child, nn.GroupNorm):
                    found.append((child, list(chain)))
    return found


class CTCForExport(nn.Module):
    """A HF `...ForCTC` model as `(input [B, S] or [B, T, F], attention_mask [B, S|T]) -> logits [B, frames, V]`,
    independent of how far the input is padded (see the module docstring)."""

    def __init__(self, ctc_model: nn.Module, layout: CTCInputLayout | None = None) -> None:
        super().__init__()
        self.ctc_model = ctc_model
        self.layout = layout or detect_input_layout(ctc_model)
        self.length_fn = output_length_function(ctc_model)
        if self.length_fn is None:  # without it the logits cannot be cut to a clip's frames
            raise UnsupportedModelError(
                f"{type(ctc_model).__name__} has no output-length method ({' / '.join(LENGTH_METHODS)}), so the frames "
                "of a padded clip cannot be told from padding."
            )
        self.group_norms = _feature_encoder_norms(ctc_model)
        feature_convs: set[int] = set()  # the raw-audio feature encoder's: valid outputs need only valid inputs
        for module in ctc_model.modules():
            layers = getattr(module, "conv_layers", None)
            if isinstance(layers, nn.ModuleList):
                feature_convs |= {id(m) for m in layers.modules()}
        self.frame_convs = [
            m
            for m in ctc_model.modules()
            if isinstance(m, nn.Conv1d) and m.kernel_size[0] > 1 and id(m) not in feature_convs
        ]

    @property
    def config(self):  # noqa: ANN201 - the wrapped HF config
        return self.ctc_model.config

    @property
    def export_identity(self) -> dict:
        """What, beyond config and weights, determines the exported graph (part of the export hash)."""
        return {
            "layout": [self.layout.name, self.layout.mask_name, self.layout.feature_size, self.layout.channel_axis],
            "masked_group_norms": len(self.group_norms),
            "masked_frame_convs": len(self.frame_convs),
        }

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Logit frames HF computes for clips of `lengths` valid input steps (int64)."""
        return torch.as_tensor(self.length_fn(lengths)).to(torch.int64)

    @contextlib.contextmanager
    def _padding_masks(self, lengths: torch.Tensor, padded: int) -> Iterator[None]:
        """Masked GroupNorm statistics and zeroed padded frames at the encoder's convolutions, for one call."""
        frames = self.output_lengths(lengths)
        padded_frames = int(self.output_lengths(torch.tensor([padded]))[0])
        handles = []
        for norm, chain in self.group_norms:
            valid = lengths
            for conv in chain:
                valid = _conv_output_length(conv, valid)
            norm.forward = functools.partial(_masked_group_norm, norm, valid)

        def zero_padded_frames(module: nn.Module, args: tuple) -> tuple | None:
            x = args[0]
            if x.dim() != 3 or x.shape[-1] != padded_frames:  # another time resolution: left as HF has it
                return None
            keep = (torch.arange(x.shape[-1], device=x.device)[None, :] < frames[:, None]).to(x.dtype)
            return (x * keep[:, None, :], *args[1:])

        for conv in self.frame_convs:
            handles.append(conv.register_forward_pre_hook(zero_padded_frames))
        try:
            yield
        finally:
            for norm, _ in self.group_norms:
                norm.__dict__.pop("forward", None)
            for handle in handles:
                handle.remove()

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.int64)
        keep = mask.to(inputs.dtype)
        inputs = inputs * (keep if inputs.dim() == 2 else keep[:, :, None])  # padded steps are zeros, as HF pads
        lengths = mask.sum(-1)
        kwargs = {self.layout.mask_name: mask} if self.layout.mask_name else {}
        with self._padding_masks(lengths, inputs.shape[1]):
            out = self.ctc_model(**{self.layout.name: self.layout.hf_input(inputs)}, **kwargs)
        return out.logits.float()


class CTCTransform(PytorchTransform):
    """Wrap a HF `...ForCTC` model as `(input, attention_mask) -> logits` (`CTCForExport`); the input layout is
    found by running the model once (`detect_input_layout`, with the feature extractor's feature size if given)."""

    def __init__(self, feature_extractor: Any = None) -> None:
        self.feature_extractor = feature_extractor

    @property
    def name(self) -> str:
        return "CTCTransform"

    def apply(self, model: nn.Module) -> tuple[nn.Module, bool]:  # type: ignore[override]
        if isinstance(model, CTCForExport):
            raise ValueError("The model is already wrapped for export.")
        return CTCForExport(model, detect_input_layout(model.eval(), self.feature_extractor)), True


# ---- the auto class -----------------------------------------------------------------------------------------


AudioLike = Any  # a WAV path, or a 1-D array / list / tensor of samples


class QEFFAutoModelForCTC(QEFFTransformersBase):
    """CTC speech recognition (`AutoModelForCTC`: wav2vec2, HuBERT, WavLM, Data2VecAudio, SEW, UniSpeech, ...).

    ```python
    model = QEFFAutoModelForCTC.from_pretrained(path)          # the processor saved with it is loaded too
    model.compile(audio_len=[5.0, 10.0, 30.0], batch_size=4)   # seconds (float) or samples (int)
    model.transcribe("speech.wav")                             # -> ["HELLO WORLD"]
    model.transcribe([clip_a, clip_b], sampling_rate=44100)    # arrays are resampled to the model's rate
    logits = model.logits(clip)                                # [frames, vocab], HF's logits for the clip
    ```

    Each clip runs on the smallest compiled length that holds it, zero-padded, in batches of the compiled batch
    sizes; its logits are cut to the frames HF computes for it, and equal HF's on the clip alone (padding never
    reaches them). A clip longer than the largest compiled length is an error that names both: compile a longer
    `audio_len`, or cut the clip (`QEfficient.transformers.audio.windows`).

    Audio goes through `QEfficient.transformers.audio.load_audio` (WAV path or samples, resampled to the model's
    rate) and then the model's feature extractor (for wav2vec2: zero-mean unit-variance normalisation, per clip),
    as HF's processor does. Without a feature extractor, raw-sample models take the samples as they are.
    """

    _hf_auto_class: ClassVar[Any] = AutoModelForCTC
    _export_shape: ClassVar[tuple[int, int]] = (2, 4000)  # 0.25 s of 16 kHz samples (frames: set per model)
    _probe_shape: ClassVar[tuple[int, int]] = (3, 5600)

    def __init__(self, model: nn.Module, processor: Any = None, feature_extractor: Any = None, **kwargs: Any) -> None:
        config = getattr(model, "config", None)
        if config is not None:
            check_ctc_supported(config)
        self.processor = processor
        self.feature_extractor = feature_extractor or getattr(processor, "feature_extractor", None)
        super().__init__(model, extra_pytorch_transforms=[CTCTransform(self.feature_extractor)], **kwargs)
        if self.tokenizer is None:
            self.tokenizer = getattr(processor, "tokenizer", None)
        if not self.layout.raw_audio:  # lengths are feature frames
            self._export_shape, self._probe_shape = (2, 40), (3, 53)  # type: ignore[misc]
        self._step_samples: dict[int, int] = {}  # compiled length in input steps -> audio samples, for messages

    @classmethod
    def _init_kwargs(cls) -> tuple[str, ...]:
        return ("processor", "feature_extractor", "tokenizer")

    @staticmethod
    def _check_config(config: Any) -> None:
        check_ctc_supported(config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load a HF CTC model (local folder, or hub id from the HF cache) and the processor saved with it.

        `processor=` / `feature_extractor=` / `tokenizer=` override what is found with the model; without a
        processor, `transcribe` needs one passed (logits work without).
        """
        if "processor" not in kwargs and "feature_extractor" not in kwargs:
            kwargs["processor"], kwargs["feature_extractor"] = _load_processor(pretrained_model_name_or_path, kwargs)
        elif "feature_extractor" not in kwargs:
            kwargs["feature_extractor"] = getattr(kwargs["processor"], "feature_extractor", None)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # ---- identity ------------------------------------------------------------------------------------------

    @property
    def hf_model(self) -> nn.Module:
        return self.model.ctc_model if isinstance(self.model, CTCForExport) else self.model

    @property
    def layout(self) -> CTCInputLayout:
        return self.model.layout

    @property
    def output_name(self) -> str:
        return "logits"

    @property
    def sampling_rate(self) -> int:
        """The rate the model takes audio at: its feature extractor's, else 16 kHz."""
        rate = getattr(self.feature_extractor, "sampling_rate", None)
        return int(rate) if isinstance(rate, int) and rate > 0 else DEFAULT_SAMPLING_RATE

    @property
    def input_names(self) -> list[str]:
        return [self.layout.name, "attention_mask"]

    def output_lengths(self, lengths: Sequence[int] | np.ndarray) -> np.ndarray:
        """Logit frames HF computes for clips of `lengths` valid input steps (samples, or feature frames)."""
        with torch.no_grad():
            return self.model.output_lengths(torch.as_tensor(np.asarray(lengths, dtype=np.int64))).numpy()

    @functools.cached_property
    def min_input_steps(self) -> int:
        """The shortest input (samples, or feature frames) that gives at least one logit frame."""
        candidates = np.arange(1, 1 << 14)
        enough = np.nonzero(self.output_lengths(candidates) >= 1)[0]
        return int(candidates[enough[0]]) if enough.size else 1

    # ---- export / compile ----------------------------------------------------------------------------------

    def _example_batch(self, batch: int, seq: int) -> dict[str, torch.Tensor]:
        """Random steps, every row full but the last, which is valid for its first 5/8 (so that tracing keeps
        the mask path)."""
        generator = torch.Generator().manual_seed(batch * 1000 + seq)
        shape = (batch, seq) if self.layout.feature_size is None else (batch, seq, self.layout.feature_size)
        values = torch.randn(shape, generator=generator) * (0.1 if self.layout.raw_audio else 1.0)
        attention_mask = torch.ones((batch, seq), dtype=torch.int64)
        attention_mask[-1, max(1, 5 * seq // 8) :] = 0
        values[-1, max(1, 5 * seq // 8) :] = 0
        return {self.layout.name: values, "attention_mask": attention_mask}

    def _output_axes(self) -> dict[int, str]:
        return {0: "batch_size", 1: "frames"}

    def _max_seq_len(self) -> int | None:
        """No limit in samples or feature frames (a config's `max_position_embeddings` counts encoder frames or
        relative distances, not input steps)."""
        return None

    def _valid_outputs(self, values: np.ndarray, batch: dict[str, torch.Tensor]) -> np.ndarray:
        frames = self.output_lengths(batch["attention_mask"].numpy().sum(-1))
        return np.concatenate([row[:n] for row, n in zip(values, frames)])

    def export(self, export_dir: str | Path | None = None) -> Path:
        """Export `(input_values [B, S] | input_features [B, T, F], attention_mask) -> logits [B, frames, V]` with
        dynamic batch and length (cached). A model whose graph does not hold at another shape gets one static graph
        per compiled shape instead (see `QEFFTransformersBase.export`)."""
        return super().export(export_dir)

    def compile(
        self,
        audio_len: float | int | str | Sequence[float | int] | None = None,
        batch_size: int | Sequence[int] = 1,
        backend: str = "onnxruntime",
        compile_dir: str | Path | None = None,
        seq_len: int | Sequence[int] | str | None = None,
        **backend_options: Any,
    ) -> Path:
        """Compile for every (batch_size, audio length); at run time each clip goes to the smallest that fits.

        `audio_len`: seconds (float, e.g. 5.0) or samples (int) at the model's sampling rate, one or several;
        default 5, 10 and 30 s. `"dynamic"` leaves the length free (ONNX Runtime): each batch is padded only to
        its longest clip. `seq_len` instead gives lengths in the graph's own input steps (samples, or feature
        frames for `input_features` models). Returns the program directory.
        """
        if seq_len is not None and audio_len is not None:
            raise ValueError("Pass audio_len (seconds or samples) or seq_len (input steps), not both.")
        if seq_len is None:
            if audio_len == "dynamic":
                seq_len = "dynamic"
            else:
                lengths = DEFAULT_AUDIO_LENS if audio_len is None else audio_len
                items = [lengths] if isinstance(lengths, (int, float)) else list(lengths)
                if not items:
                    raise ValueError("audio_len must be a length or a non-empty list of lengths.")
                samples = [to_samples(x, self.sampling_rate) for x in items]
                steps = {self._steps_for_samples(n): n for n in samples}
                self._step_samples = {**self._step_samples, **steps}
                seq_len = sorted(steps)
        elif seq_len != "dynamic":
            seq_len = _as_sizes(seq_len, "seq_len")
        return super().compile(seq_len, batch_size, backend, compile_dir, **backend_options)

    def _steps_for_samples(self, samples: int) -> int:
        """Input steps of a clip of `samples` samples: itself for raw audio, the feature extractor's frames."""
        if self.layout.raw_audio:
            return samples
        if self.feature_extractor is None:
            raise ValueError(
                f"{self.model_name} takes feature frames (input_features) and no feature extractor was found with "
                "it, so audio lengths cannot be converted; pass feature_extractor= to from_pretrained, or compile "
                "with seq_len= in feature frames."
            )
        return int(self._features(np.zeros(samples, np.float32)).shape[0])

    @property
    def compiled_audio_seconds(self) -> list[float]:
        """The compiled lengths in seconds of audio (feature models: as far as known from `compile(audio_len=)`); a
        dynamic length is `inf`."""
        if self.dynamic_seq_len:
            return [float("inf")]
        rate = self.sampling_rate
        return [self._samples_of_steps(s) / rate for s in self.compiled_seq_lens]

    def _samples_of_steps(self, steps: int) -> int:
        if self.layout.raw_audio:
            return steps
        return self._step_samples.get(steps, steps * int(getattr(self.feature_extractor, "hop_length", 160) or 160))

    # ---- inputs --------------------------------------------------------------------------------------------

    def _features(self, audio: np.ndarray) -> np.ndarray:
        """One clip at the model's rate -> the model's input for it ([S] samples or [T, F] frames), unpadded."""
        extractor = self.feature_extractor
        if extractor is None:
            if not self.layout.raw_audio:
                raise ValueError(
                    f"{self.model_name} takes feature frames (input_features) computed by its feature extractor, "
                    "and none was found with the model; pass processor= or feature_extractor= to from_pretrained."
                )
            return audio
        out = extractor(audio, sampling_rate=self.sampling_rate, return_tensors="pt")
        values = out[self.layout.name] if self.layout.name in out else next(iter(out.values()))
        values = np.asarray(values.detach().cpu().float().numpy() if hasattr(values, "detach") else values)
        values = values[0]
        if self.layout.raw_audio:
            values = values.reshape(-1)  # [1, S] (OmniASR) -> [S]
            return values
        mask = out.get("attention_mask")
        if mask is not None:  # a feature extractor that pads a single clip (e.g. to a frame multiple)
            values = values[: int(np.asarray(mask)[0].sum())]
        return values

    def prepare(self, audio: AudioLike | Sequence[AudioLike], sampling_rate: int | None = None) -> list[np.ndarray]:
        """Each clip's model input (unpadded): `load_audio` (path or samples, resampled to the model's rate),
        then the feature extractor. `sampling_rate` is the rate of array inputs (files carry their own)."""
        clips = _as_clips(audio)
        out = []
        for clip in clips:
            samples = load_audio(clip, sampling_rate=sampling_rate, target_rate=self.sampling_rate)
            out.append(self._features(samples))
        return out

    # ---- running -------------------------------------------------------------------------------------------

    def hf_reference(self, inputs: torch.Tensor | np.ndarray, attention_mask: Any = None) -> torch.Tensor:
        """HF's logits for one unpadded clip input ([S] or [T, F], or with a leading batch of 1), in PyTorch."""
        values = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
        if values.dim() == (1 if self.layout.feature_size is None else 2):
            values = values[None]
        with torch.no_grad():
            return self.hf_model(**{self.layout.name: self.layout.hf_input(values)}).logits.float()

    def generate(self, inputs: Any, runtime: str = "compiled") -> dict[str, np.ndarray]:
        """Run prepared inputs: a dict (e.g. a feature extractor's output) with `input_values` [B, S] (or
        `input_features` [B, T, F]) and optionally `attention_mask` (1s then 0s; all ones when absent).

        Returns `{"logits": [B, frames, V], "logit_lengths": [B]}`: frames for the longest input; row b's logits
        are meaningful for its first `logit_lengths[b]` frames (HF's output length for its valid steps).
        `runtime="pytorch"` runs the transformed PyTorch model instead of the compiled program.
        """
        values = np.asarray(inputs[self.layout.name], dtype=np.float32)
        if values.ndim == (1 if self.layout.feature_size is None else 2):
            values = values[None]
        if values.ndim == 3 and self.layout.raw_audio and values.shape[1] == 1:
            values = values[:, 0]  # [B, 1, S] (OmniASR's feature extractor)
        mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
        mask = np.ones(values.shape[:2], np.int64) if mask is None else np.asarray(mask, dtype=np.int64)
        if mask.ndim == 1:
            mask = mask[None]
        if values.size == 0 or mask.shape != values.shape[:2]:
            raise ValueError(f"generate() got inputs of shape {values.shape} and a mask of shape {mask.shape}.")
        lengths = mask.sum(-1)
        if any(not row[: int(n)].all() for row, n in zip(mask, lengths)) or (lengths == 0).any():
            raise ValueError("generate() expects right-padded inputs (attention_mask = 1s then 0s, at least one 1).")
        frames = self.output_lengths(lengths)
        if runtime == "pytorch":
            with torch.no_grad():
                logits = self.model(torch.from_numpy(values), torch.from_numpy(mask)).numpy()
        elif runtime == "compiled":
            rows = [v[: int(n)] for v, n in zip(values, lengths)]
            logits = self._run_padded(rows)
        else:
            raise ValueError(f"runtime must be 'compiled' or 'pytorch'; got {runtime!r}.")
        return {"logits": logits[:, : int(frames.max())], "logit_lengths": frames.astype(np.int64)}

    def _run_padded(self, rows: list[np.ndarray]) -> np.ndarray:
        """Run unpadded inputs together on the smallest compiled shape that fits; `[len(rows), frames, V]`."""
        longest = max(len(r) for r in rows)
        seq = self._fit(longest)
        outputs, start = [], 0
        for used, batch in plan_batches(len(rows), self.compiled_batch_sizes):
            chunk = rows[start : start + used]
            shape = (batch, seq, *chunk[0].shape[1:])
            values = np.zeros(shape, np.float32)
            mask = np.zeros((batch, seq), np.int64)
            for i, row in enumerate(chunk):
                values[i, : len(row)] = row
                mask[i, : len(row)] = 1
            mask[used:, : min(seq, longest)] = 1  # filler rows: a valid clip of zeros, discarded
            out = self.program.run({self.layout.name: values, "attention_mask": mask})[self.output_name]
            outputs.append(out[:used])
            start += used
        return np.concatenate(outputs)

    def _fit(self, longest: int) -> int:
        """The compiled length to pad `longest` input steps to; a clear error when none holds it."""
        if self.dynamic_seq_len:
            return longest
        seq = smallest_fit(longest, self.compiled_seq_lens)
        if seq is None:
            largest = max(self.compiled_seq_lens)
            rate = self.sampling_rate
            clip_s, max_s = self._samples_of_steps(longest) / rate, self._samples_of_steps(largest) / rate
            unit = "samples" if self.layout.raw_audio else "feature frames"
            raise ValueError(
                f"Audio of {clip_s:.2f} s ({longest} {unit}) is longer than the largest compiled length {max_s:.2f} s "
                f"({largest} {unit}). Compile a longer one (model.compile(audio_len=[..., {np.ceil(clip_s):.0f}.0])), "
                "or cut the audio into windows (QEfficient.transformers.audio.windows) and transcribe each."
            )
        return seq

    def logits(
        self,
        audio: AudioLike | Sequence[AudioLike],
        sampling_rate: int | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """CTC logits of a clip (`[frames, vocab]`) or of a list of clips (a list of them), on the compiled
        program: HF's logits for each clip alone.

        A clip is a WAV path or a 1-D array of samples (list, numpy, torch) at `sampling_rate` (default: the
        model's rate, 16 kHz for wav2vec2), resampled when it differs. Clips are sorted by length and run
        `batch_size` at a time (default: the largest compiled batch size) on the smallest compiled length that fits.
        Compiles with the defaults if the model is not compiled yet.
        """
        single = _is_single_clip(audio)
        inputs = self.prepare(audio, sampling_rate)
        if self._program is None:
            self.compile(batch_size=batch_size or 1)
        batch_size = batch_size or max(self.compiled_batch_sizes)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        shortest = self.min_input_steps
        for i, row in enumerate(inputs):
            try:
                if len(row) < shortest:
                    unit = "samples" if self.layout.raw_audio else "feature frames"
                    raise ValueError(
                        f"Audio of {len(row)} {unit} is too short for {self.model_name}: it needs at least {shortest} "
                        f"{unit} (one output frame of its feature encoder)."
                    )
                self._fit(len(row))
            except ValueError as exc:
                if single:
                    raise
                raise ValueError(f"Clip {i} of {len(inputs)}: {exc}") from None
        frames = self.output_lengths([len(r) for r in inputs])
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
        results: list[np.ndarray] = [np.empty(0)] * len(inputs)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out = self._run_padded([inputs[i] for i in chunk])
            for i, row in zip(chunk, out):
                results[i] = row[: int(frames[i])]
        return results[0] if single else results

    def transcribe(
        self,
        audio: AudioLike | Sequence[AudioLike],
        processor: Any = None,
        sampling_rate: int | None = None,
        batch_size: int | None = None,
    ) -> list[str]:
        """Text of each clip: greedy CTC decoding (argmax per frame, then the processor's `batch_decode`, which
        merges repeats and drops the blank), as HF's wav2vec2 examples do. One string per clip, also for one clip.

        `processor` is a HF processor or CTC tokenizer (anything with `batch_decode`); default: the one found
        with the model. Clips as in `logits`.
        """
        decoder = processor or self.processor or self.tokenizer
        if decoder is None or not hasattr(decoder, "batch_decode"):
            raise ValueError(
                "transcribe() needs a processor or CTC tokenizer to turn ids into text, and none was found with the "
                "model; pass processor= (e.g. Wav2Vec2Processor.from_pretrained(path)) or call logits()."
            )
        result = self.logits(audio, sampling_rate=sampling_rate, batch_size=batch_size)
        rows = [result] if isinstance(result, np.ndarray) else result
        ids = [row.argmax(-1).tolist() for row in rows]
        return list(decoder.batch_decode(ids))


def _is_single_clip(audio: Any) -> bool:
    """A path or a 1-D array/tensor/list of numbers is one clip; a list of those is several."""
    if isinstance(audio, (str, os.PathLike)):
        return True
    if hasattr(audio, "shape"):
        return len(audio.shape) <= 1 or (len(audio.shape) == 2 and not isinstance(audio, (list, tuple)))
    if isinstance(audio, (list, tuple)):
        return len(audio) > 0 and all(isinstance(x, (int, float, np.number)) for x in audio)
    return True


def _as_clips(audio: Any) -> list[Any]:
    if _is_single_clip(audio):
        return [audio]
    clips = list(audio)
    if not clips:
        raise AudioInputError("Got an empty list of clips; pass a clip (WAV path or 1-D samples) or a list of them.")
    return clips


def _load_processor(source: str | os.PathLike, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """(processor, feature extractor) saved with a model, each None when absent."""
    from transformers import AutoFeatureExtractor, AutoProcessor

    from QEfficient.transformers.loading import local_then_hub, resolve_model_source

    try:
        path, is_local = resolve_model_source(source)
    except OSError:
        return None, None
    extra = {k: kwargs[k] for k in ("revision", "trust_remote_code") if k in kwargs}
    processor = feature_extractor = None
    files = ("preprocessor_config.json", "processor_config.json")
    has_fe = not is_local or any((Path(path) / name).exists() for name in files)
    if has_fe:
        try:
            processor = local_then_hub(lambda **e: AutoProcessor.from_pretrained(path, **extra, **e), path, is_local)
        except Exception as exc:  # noqa: BLE001 - e.g. a feature extractor without a tokenizer
            logger.info("No processor with %s (%s).", source, str(exc).splitlines()[0] if str(exc) else exc)
        if not hasattr(processor, "feature_extractor"):
            feature_extractor = processor if hasattr(processor, "sampling_rate") else None
            processor = None
            if feature_extractor is None:
                try:
                    feature_extractor = local_then_hub(
                        lambda **e: AutoFeatureExtractor.from_pretrained(path, **extra, **e), path, is_local
                    )
                except Exception as exc:  # noqa: BLE001
                    logger.info("No feature extractor with %s (%s).", source, exc)
        else:
            feature_extractor = processor.feature_extractor
    return processor, feature_extractor
