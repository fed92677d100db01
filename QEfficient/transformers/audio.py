"""Audio input for the speech models: read or accept a clip, check it, make it float32 mono at the model's rate.

`load_audio(source, sampling_rate=None, target_rate=16000)` takes a WAV file path or a 1-D array (numpy, list,
torch tensor) and returns a float32 mono array in [-1, 1] at `target_rate`:

- WAV files are read with the standard library's `wave` module (8-, 16-, 24- and 32-bit integer PCM); other
  encodings (float32/64 WAV, WAVE_FORMAT_EXTENSIBLE on Python < 3.12) go through `scipy.io.wavfile`. A file's
  rate comes from its header; several channels are averaged to mono (logged).
- Arrays must be 1-D: a 2-D array is rejected with its shape and the fix (`audio.mean(axis=0)`), since which axis
  holds the channels cannot be guessed safely. Their rate must be given as `sampling_rate=` unless it is
  `target_rate`. Integer arrays are scaled from their type's full range; float arrays are taken as they are and
  must lie in [-1, 1].
- A rate other than `target_rate` is resampled with `scipy.signal.resample_poly` (logged at INFO).

`windows(audio, window_samples)` cuts a long clip into consecutive fixed-size windows (the last one shorter).
"""

from __future__ import annotations

import logging
import os
import wave
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_SAMPLING_RATE = 16000
_PEAK_TOLERANCE = 1e-3  # float samples slightly above 1 (rounding of a resampler) are accepted, then clipped


class AudioInputError(ValueError):
    """An audio input that cannot be used: empty, non-finite, wrong shape or type, or an unknown rate."""


def load_audio(
    source: str | os.PathLike | np.ndarray | Any,
    sampling_rate: int | None = None,
    target_rate: int = DEFAULT_SAMPLING_RATE,
) -> np.ndarray:
    """A clip as a float32 mono array in [-1, 1], sampled at `target_rate` Hz.

    `source` is a WAV file path, or a 1-D sequence of samples (numpy array, list, torch tensor). For a path,
    the rate is read from the file's header (a different `sampling_rate` is ignored, with a warning). An array
    carries no rate of its own: pass `sampling_rate=` (the rate it was recorded or decoded at) unless it is
    already at `target_rate` -- without it the samples are taken to be at `target_rate`, and audio at another
    rate would then be read too fast or too slow. A clip at another rate is resampled
    (`scipy.signal.resample_poly`, logged). Raises `AudioInputError` (a `ValueError`) for an empty clip,
    NaN or infinite samples, non-numeric data, a 2-D array, float samples outside [-1, 1] or a bad rate;
    `FileNotFoundError` for a missing file.
    """
    _check_rate(target_rate, "target_rate")
    if sampling_rate is not None:
        _check_rate(sampling_rate, "sampling_rate")
    if isinstance(source, (str, os.PathLike)):
        audio, file_rate = read_wav(source)
        if sampling_rate is not None and sampling_rate != file_rate:
            logger.warning(
                "%s is sampled at %d Hz (its header); ignoring sampling_rate=%d, which applies to arrays only.",
                source,
                file_rate,
                sampling_rate,
            )
        rate = file_rate
        what = str(source)
    else:
        audio = _samples(source)
        if sampling_rate is None:
            # a bare array carries no rate of its own: without sampling_rate= it is taken to be at target_rate
            sampling_rate = target_rate
        rate = sampling_rate
        what = "the audio array"
    _check_finite(audio, what)
    if rate != target_rate:
        audio = resample(audio, rate, target_rate)
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(float32 mono samples in [-1, 1], sampling rate) of a WAV file; several channels are averaged (logged)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Audio file {path} does not exist.")
    if path.is_dir():
        raise AudioInputError(f"{path} is a directory; pass a WAV file.")
    try:
        with wave.open(str(path), "rb") as reader:
            channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
            frames = reader.readframes(reader.getnframes())
        audio = _pcm_to_float(frames, width, channels)
    except (wave.Error, EOFError) as exc:  # float WAV, WAVE_FORMAT_EXTENSIBLE (Python < 3.12), not a WAV at all
        audio, rate, channels = _read_with_scipy(path, exc)
    if audio.size == 0:
        raise AudioInputError(f"{path} holds no audio samples (an empty clip).")
    if channels > 1:
        logger.info("%s has %d channels; averaging them to mono.", path, channels)
        audio = audio.mean(axis=1)
    else:
        audio = audio.reshape(-1)
    return audio.astype(np.float32, copy=False), int(rate)


def _pcm_to_float(frames: bytes, width: int, channels: int) -> np.ndarray:
    """Interleaved integer PCM bytes -> float32 [n_frames, channels] in [-1, 1]."""
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        samples = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:  # 24-bit little-endian: widen to 32 bits (sign from the top byte), then scale
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        values = np.where(values >= 1 << 23, values - (1 << 24), values)
        samples = values.astype(np.float32) / float(1 << 23)
    elif width == 4:
        samples = (np.frombuffer(frames, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    else:
        raise AudioInputError(f"Unsupported WAV sample width of {width} bytes; use 8-, 16-, 24- or 32-bit PCM.")
    return samples.reshape(-1, channels)


def _read_with_scipy(path: Path, cause: Exception) -> tuple[np.ndarray, int, int]:
    """Read what `wave` cannot (float WAV, extensible headers) with scipy: (float [n, channels], rate, channels)."""
    try:
        from scipy.io import wavfile
    except ImportError as exc:
        raise AudioInputError(
            f"{path} is not a plain integer-PCM WAV file ({cause}); reading it needs scipy: pip install scipy."
        ) from exc
    try:
        rate, data = wavfile.read(str(path))
    except Exception as exc:  # noqa: BLE001 - whatever scipy says, the file is not a WAV we can read
        raise AudioInputError(
            f"{path} could not be read as a WAV file ({cause}; scipy: {exc}). Convert it to 16-bit PCM WAV, e.g. "
            "ffmpeg -i input -ar 16000 -ac 1 output.wav, or decode it yourself and pass the samples."
        ) from exc
    data = np.asarray(data)
    audio = _scaled(data.reshape(len(data), -1) if data.ndim else data.reshape(0, 1), str(path))
    return audio, int(rate), audio.shape[1]


def _samples(source: Any) -> np.ndarray:
    """A 1-D float array from an array, list or tensor of samples (integer types scaled from their range)."""
    if hasattr(source, "detach") and hasattr(source, "cpu"):  # a torch tensor, without importing torch
        source = source.detach().cpu().float().numpy()
    if isinstance(source, (bytes, bytearray, memoryview)):
        raise AudioInputError(
            "Raw bytes are not audio samples: pass a WAV file path, or decode the bytes (e.g. "
            "np.frombuffer(data, np.int16)) and pass the array with its sampling_rate."
        )
    try:
        array = np.asarray(source)
    except (ValueError, TypeError) as exc:  # ragged lists and the like
        raise AudioInputError(
            f"Audio must be a 1-D sequence of numbers; could not make an array of it ({exc})."
        ) from exc
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise AudioInputError(
            f"Audio must be numeric samples (a WAV path or a 1-D array of numbers); got {type(source).__name__} "
            f"of dtype {array.dtype}."
        )
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.complexfloating):
        raise AudioInputError(f"Audio samples must be real numbers; got dtype {array.dtype}.")
    if array.ndim == 0:
        raise AudioInputError("Audio must be a 1-D array of samples; got a single number.")
    if array.ndim > 1:
        squeezed = array.squeeze()
        fix = (
            "audio.reshape(-1)"
            if squeezed.ndim <= 1
            else f"audio.mean(axis={int(np.argmin(array.shape))}) to average the channels"
        )
        raise AudioInputError(
            f"Audio must be a 1-D mono array of samples; got shape {tuple(array.shape)}. Pass one channel, or mix "
            f"the channels yourself (e.g. {fix}); for a batch of clips, pass a list of 1-D arrays."
        )
    if array.size == 0:
        raise AudioInputError("The audio is empty (0 samples).")
    return _scaled(array, "the audio array").reshape(-1)


def _scaled(data: np.ndarray, what: str) -> np.ndarray:
    """Float32 samples in [-1, 1]: integer types scaled from their full range, floats checked."""
    if np.issubdtype(data.dtype, np.unsignedinteger):
        info = np.iinfo(data.dtype)
        middle = (int(info.max) + 1) / 2
        return ((data.astype(np.float64) - middle) / middle).astype(np.float32)
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        return (data.astype(np.float64) / -float(info.min)).astype(np.float32)
    audio = data.astype(np.float32)
    _check_finite(audio, what)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 1.0 + _PEAK_TOLERANCE:
        raise AudioInputError(
            f"Float audio samples must lie in [-1, 1]; {what} peaks at {peak:.4g}. Integer PCM passed as floats? "
            f"Divide by its full scale (e.g. audio / 32768 for 16-bit), or pass the integer array itself."
        )
    return audio


def _check_finite(audio: np.ndarray, what: str) -> None:
    if audio.size == 0:
        raise AudioInputError(f"{what} is empty (0 samples).")
    bad = ~np.isfinite(audio)
    if bad.any():
        first = int(np.argmax(bad.reshape(-1)))
        raise AudioInputError(
            f"{what} has {int(bad.sum())} NaN or infinite sample(s) (the first at index {first}); clean the signal "
            "first (e.g. np.nan_to_num(audio))."
        )


def _check_rate(rate: Any, name: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise AudioInputError(f"{name} must be a positive integer number of samples per second; got {rate!r}.")


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """`audio` resampled from `orig_rate` to `target_rate` Hz with `scipy.signal.resample_poly` (polyphase, with
    its anti-aliasing filter); float32."""
    if orig_rate == target_rate:
        return audio.astype(np.float32, copy=False)
    try:
        from scipy.signal import resample_poly
    except ImportError as exc:
        raise AudioInputError(
            f"The audio is sampled at {orig_rate} Hz and the model expects {target_rate} Hz; resampling needs "
            f"scipy: pip install scipy (or resample the audio to {target_rate} Hz yourself)."
        ) from exc
    logger.info("Resampling audio from %d Hz to %d Hz.", orig_rate, target_rate)
    divisor = gcd(int(orig_rate), int(target_rate))
    out = resample_poly(audio.astype(np.float64), int(target_rate) // divisor, int(orig_rate) // divisor)
    return out.astype(np.float32)


def windows(audio: np.ndarray, window_samples: int) -> list[np.ndarray]:
    """Consecutive, non-overlapping windows of `window_samples` samples covering `audio`, in order.

    Every window but the last has exactly `window_samples` samples; the last holds the rest (never empty). A clip
    no longer than one window comes back as a one-element list. Views of `audio`, not copies.
    """
    if isinstance(window_samples, bool) or not isinstance(window_samples, (int, np.integer)) or window_samples < 1:
        raise AudioInputError(f"window_samples must be a positive integer; got {window_samples!r}.")
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise AudioInputError(f"windows() takes a 1-D clip; got shape {tuple(audio.shape)}.")
    if audio.size == 0:
        raise AudioInputError("windows() got an empty clip (0 samples).")
    return [audio[start : start + window_samples] for start in range(0, audio.size, int(window_samples))]


def to_samples(seconds_or_samples: int | float, sampling_rate: int = DEFAULT_SAMPLING_RATE) -> int:
    """A length given in seconds (a float, e.g. 2.5) or in samples (an int) as a number of samples."""
    if isinstance(seconds_or_samples, bool) or not isinstance(seconds_or_samples, (int, float, np.number)):
        raise AudioInputError(f"An audio length is seconds (float) or samples (int); got {seconds_or_samples!r}.")
    if isinstance(seconds_or_samples, (float, np.floating)):
        samples = int(round(float(seconds_or_samples) * sampling_rate))
    else:
        samples = int(seconds_or_samples)
    if samples < 1:
        raise AudioInputError(f"An audio length must be positive; got {seconds_or_samples!r}.")
    return samples
