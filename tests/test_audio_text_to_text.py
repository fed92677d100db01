"""Decoder-only audio LLMs (`QEFFAutoModelForAudioTextToText`) against HF `generate`, on a tiny Qwen3-ASR saved with a
real processor.

The model is built from config classes in code (no download): Qwen3-ASR's audio encoder and a Qwen3 language model over
the BERT tokenizer of all-MiniLM-L6-v2 with Qwen3-ASR's three audio tokens added, and a Qwen3ASRProcessor (its own
feature extractor) with a small chat template. The other audio LLMs (Voxtral, Granite Speech, OmniASR, VibeVoice-ASR)
are checked by the sweep (`qeff sweep --task speech-seq2seq`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, Qwen3ASRFeatureExtractor, Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor

from QEfficient import QEFFAutoModelForAudioTextToText, QEFFAutoModelForSpeechSeq2Seq
from QEfficient.sweep.tiny_configs import tiny_config
from QEfficient.utils.default_models import default_embedding_model

AUDIO_TOKENS = {
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'audio' %}"
    "<|audio_start|><|audio_pad|><|audio_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
GENERATION_LEN = 10
RATE = 16000


def tiny_qwen3_asr_processor() -> Qwen3ASRProcessor:
    tokenizer = AutoTokenizer.from_pretrained(default_embedding_model(), extra_special_tokens=AUDIO_TOKENS)
    return Qwen3ASRProcessor(
        feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def tiny_qwen3_asr(processor: Qwen3ASRProcessor) -> Qwen3ASRForConditionalGeneration:
    tokenizer = processor.tokenizer
    config = tiny_config(
        "qwen3_asr",
        audio_config={"output_dim": 64},  # the encoder projects to the tiny text width
        text_config={"vocab_size": len(tokenizer)},
        audio_token_id=processor.audio_token_id,
    )
    torch.manual_seed(0)
    return Qwen3ASRForConditionalGeneration(config).eval()


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


@pytest.fixture(scope="module")
def qwen3_asr(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    processor = tiny_qwen3_asr_processor()
    model = tiny_qwen3_asr(processor)
    folder = tmp_path_factory.mktemp("tiny-qwen3-asr")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    qeff = QEFFAutoModelForSpeechSeq2Seq.from_pretrained(folder)  # hands an audio LLM to the audio-text class
    qeff.compile(audio_seconds=1.0, prefill_seq_len=16, ctx_len=64)
    return model, processor, qeff


def hf_answer(model, processor, audio: np.ndarray, prompt: str) -> list[int]:  # noqa: ANN001
    """HF `generate` (greedy) on the processor's inputs for one chat prompt with its clip."""
    content = [{"type": "audio"}, {"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=[text], audio=[audio], return_tensors="pt")
    inputs.pop("token_type_ids", None)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=GENERATION_LEN, min_new_tokens=GENERATION_LEN, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_speech_seq2seq_loads_an_audio_llm_as_audio_text_to_text(qwen3_asr) -> None:  # noqa: ANN001
    _, _, qeff = qwen3_asr
    assert isinstance(qeff, QEFFAutoModelForAudioTextToText)
    assert qeff.language.model.merge_into_embeddings  # Qwen3-ASR's forward takes no precomputed features


def test_greedy_tokens_equal_hf_generate(qwen3_asr) -> None:  # noqa: ANN001
    model, processor, qeff = qwen3_asr
    for seed, prompt in enumerate(["transcribe this", "what language is it"]):
        audio = clip(1.0, seed)
        out = qeff.generate(audio=audio, prompts=prompt, generation_len=GENERATION_LEN)
        assert out.generated_ids[0] == hf_answer(model, processor, audio, prompt)
        assert out.perf_metrics.vision_s > 0  # the audio encoder program ran


def test_batch_of_prompts_each_with_its_clip(qwen3_asr) -> None:  # noqa: ANN001
    model, processor, qeff = qwen3_asr
    clips = [clip(1.0, 7), clip(1.0, 8)]
    prompts = ["first", "second one"]
    out = qeff.generate(audio=clips, prompts=prompts, generation_len=GENERATION_LEN)
    for audio, prompt, ids in zip(clips, prompts, out.generated_ids):
        assert ids == hf_answer(model, processor, audio, prompt)


def test_a_clip_of_another_length_is_refused_with_the_length_to_compile(qwen3_asr) -> None:  # noqa: ANN001
    _, _, qeff = qwen3_asr
    with pytest.raises(ValueError, match=r"audio_seconds"):
        qeff.generate(audio=clip(2.5), prompts="transcribe", generation_len=4)


def test_bad_audio_and_prompts_get_clear_errors(qwen3_asr) -> None:  # noqa: ANN001
    _, _, qeff = qwen3_asr
    with pytest.raises(ValueError, match="no audio token"):
        qeff.generate(audio=clip(1.0), prompts="no placeholder here", chat=False, generation_len=4)
    with pytest.raises(ValueError, match="empty"):
        qeff.generate(audio=np.zeros(0, dtype=np.float32), prompts="transcribe", generation_len=4)
    with pytest.raises(ValueError, match="2-D|mono|channels"):
        qeff.generate(audio=np.zeros((2, RATE), dtype=np.float32), prompts="transcribe", generation_len=4)


def test_single_program_and_continuous_batching_give_hf_tokens(qwen3_asr, tmp_path) -> None:  # noqa: ANN001
    """kv_offload=False (the audio encoder inside the prefill graph) and continuous batching (three prompts on two
    cache rows) give HF's tokens too."""
    model, processor, _ = qwen3_asr
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    single = QEFFAutoModelForAudioTextToText.from_pretrained(tmp_path, kv_offload=False)
    single.compile(audio_seconds=1.0, prefill_seq_len=32, ctx_len=64)
    audio = clip(1.0, 3)
    out = single.generate(audio=audio, prompts="hello", generation_len=GENERATION_LEN)
    assert out.generated_ids[0] == hf_answer(model, processor, audio, "hello")

    batched = QEFFAutoModelForAudioTextToText.from_pretrained(tmp_path, continuous_batching=True)
    batched.compile(audio_seconds=1.0, prefill_seq_len=16, ctx_len=64, full_batch_size=2)
    clips, prompts = [clip(1.0, s) for s in (4, 5, 6)], ["a", "b c", "d e f"]
    out = batched.generate(audio=clips, prompts=prompts, generation_len=GENERATION_LEN)
    assert out.generated_ids == [hf_answer(model, processor, a, p) for a, p in zip(clips, prompts)]


def test_qeff_transcribe_says_an_audio_llm_takes_prompts(qwen3_asr, tmp_path, capsys) -> None:  # noqa: ANN001
    from QEfficient.cli.main import main
    from tests.test_audio_input import write_wav

    model, processor, _ = qwen3_asr
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    wav = tmp_path / "clip.wav"
    write_wav(wav, clip(1.0), RATE)
    assert main(["transcribe", "--model", str(tmp_path / "model"), str(wav)]) == 2
    assert "is an audio LLM" in capsys.readouterr().err


def test_validate_an_audio_llm(qwen3_asr, tmp_path) -> None:  # noqa: ANN001
    """`qeff validate` on an audio LLM's folder: HF generate, the audio program and the language program agree."""
    from QEfficient.cli.main import main
    from QEfficient.validation import validate_speech_seq2seq

    model, processor, _ = qwen3_asr
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    report = validate_speech_seq2seq(str(tmp_path), generation_len=8)
    assert [s.stage for s in report.stages] == ["HF generate", "audio program", "language program"]
    assert all(s.passed for s in report.stages), report
    assert main(["validate", "--model", str(tmp_path)]) == 0


def test_qeff_infer_audio(qwen3_asr, tmp_path, capsys) -> None:  # noqa: ANN001
    """`qeff infer --model AUDIO_LLM --audio clip.wav --prompt ...` answers with HF's greedy tokens."""
    from QEfficient.cli.main import main
    from tests.test_audio_input import write_wav

    model, processor, _ = qwen3_asr
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    audio = clip(1.0, 11)
    write_wav(tmp_path / "clip.wav", audio, RATE)
    heard = np.round(audio * 32767).astype(np.int16).astype(np.float32) / 32768  # what the 16-bit WAV holds
    expected = processor.tokenizer.decode(hf_answer(model, processor, heard, "transcribe"), skip_special_tokens=True)
    command = ["infer", "--model", str(tmp_path / "model"), "--audio", str(tmp_path / "clip.wav")]
    assert main([*command, "--prompt", "transcribe", "--generation-len", str(GENERATION_LEN), "--ctx-len", "64"]) == 0
    assert f"answer: {expected.strip()}" in capsys.readouterr().out


def test_causal_lm_class_points_an_audio_llm_to_the_speech_class(qwen3_asr, tmp_path) -> None:  # noqa: ANN001
    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.transformers.models.registry import UnsupportedModelError

    model, _, _ = qwen3_asr
    model.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="QEFFAutoModelForSpeechSeq2Seq"):
        QEFFAutoModelForCausalLM.from_pretrained(tmp_path)
