"""`qeff infer --image PATH --model VLM` and `qeff infer --audio PATH --model AUDIO_LLM`: answer prompts about images
with a vision-language model (or read them with an image-to-text encoder-decoder), or about audio with an audio LLM."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def cmd_infer_image(args: argparse.Namespace, weights: dict[str, Any], prompts: list[str]) -> int:
    """Load, compile (vision and language programs) and answer each prompt about the `--image` files."""
    from QEfficient import QEFFAutoModelForImageTextToText
    from QEfficient.utils.progress import progress

    if not args.model:
        print("qeff infer --image needs a vision-language model: --model PATH (with its processor).", file=sys.stderr)
        return 2
    if args.full_batch_size:
        print("note: --full-batch-size is not used with --image; prompts run in rounds", file=sys.stderr)
    with progress("Loading model"):
        model = QEFFAutoModelForImageTextToText.from_pretrained(args.model)
    if model.processor is None:
        print(f"No processor was found with {args.model}; save the model's processor in that folder.", file=sys.stderr)
        return 2
    from QEfficient.transformers.models.image_seq2seq import QEFFImageEncoderDecoder

    if isinstance(model, QEFFImageEncoderDecoder):  # Donut, Pix2Struct, Florence-2: each image with the prompt
        with progress("Compiling encoder and decoder programs"):
            program = model.compile(ctx_len=args.ctx_len, batch_size=args.batch_size, **weights)
        given = bool(args.prompt or getattr(args, "prompts_file", None))  # the default question is for chat models
        prompt = prompts[0] if given else None
        out = model.generate(images=list(args.image), prompts=prompt, generation_len=args.generation_len)
        for image, text, ids in zip(args.image, out.generated_texts, out.generated_ids):
            print(f"{image}: {text.strip() if text is not None else ' '.join(map(str, ids))}")  # ids without tokenizer
        print(f"{out.perf_metrics}\nprogram: {program}")
        return 0
    with progress("Compiling vision and language programs"):
        programs = model.compile(
            img_size=args.img_size,
            prefill_seq_len=args.prompt_len,
            ctx_len=args.ctx_len,
            batch_size=args.batch_size,
            num_images=len(args.image),
            **weights,
        )
    return _answer(model, list(args.image), args, prompts, programs, "vision")


def cmd_infer_audio(args: argparse.Namespace, weights: dict[str, Any], prompts: list[str]) -> int:
    """Load an audio LLM, compile its audio encoder for the first clip's length and its language program, and answer
    each prompt about the `--audio` files."""
    from QEfficient import QEFFAutoModelForAudioTextToText, QEFFAutoModelForSpeechSeq2Seq
    from QEfficient.transformers.audio import load_audio
    from QEfficient.utils.progress import progress

    if not args.model:
        print("qeff infer --audio needs an audio LLM: --model PATH (with its processor).", file=sys.stderr)
        return 2
    with progress("Loading model"):
        model = QEFFAutoModelForSpeechSeq2Seq.from_pretrained(args.model)
    if not isinstance(model, QEFFAutoModelForAudioTextToText):
        print(f"{args.model} is a speech encoder-decoder: transcribe with qeff transcribe AUDIO.wav.", file=sys.stderr)
        return 2
    if model.processor is None:
        print(f"No processor was found with {args.model}; save the model's processor in that folder.", file=sys.stderr)
        return 2
    seconds = len(load_audio(args.audio[0], target_rate=model.sampling_rate)) / model.sampling_rate
    with progress("Compiling audio and language programs"):
        programs = model.compile(
            audio_seconds=seconds,
            prefill_seq_len=args.prompt_len,
            ctx_len=args.ctx_len,
            batch_size=args.batch_size,
            **weights,
        )
    return _answer(model, [str(path) for path in args.audio], args, prompts, programs, "audio encoder")


def _answer(model: Any, media: list[Any], args: argparse.Namespace, prompts: list[str], programs: dict, encoder: str):  # noqa: ANN202
    """Answer each prompt about all of `media` (images or clips) and print the answers, timings and programs."""
    from QEfficient.cli.main import sampling_options

    out = model.generate(
        [media] * len(prompts) if len(prompts) > 1 else media,
        prompts if len(prompts) > 1 else prompts[0],
        chat=True if args.chat is None else args.chat,
        **sampling_options(args),
    )
    for prompt, text, reason in zip(prompts, out.generated_texts, out.finish_reasons):
        print(f"prompt: {prompt}\nanswer: {text.strip()}\n(stopped: {reason})\n")
    print(f"{out.perf_metrics} | {encoder} {out.perf_metrics.vision_s * 1000:.1f} ms")
    print("programs: " + ", ".join(f"{name} {path}" for name, path in programs.items()))
    return 0
