"""Time to first token with and without prefix caching, on `qeff serve` as users run it.

The workload is a chat application's: every request carries the same long system prompt (a few hundred tokens of
QEfficient/generation/eval_text.py) and a different short question. The server runs twice, with prefix caching (the
default) and with `--no-prefix-caching`. Each run sends the same requests one at a time (streamed, greedy,
`max_tokens` 8) and measures TTFT, from sending to the first content chunk. The first request of each run fills the
cache and is reported apart. The answers of the two runs must be equal.

    python benchmarks/bench_prefix_cache.py [--requests 20] [--system-words 400] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from QEfficient.cli.bench_serve import cpu_line
from QEfficient.generation.eval_text import EVAL_TEXT
from QEfficient.serving.process import ServerProcess, free_port

QUESTIONS = [
    "Summarise this in one sentence.",
    "What is the main topic?",
    "Name one person mentioned.",
    "Give the text a title.",
    "Is the tone formal or informal?",
    "List two key words.",
    "What happens first?",
    "Who is the audience?",
]


def ask(client: httpx.Client, url: str, messages: list[dict], max_tokens: int) -> tuple[float, str, int]:
    """(TTFT in seconds, answer, cached prompt tokens) of one streamed greedy chat request."""
    body = {"messages": messages, "temperature": 0, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start, first, text, cached = time.perf_counter(), None, "", 0
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if chunk.get("usage"):
                cached = chunk["usage"]["prompt_tokens_details"]["cached_tokens"]
            for choice in chunk["choices"]:
                piece = choice["delta"].get("content")
                if piece:
                    first = first or time.perf_counter()
                    text += piece
    return (first or time.perf_counter()) - start, text, cached


def run(model: str | None, requests: int, system_words: int, max_tokens: int, prompt_len: int) -> str:
    system = " ".join(EVAL_TEXT.split()[:system_words])
    conversations = [
        [{"role": "system", "content": system}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + f" ({i})"}]
        for i in range(requests + 1)
    ]
    results = {}
    logs = Path(tempfile.mkdtemp(prefix="qeff-bench-prefix-"))
    for caching in (True, False):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "QEfficient.cli.main", "serve", "--port", str(port), "--ctx-len", "1024",
                   "--prompt-len", str(prompt_len), *(["--model", model] if model else []),
                   *([] if caching else ["--no-prefix-caching"])]  # fmt: skip
        server = ServerProcess("qeff serve", command, logs / f"serve-{caching}.log")
        try:
            server.wait_ready(f"{url}/health", 900)
            with httpx.Client(timeout=300, trust_env=False) as client:
                runs = [ask(client, url, messages, max_tokens) for messages in conversations]
        finally:
            server.stop()
        results[caching] = runs
    with_cache, without = results[True], results[False]
    if [r[1] for r in with_cache] != [r[1] for r in without]:
        raise AssertionError("The answers with and without prefix caching differ.")
    ttft_on = [r[0] for r in with_cache[1:]]
    ttft_off = [r[0] for r in without[1:]]
    cached = statistics.median(r[2] for r in with_cache[1:])
    median_on, median_off = statistics.median(ttft_on), statistics.median(ttft_off)
    lines = [
        f"## Prefix caching: TTFT of {requests} chats sharing a {system_words}-word system prompt "
        f"(prefill chunk {prompt_len}, max_tokens {max_tokens})",
        "",
        cpu_line(),
        "",
        "| qeff serve | first request (fills the cache) | TTFT median | TTFT max | cached prompt tokens (median) |",
        "|---|---:|---:|---:|---:|",
        f"| prefix caching (default) | {with_cache[0][0] * 1000:.0f} ms | {median_on * 1000:.0f} ms | "
        f"{max(ttft_on) * 1000:.0f} ms | {cached:.0f} |",
        f"| `--no-prefix-caching` | {without[0][0] * 1000:.0f} ms | {median_off * 1000:.0f} ms | "
        f"{max(ttft_off) * 1000:.0f} ms | 0 |",
        "",
        f"TTFT median {median_off / median_on:.1f}x lower with prefix caching; answers equal in both runs.",
        f"command: python {' '.join(sys.argv)}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="qeff serve --model (default SmolLM2-135M-Instruct)")
    parser.add_argument("--requests", type=int, default=20, help="requests per run after the first (default 20)")
    parser.add_argument("--system-words", type=int, default=400, help="words of the shared system prompt")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64, help="prefill chunk length (qeff serve --prompt-len)")
    args = parser.parse_args()
    print(run(args.model, args.requests, args.system_words, args.max_tokens, args.prompt_len))


if __name__ == "__main__":
    main()
