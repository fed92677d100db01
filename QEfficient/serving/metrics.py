"""The server's Prometheus metrics (`GET /metrics`), kept with `prometheus-client` in a registry of their own."""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds; TTFT spans queueing and prefill, inter-token latency one decode step of the shared batch.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


class ServingMetrics:
    """Counters, gauges and histograms of one server; the engine and the HTTP layer update them."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("qeff_queue_depth", "Requests waiting for a cache row", registry=r)
        self.running = Gauge(
            "qeff_running_requests", "Requests holding a cache row (prefilling or decoding)", registry=r
        )
        self.slots = Gauge("qeff_cache_rows", "Cache rows of the continuous-batching program", registry=r)
        self.prompt_tokens = Counter("qeff_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generated_tokens = Counter("qeff_generation_tokens", "Tokens generated", registry=r)
        self.prefix_hit_tokens = Counter(
            "qeff_prefix_cache_hit_tokens", "Prompt tokens whose KV came from the prefix cache", registry=r
        )
        self.tokens_per_s = Gauge(
            "qeff_generation_tokens_per_second", f"Tokens generated per second over the last {window_s:g} s", registry=r
        )
        self.tokens_per_s.set_function(self._rate)
        self.ttft = Histogram(
            "qeff_time_to_first_token_seconds", "Arrival to first token", buckets=TTFT_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "qeff_inter_token_latency_seconds", "Time between two tokens of a request", buckets=ITL_BUCKETS, registry=r
        )
        self.requests = Counter(
            "qeff_requests", "HTTP requests by route and status code", ["route", "status"], registry=r
        )
        self.finished = Counter(
            "qeff_finished_requests", "Generation requests by how they ended", ["finish_reason"], registry=r
        )
        self._window = window_s
        self._recent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def tokens(self, count: int) -> None:
        """`count` tokens were generated now."""
        self.generated_tokens.inc(count)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, count))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self._window:
            self._recent.popleft()

    def _rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(count for _, count in self._recent) / self._window

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
