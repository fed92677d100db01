"""The serving engine: concurrent requests from an asyncio server, batched continuously on one compiled program.

One thread owns the program and its KV cache of `full_batch_size` rows and runs the scheduler loop:

1. take new requests into a bounded waiting queue, and drop cancelled ones (their rows are freed at once);
2. place the oldest waiting request in a free row (`PrefixCache`: a row that already holds its prompt's prefix, or
   the least recently used one) and prefill it, one chunk of `prefill_seq_len` tokens per loop turn, so that the
   running requests keep decoding between the chunks of a long prompt;
3. run one decode step over every running row; each row picks its token with its own settings (greedy or sampled,
   penalties, a grammar), and a request that ends frees its row for the next waiting one.

Results go back to the event loop through each request's `RequestStream`. A request's greedy tokens equal
`generate` on its prompt alone: prefill and decode are the same program runs `TextGenerator` makes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from QEfficient.generation.sampling import Sampler, SamplingParams, apply_penalties
from QEfficient.generation.text_generation import TextGenerator
from QEfficient.serving.metrics import ServingMetrics
from QEfficient.serving.prefix_cache import PrefixCache, copy_rows, supports_prefix_caching
from QEfficient.serving.text_stream import IncrementalText

logger = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The waiting queue is at its limit; the request was not taken (HTTP 429)."""


class EngineStopped(RuntimeError):
    """The engine was shut down, or failed; the request cannot be served."""


@dataclass
class EngineRequest:
    """One generation request as the engine takes it (the HTTP layer has checked and tokenised it)."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: Sequence[str] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    constraint: Any = None  # a `TokenConstraint` (serving/structured.py): masks logits per step
    request_id: str = ""
    adapter: int = -1  # the LoRA adapter slot the request runs on (docs/lora.md); -1: the base model


@dataclass
class RequestOutput:
    """What one engine step produced for a request: new text and token ids, and why it ended (None: it goes on).

    `finish_reason` is OpenAI's: "stop" (EOS, a stop string or a complete grammar), "length" (max_tokens or the
    context), or "abort" (cancelled, or the engine failed: `error` says why)."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None


class RequestStream:
    """The outputs of one request, as an async iterator for the event loop that submitted it."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self._loop = loop
        self._queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self.finished = False

    def put(self, output: RequestOutput) -> None:
        """From the engine thread. Nothing happens if the event loop is closed (the server is gone)."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, output)
        except RuntimeError:
            pass

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        while not self.finished:
            output = await self._queue.get()
            self.finished = output.finish_reason is not None
            yield output


@dataclass
class _Sequence:
    """A request inside the engine."""

    request: EngineRequest
    stream: RequestStream
    arrival: float
    text: IncrementalText
    sampler: Sampler
    row: int = -1
    position: int = 0  # where the next token fed to the program goes
    generated: list[int] = field(default_factory=list)
    chunks: deque[tuple[np.ndarray, np.ndarray]] = field(default_factory=deque)
    cached_tokens: int = 0
    last_token_time: float = 0.0

    @property
    def greedy(self) -> bool:
        r = self.request
        plain = not (r.presence_penalty or r.frequency_penalty or r.constraint is not None)
        return plain and not r.sampling.do_sample


class ServingEngine:
    """Serves generation requests on a compiled continuous-batching program (compiled with `full_batch_size`)."""

    def __init__(
        self,
        generator: TextGenerator,
        max_queued: int = 64,
        prefix_caching: bool = True,
        metrics: ServingMetrics | None = None,
    ) -> None:
        if not generator.full_batch_size:
            raise ValueError(
                "The serving engine needs a continuous-batching program: load the model with "
                "from_pretrained(..., continuous_batching=True) and compile(full_batch_size=N)."
            )
        if generator.tokenizer is None:
            raise ValueError("The serving engine needs the model's tokenizer.")
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1; got {max_queued}.")
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.rows = generator.full_batch_size
        self.ctx_len = generator.ctx_len
        self.max_queued = max_queued
        self.metrics = metrics or ServingMetrics()
        self.metrics.slots.set(self.rows)
        program = generator.program
        self.prefix_caching = prefix_caching and supports_prefix_caching(
            program, generator.ctx_len, generator.left_padding
        )
        self.prefix_cache = PrefixCache(
            self.rows, generator.prefill_seq_len, generator.ctx_len, enabled=self.prefix_caching
        )
        self.state = program.new_state({"batch_size": self.rows, "seq_len": 1, "full_batch_size": self.rows})
        self._lock = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._aborted: set[str] = set()
        self._stopping = False
        self.error: BaseException | None = None
        self._rows: list[_Sequence | None] = [None] * self.rows  # the request in each cache row
        self._prefilling: _Sequence | None = None
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="qeff-engine", daemon=True)

    @classmethod
    def from_program(cls, program_dir: str | Path, tokenizer: Any, **kwargs: Any) -> ServingEngine:
        """An engine on a compiled program directory alone (no PyTorch model in the process)."""
        return cls(TextGenerator.from_program(program_dir, tokenizer), **kwargs)

    # ---- the event loop's side ---------------------------------------------------------------

    def start(self) -> ServingEngine:
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop; every unfinished request ends with finish_reason "abort"."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def check(self, prompt_tokens: int, max_tokens: int | None, limit_name: str = "max_tokens") -> int:
        """The number of new tokens a request of `prompt_tokens` may ask for: `max_tokens`, or the rest of the context
        when it is None. A `ValueError` that names the numbers (and `limit_name`, the client's word for the limit)
        when the request cannot be served."""
        if prompt_tokens < 1:
            raise ValueError("The prompt has no tokens.")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"{limit_name} must be at least 1; got {max_tokens}.")
        if prompt_tokens >= self.ctx_len:
            raise ValueError(
                f"The prompt has {prompt_tokens} tokens; the context is {self.ctx_len} tokens, which must also hold at "
                "least one new token. Shorten the prompt (or serve with a larger --ctx-len)."
            )
        if max_tokens is not None and prompt_tokens + max_tokens > self.ctx_len:
            raise ValueError(
                f"The prompt has {prompt_tokens} tokens and {limit_name} is {max_tokens}: {prompt_tokens + max_tokens} "
                f"in all, more than the context of {self.ctx_len} tokens. Lower {limit_name} to at most "
                f"{self.ctx_len - prompt_tokens} or shorten the prompt."
            )
        if self.generator.single_chunk_prefill and prompt_tokens > self.generator.prefill_seq_len:
            raise ValueError(
                f"The prompt has {prompt_tokens} tokens but this model prefills a prompt in one chunk of "
                f"{self.generator.prefill_seq_len} (its recurrent state starts from zero): shorten the prompt or "
                "serve with a larger --prompt-len."
            )
        return self.ctx_len - prompt_tokens if max_tokens is None else max_tokens

    def submit(self, request: EngineRequest) -> RequestStream:
        """Queue a request; its outputs come through the returned stream (iterate it in the calling event loop).

        Raises `QueueFull` when `max_queued` requests are already waiting, `EngineStopped` when the engine is not
        running, `ValueError` when the request cannot be served (`check`).
        """
        self.check(len(request.prompt_ids), request.max_tokens)
        request.request_id = request.request_id or f"req-{next(self._ids)}"
        stream = RequestStream(request.request_id, asyncio.get_running_loop())
        sequence = _Sequence(
            request,
            stream,
            time.perf_counter(),
            IncrementalText(self.tokenizer, request.stop),
            Sampler(request.sampling),
        )
        with self._lock:
            if not self.alive:
                raise EngineStopped(f"The engine is not running{f': {self.error}' if self.error else ''}.")
            if len(self._waiting) >= self.max_queued:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (the limit is {self.max_queued}).")
            self._waiting.append(sequence)
            self.metrics.queue_depth.set(len(self._waiting))
            self._lock.notify()
        return stream

    def abort(self, request_id: str) -> None:
        """Cancel a request (its client went away): its row is freed before the next step."""
        with self._lock:
            self._aborted.add(request_id)
            self._lock.notify()

    # ---- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._next_work():
                self._admit()
                if self._prefilling is not None:
                    self._prefill_chunk()
                self._decode()
        except BaseException as exc:  # noqa: BLE001 - reported to every request, then the engine is stopped
            logger.exception("The serving engine failed")
            self.error = exc
        with self._lock:
            self._stopping = True
            pending = [s for s in self._rows if s is not None] + list(self._waiting)
            self._waiting.clear()
        message = f"The engine stopped: {self.error}" if self.error else "The server is shutting down."
        for sequence in pending:
            self._finish(sequence, "abort", error=message)

    def _next_work(self) -> bool:
        """Wait until there is something to do; drop cancelled requests. False when the engine must stop."""
        with self._lock:
            while not (self._stopping or self._aborted or self._waiting or any(self._rows)):
                self._lock.wait()
            if self._stopping:
                return False
            aborted, self._aborted = self._aborted, set()
            if aborted:
                kept = [s for s in self._waiting if s.request.request_id not in aborted]
                dropped = [s for s in self._waiting if s.request.request_id in aborted]
                self._waiting = deque(kept)
                self.metrics.queue_depth.set(len(self._waiting))
            else:
                dropped = []
        dropped += [s for s in self._rows if s is not None and s.request.request_id in aborted]
        for sequence in dropped:
            self._finish(sequence, "abort")
        return True

    def _admit(self) -> None:
        """Place the oldest waiting request in a free row and prepare its prefill chunks (one request at a time)."""
        free = [row for row, s in enumerate(self._rows) if s is None]
        if self._prefilling is not None or not free:
            return
        with self._lock:
            if not self._waiting:
                return
            sequence = self._waiting.popleft()
            self.metrics.queue_depth.set(len(self._waiting))
        prompt, adapter = sequence.request.prompt_ids, sequence.request.adapter
        placement = self.prefix_cache.place(prompt, free, adapter)
        if placement.copy_from is not None:
            copy_rows(self.state, placement.copy_from, placement.row, placement.reused)
        sequence.row, sequence.cached_tokens = placement.row, placement.reused
        self.generator.set_row_adapter(placement.row, adapter)
        ids, positions, _ = self.generator.prefill_inputs([prompt[placement.reused :]], placement.reused)
        chunk = self.generator.prefill_seq_len
        sequence.chunks = deque(
            (ids[:, c : c + chunk], positions[:, c : c + chunk]) for c in range(0, ids.shape[1], chunk)
        )
        self._rows[placement.row] = sequence
        self._prefilling = sequence
        self.metrics.running.set(sum(s is not None for s in self._rows))
        self.metrics.prompt_tokens.inc(len(prompt))
        self.metrics.prefix_hit_tokens.inc(placement.reused)

    def _prefill_chunk(self) -> None:
        sequence = self._prefilling
        ids, positions = sequence.chunks.popleft()
        logits = self.generator.step(self.state, ids, positions, np.array([[sequence.row]]))
        self.prefix_cache.written(sequence.row, ids[0][positions[0] >= 0])
        if sequence.chunks:
            return
        self._prefilling = None
        sequence.position = len(sequence.request.prompt_ids)
        self._next_token(sequence, logits[0])

    def _decode(self) -> None:
        """One decode step over every row past its prefill."""
        running = [s for s in self._rows if s is not None and s is not self._prefilling]
        if not running:
            return
        ids = np.zeros((self.rows, 1), dtype=np.int64)
        positions = np.full((self.rows, 1), -1, dtype=np.int64)
        for s in running:
            ids[s.row, 0], positions[s.row, 0] = s.generated[-1], s.position
        logits = self.generator.step(self.state, ids, positions, np.arange(self.rows).reshape(self.rows, 1))
        greedy = logits.argmax(axis=-1)
        for s in running:
            self.prefix_cache.written(s.row, [s.generated[-1]])
            s.position += 1
            self._next_token(s, logits[s.row], int(greedy[s.row]))

    def _next_token(self, sequence: _Sequence, logits: np.ndarray, argmax: int | None = None) -> None:
        """Choose a request's next token from its row of logits (`argmax`: that row's, when already known) and
        accept it. A request whose own settings fail (its grammar refuses the token) ends alone."""
        try:
            token = (argmax if argmax is not None else int(logits.argmax())) if sequence.greedy else None
            self._accept(sequence, self._choose(sequence, logits) if token is None else token)
        except ValueError as exc:
            logger.warning("Request %s failed: %s", sequence.request.request_id, exc)
            self._finish(sequence, "abort", error=str(exc))

    def _choose(self, sequence: _Sequence, logits: np.ndarray) -> int:
        """The next token of one request with its own settings: penalties, grammar, sampling."""
        r = sequence.request
        logits = apply_penalties(logits.copy(), sequence.generated, r.presence_penalty, r.frequency_penalty)
        if r.constraint is not None:
            logits = r.constraint.mask(logits)
        return int(sequence.sampler(logits[None, :])[0])

    def _accept(self, sequence: _Sequence, token: int) -> None:
        """Record a request's new token, send its text, and end the request if it is done."""
        now = time.perf_counter()
        if sequence.generated:
            self.metrics.itl.observe(now - sequence.last_token_time)
        else:
            self.metrics.ttft.observe(now - sequence.arrival)
        sequence.last_token_time = now
        sequence.generated.append(token)
        self.metrics.tokens(1)
        r = sequence.request
        reason = None
        if r.constraint is not None:
            r.constraint.accept(token)
            if r.constraint.finished:
                reason = "stop"
        if token in self.generator.eos_token_ids and not r.ignore_eos:
            reason = "stop"
        elif len(sequence.generated) >= r.max_tokens:
            reason = reason or "length"
        text = sequence.text.add(token, last=reason is not None)
        if sequence.text.stopped:
            reason = "stop"
        if reason is None:
            sequence.stream.put(RequestOutput(text, [token]))
        else:
            self._finish(sequence, reason, text, [token])

    def _finish(
        self, sequence: _Sequence, reason: str, text: str = "", tokens: Sequence[int] = (), error: str | None = None
    ) -> None:
        if sequence.row >= 0 and self._rows[sequence.row] is sequence:
            self._rows[sequence.row] = None
            self.prefix_cache.release(sequence.row)
            if self._prefilling is sequence:
                self._prefilling = None
            self.metrics.running.set(sum(s is not None for s in self._rows))
        self.metrics.finished.labels(reason).inc()
        sequence.stream.put(
            RequestOutput(
                text,
                list(tokens),
                reason,
                prompt_tokens=len(sequence.request.prompt_ids),
                completion_tokens=len(sequence.generated),
                cached_tokens=sequence.cached_tokens,
                error=error,
            )
        )
