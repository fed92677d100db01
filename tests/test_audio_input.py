"""The shared audio input module (`QEfficient.transformers.audio`): WAV files, arrays, resampling, bad input."""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from QEfficient.transformers.audio import AudioInputError, load_audio, read_wav, resample, to_samples, windows


def write_wav(path: Path, samples: np.ndarray, rate: int, width: int = 2) -> Path:
    """Write integer PCM with the stdlib `wave` module; `samples` float in [-1, 1], [n] or [n, channels]."""
    data = samples.reshape(len(samples), -1) if samples.ndim == 2 else samples.reshape(-1, 1)
    scale = {1: 127, 2: 32767, 3: 8388607, 4: 2147483647}[width]
    ints = np.round(data * scale).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = ints.reshape(-1) & 0xFFFFFF
        raw = np.stack([ints & 0xFF, (ints >> 8) & 0xFF, (ints >> 16) & 0xFF], 1).astype(np.uint8).tobytes()
    else:
        raw = ints.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(data.shape[1])
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(raw)
    return path


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_wav_pcm_widths(tmp_path: Path, width: int) -> None:
    clip = sine(440, 16000, 0.25)
    audio = load_audio(write_wav(tmp_path / f"w{width}.wav", clip, 16000, width))
    assert audio.dtype == np.float32 and audio.shape == clip.shape
    assert np.max(np.abs(audio - clip)) < 2.0 / (1 << (8 * width - 1)) + 1e-6


def test_stereo_wav_is_averaged_to_mono(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    left, right = sine(300, 16000, 0.2, 0.6), sine(700, 16000, 0.2, 0.2)
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], 1), 16000)
    with caplog.at_level(logging.INFO, logger="QEfficient.transformers.audio"):
        audio = load_audio(path)
    assert audio.shape == left.shape
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-4)
    assert "2 channels" in caplog.text and "mono" in caplog.text


def test_resampling_keeps_a_sines_frequency(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clip = sine(1000, 44100, 1.0)
    with caplog.at_level(logging.INFO, logger="QEfficient.transformers.audio"):
        from_file = load_audio(write_wav(tmp_path / "cd.wav", clip, 44100))
    assert "44100 Hz" in caplog.text and "16000 Hz" in caplog.text
    from_array = load_audio(clip, sampling_rate=44100)
    for audio in (from_file, from_array):
        assert abs(len(audio) - 16000) <= 1
        assert abs(dominant_frequency(audio, 16000) - 1000) <= 2
        assert 0.45 < float(np.max(np.abs(audio[100:-100]))) < 0.55  # amplitude kept, away from the edges
    up = load_audio(sine(1000, 8000, 0.5), sampling_rate=8000)
    assert len(up) == 8000 and abs(dominant_frequency(up, 16000) - 1000) <= 2


def test_file_rate_wins_over_a_passed_sampling_rate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_wav(tmp_path / "8k.wav", sine(500, 8000, 0.5), 8000)
    with caplog.at_level(logging.WARNING, logger="QEfficient.transformers.audio"):
        audio = load_audio(path, sampling_rate=16000)
    assert len(audio) == 8000 and "8000 Hz" in caplog.text
    assert read_wav(path)[1] == 8000


def test_arrays_lists_tensors_and_integer_types() -> None:
    clip = sine(200, 16000, 0.1)
    np.testing.assert_array_equal(load_audio(clip), clip)  # no rate given: taken to be the target rate
    np.testing.assert_allclose(load_audio(clip.tolist(), sampling_rate=16000), clip, atol=1e-7)
    np.testing.assert_allclose(load_audio(torch.from_numpy(clip.astype(np.float64))), clip, atol=1e-7)
    ints = np.round(clip * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(ints), clip, atol=1e-4)
    assert load_audio(np.array([0, 255], np.uint8)).tolist() == pytest.approx([-1.0, 127 / 128])


def test_float_wav_through_scipy(tmp_path: Path) -> None:
    from scipy.io import wavfile

    clip = sine(440, 22050, 0.3)
    wavfile.write(tmp_path / "float.wav", 22050, clip)
    audio = load_audio(tmp_path / "float.wav")
    assert abs(len(audio) - int(0.3 * 16000)) <= 1 and abs(dominant_frequency(audio, 16000) - 440) <= 5


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros(0, np.float32), "empty"),
        ([], "empty"),
        (np.array([0.1, np.nan, 0.2], np.float32), "NaN or infinite"),
        (np.array([0.1, np.inf], np.float32), "NaN or infinite"),
        (np.zeros((2, 1600), np.float32), r"shape \(2, 1600\).*audio.mean\(axis=0\)"),
        (np.zeros((1600, 2), np.float32), r"shape \(1600, 2\).*audio.mean\(axis=1\)"),
        (np.zeros((1, 1600), np.float32), r"audio.reshape\(-1\)"),
        (["a", "b"], "numeric"),
        ([0.1, [0.2, 0.3]], "1-D sequence of numbers"),
        (b"\x00\x01", "Raw bytes"),
        ({"samples": 1}, "numeric"),
        (np.float32(0.3), "single number"),
        (np.array([0.5, 3.0], np.float32), r"\[-1, 1\].*peaks at 3"),
        (np.array([True, False]), "real numbers"),
    ],
)
def test_bad_input_messages(bad: object, message: str) -> None:
    with pytest.raises(AudioInputError, match=message):
        load_audio(bad, sampling_rate=16000)


def test_bad_files_and_rates(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "notes.wav").write_text("not audio at all")
    with pytest.raises(AudioInputError, match="could not be read as a WAV file"):
        load_audio(tmp_path / "notes.wav")
    with pytest.raises(AudioInputError, match="empty"):
        load_audio(write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000))
    with pytest.raises(AudioInputError, match="sampling_rate must be a positive integer"):
        load_audio(np.zeros(10, np.float32), sampling_rate=0)
    with pytest.raises(AudioInputError, match="sampling_rate must be a positive integer"):
        load_audio(np.zeros(10, np.float32), sampling_rate=16000.0)


def test_windows_and_lengths() -> None:
    audio = np.arange(10, dtype=np.float32)
    parts = windows(audio, 4)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(windows(audio, 10)) == 1 and len(windows(audio, 100)) == 1
    with pytest.raises(AudioInputError, match="positive integer"):
        windows(audio, 0)
    with pytest.raises(AudioInputError, match="1-D"):
        windows(audio.reshape(2, 5), 4)
    assert to_samples(1.5) == 24000 and to_samples(4000) == 4000 and to_samples(0.5, 8000) == 4000
    with pytest.raises(AudioInputError, match="positive"):
        to_samples(0)
    assert resample(audio, 16000, 16000) is not None
