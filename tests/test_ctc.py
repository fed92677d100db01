"""`QEFFAutoModelForCTC`: tiny random CTC models (built from config classes, saved with a character tokenizer and a
feature extractor) against HF: logits, smallest-fit lengths, transcripts, and bad input."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCTC,
    HubertConfig,
    ParakeetCTCConfig,
    ParakeetFeatureExtractor,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Processor,
    WavLMConfig,
)

from QEfficient import QEFFAutoModelForCTC
from QEfficient.transformers.audio import AudioInputError, load_audio

ATOL = 1e-4
RATE = 16000
CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"
VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: i + 5 for i, c in enumerate(CHARS)}}
TINY = dict(
    vocab_size=len(VOCAB),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    pad_token_id=0,
)


def clip(samples: int, seed: int) -> np.ndarray:
    """A deterministic 'speech-like' clip: two glides and noise, in [-1, 1]."""
    t = np.arange(samples) / RATE
    rng = np.random.default_rng(seed)
    tone = 0.3 * np.sin(2 * np.pi * (180 + 40 * seed + 300 * t) * t) + 0.2 * np.sin(2 * np.pi * 900 * t)
    return (tone + 0.1 * rng.standard_normal(samples)).astype(np.float32)


def save_tiny_ctc(folder: Path, config, attention_mask: bool) -> tuple[Path, torch.nn.Module, Wav2Vec2Processor]:
    """A tiny random CTC model with a character tokenizer and a wav2vec2 feature extractor, saved in `folder`."""
    torch.manual_seed(0)
    model = AutoModelForCTC.from_config(config).eval()
    with torch.no_grad():  # a wide head: the argmax moves between characters, so transcripts are not empty
        model.lm_head.weight.normal_(0.0, 2.0)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=RATE, return_attention_mask=attention_mask)
    processor = Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="module")
def tiny_ctc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module, Wav2Vec2Processor]]:
    root = tmp_path_factory.mktemp("tiny_ctc")
    return {
        # wav2vec2-base style: GroupNorm feature encoder, the feature extractor returns no attention mask
        "wav2vec2": save_tiny_ctc(root / "wav2vec2", Wav2Vec2Config(**TINY), attention_mask=False),
        # wav2vec2-large-lv60 style: LayerNorm feature encoder and stable layer norm, with an attention mask
        "wav2vec2-layer": save_tiny_ctc(
            root / "wav2vec2-layer",
            Wav2Vec2Config(**TINY, feat_extract_norm="layer", do_stable_layer_norm=True),
            attention_mask=True,
        ),
        "hubert": save_tiny_ctc(root / "hubert", HubertConfig(**TINY), attention_mask=False),
        "wavlm": save_tiny_ctc(root / "wavlm", WavLMConfig(**TINY, num_buckets=16), attention_mask=False),
    }


def hf_logits(model: torch.nn.Module, processor: Wav2Vec2Processor, audio: np.ndarray) -> np.ndarray:
    """HF's logits for one clip, through HF's own processor, unpadded."""
    inputs = processor(audio, sampling_rate=RATE, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits[0].numpy()


@pytest.mark.parametrize("name", ["wav2vec2", "wav2vec2-layer", "hubert", "wavlm"])
def test_logits_match_hf_for_two_lengths_and_a_batch(tiny_ctc, name: str) -> None:
    folder, hf, processor = tiny_ctc[name]
    model = QEFFAutoModelForCTC.from_pretrained(folder)
    assert model.processor is not None and model.layout.name == "input_values"
    model.compile(audio_len=[4000, 0.5], batch_size=[1, 2])  # samples and seconds
    assert model.compiled_seq_lens == [4000, 8000] and model.graph_holds_any_shape
    clips = [clip(2345, 1), clip(7321, 2), clip(4000, 3)]
    expected = [hf_logits(hf, processor, c) for c in clips]
    for c, e in zip(clips, expected):  # one at a time: each on its own smallest length
        got = model.logits(c)
        assert got.shape == e.shape
        assert np.max(np.abs(got - e)) < ATOL
    batch = model.logits(clips)  # a batch of 2 and one of 1, each padded to the longest's length
    assert [b.shape for b in batch] == [e.shape for e in expected]
    assert max(float(np.max(np.abs(b - e))) for b, e in zip(batch, expected)) < ATOL
    if processor.feature_extractor.return_attention_mask:  # HF on a padded batch with its mask: the same numbers
        inputs = processor(clips, sampling_rate=RATE, return_tensors="pt", padding=True)
        with torch.no_grad():
            padded = hf(**inputs).logits.numpy()
        for b, p in zip(batch, padded):
            assert np.max(np.abs(b - p[: len(b)])) < ATOL


def test_smallest_fit_and_output_lengths(tiny_ctc) -> None:
    folder, hf, processor = tiny_ctc["wav2vec2"]
    model = QEFFAutoModelForCTC.from_pretrained(folder)
    model.compile(audio_len=[8000, 2000, 4000])
    assert model.compiled_seq_lens == [2000, 4000, 8000]
    assert model.compiled_audio_seconds == [0.125, 0.25, 0.5]
    assert [model._fit(n) for n in (1, 2000, 2001, 4000, 7999)] == [2000, 2000, 4000, 4000, 8000]
    lengths = [400, 2345, 8000]
    np.testing.assert_array_equal(
        model.output_lengths(lengths), hf._get_feat_extract_output_lengths(torch.tensor(lengths))
    )
    out = model.generate(
        processor(
            [clip(1000, 4), clip(3000, 5)],
            sampling_rate=RATE,
            padding=True,
            return_attention_mask=True,
            return_tensors="np",
        )
    )
    assert out["logits"].shape[:2] == (2, 9) and out["logit_lengths"].tolist() == [2, 9]


def test_transcribe_equals_hf_argmax_and_decode(tiny_ctc) -> None:
    folder, hf, processor = tiny_ctc["wav2vec2"]
    model = QEFFAutoModelForCTC.from_pretrained(folder)
    model.compile(audio_len=[8000, 16000], batch_size=2)
    clips = [clip(12000, 6), clip(5000, 7), clip(9000, 8)]
    expected = processor.batch_decode([hf_logits(hf, processor, c).argmax(-1) for c in clips])
    assert model.transcribe(clips) == expected
    assert any(text for text in expected)  # the tiny head spells something
    assert model.transcribe(clips[0]) == expected[:1]  # one clip: a list of one string
    assert model.transcribe(clips[1:], processor=processor.tokenizer) == expected[1:]


def test_wav_files_and_sampling_rates(tiny_ctc, tmp_path: Path) -> None:
    folder, hf, processor = tiny_ctc["hubert"]
    model = QEFFAutoModelForCTC.from_pretrained(folder)
    model.compile(audio_len=[1.0], batch_size=1)
    slow = clip(5000, 9)  # recorded at 8 kHz
    resampled = load_audio(slow, sampling_rate=8000)
    assert len(resampled) == 10000
    expected = hf_logits(hf, processor, resampled)
    assert np.max(np.abs(model.logits(slow, sampling_rate=8000) - expected)) < ATOL
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as writer:  # the same clip as a 16-bit 8 kHz WAV file: its rate is in the header
        writer.setnchannels(1), writer.setsampwidth(2), writer.setframerate(8000)
        writer.writeframes(np.round(slow * 32767).astype("<i2").tobytes())
    from_file = model.logits(str(path))
    assert from_file.shape == expected.shape
    assert np.max(np.abs(from_file - hf_logits(hf, processor, load_audio(path)))) < ATOL
    assert model.transcribe([path, slow], sampling_rate=8000) == processor.batch_decode(
        [hf_logits(hf, processor, load_audio(path)).argmax(-1), expected.argmax(-1)]
    )


def test_bad_input(tiny_ctc) -> None:
    folder, _, _ = tiny_ctc["wav2vec2"]
    model = QEFFAutoModelForCTC.from_pretrained(folder)
    model.compile(audio_len=[4000, 8000])
    with pytest.raises(
        ValueError,
        match=r"0.56 s \(9000 samples\) is longer than the largest compiled length 0.50 s "
        r"\(8000 samples\). Compile a longer one.*windows",
    ):
        model.logits(clip(9000, 1))
    with pytest.raises(ValueError, match="Clip 1 of 2: Audio of"):
        model.transcribe([clip(1000, 1), clip(9000, 2)])
    assert model.min_input_steps == 400  # the first convolution's kernel
    with pytest.raises(ValueError, match="Audio of 399 samples is too short for Wav2Vec2ForCTC: it needs at least 400"):
        model.logits(clip(399, 1))
    with pytest.raises(AudioInputError, match=r"shape \(2, 3000\).*audio.mean\(axis=0\)"):
        model.logits(np.zeros((2, 3000), np.float32))
    with pytest.raises(AudioInputError, match="NaN"):
        model.logits(np.full(3000, np.nan, np.float32))
    with pytest.raises(AudioInputError, match="empty"):
        model.transcribe([])
    with pytest.raises(ValueError, match="audio_len .* or seq_len"):
        model.compile(audio_len=[1.0], seq_len=[100])
    bare = QEFFAutoModelForCTC.from_pretrained(folder, processor=None, feature_extractor=None, tokenizer=None)
    bare.processor = bare.tokenizer = None
    with pytest.raises(ValueError, match="needs a processor or CTC tokenizer"):
        bare.transcribe(clip(3000, 1))
    from transformers import BertConfig, BertForMaskedLM

    with pytest.raises(ValueError, match="not a CTC speech model"):
        QEFFAutoModelForCTC(
            BertForMaskedLM(
                BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
            )
        )


def test_feature_frames_model(tmp_path: Path) -> None:
    """Parakeet takes log-mel frames (input_features): audio lengths become frames through its feature extractor."""
    config = ParakeetCTCConfig(
        vocab_size=len(VOCAB),
        encoder_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            subsampling_conv_channels=16,
            num_mel_bins=80,
        ),
    )
    torch.manual_seed(0)
    hf = AutoModelForCTC.from_config(config).eval()
    hf.save_pretrained(tmp_path)
    extractor = ParakeetFeatureExtractor()
    extractor.save_pretrained(tmp_path)
    model = QEFFAutoModelForCTC.from_pretrained(tmp_path)
    assert model.layout.name == "input_features" and model.layout.feature_size == 80
    model.compile(audio_len=[0.5, 1.0], batch_size=[1, 2])
    clips = [clip(5000, 1), clip(14000, 2)]
    for c, got in zip(clips, model.logits(clips)):
        inputs = extractor(c, sampling_rate=RATE, return_tensors="pt")
        with torch.no_grad():
            expected = hf(**inputs).logits[0].numpy()
        assert got.shape == expected.shape and np.max(np.abs(got - expected)) < ATOL


def test_unfold_exports_with_a_dynamic_length() -> None:
    """`Tensor.unfold` (Granite Speech 5's frame pooling) keeps a dynamic length in the exported graph."""
    import io

    import onnxruntime as ort

    from QEfficient.base.onnx_symbolics import register_symbolics

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.unfold(1, 2, 2).mean(-1) + x.unfold(-1, 3, 1).sum(-1).sum(-1, keepdim=True)[:, :1]

    register_symbolics(17)
    buffer = io.BytesIO()
    torch.onnx.export(
        Pool(),
        (torch.randn(2, 10, 6),),
        buffer,
        input_names=["x"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"x": {0: "b", 1: "t", 2: "f"}},
    )
    session = ort.InferenceSession(buffer.getvalue())
    for shape in [(2, 10, 6), (3, 17, 5), (1, 4, 9)]:
        x = torch.randn(shape)
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], Pool()(x).numpy(), atol=1e-5)


def test_dynamic_length_and_validate_cli(tiny_ctc, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder, hf, processor = tiny_ctc["wavlm"]
    model = QEFFAutoModelForCTC.from_pretrained(folder)
    model.compile(audio_len="dynamic", batch_size=2)
    assert model.dynamic_seq_len and model.compiled_audio_seconds == [float("inf")]
    clips = [clip(20000, 1), clip(3000, 2)]
    for got, c in zip(model.logits(clips), clips):
        assert np.max(np.abs(got - hf_logits(hf, processor, c))) < ATOL

    from QEfficient.cli.main import main

    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1), writer.setsampwidth(2), writer.setframerate(RATE)
        writer.writeframes(np.round(clip(6000, 3) * 32767).astype("<i2").tobytes())
    assert main(["validate", "--model", str(folder), "--audio", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Validation of WavLMForCTC (tolerance 0.0001 absolute)" in out and "overall: PASS" in out
