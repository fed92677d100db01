"""Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. `do_sample=False` is greedy (argmax); the other fields apply when sampling."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature} (use do_sample=False for greedy).")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it); got {self.top_k}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}.")


class Sampler:
    """Applies `SamplingParams` to a batch of logits `[B, V]`, with its own seeded random generator."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        if not self.params.do_sample:
            return logits.argmax(axis=-1)
        return np.array([self.rng.choice(len(p), p=p) for p in self.probs(logits)])

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """The distribution each row of `logits` `[N, V]` is sampled from, after temperature, top-k and top-p
        (`[N, V]`, float64, rows summing to 1). Speculative decoding compares the target's and the draft's."""
        scores = logits.astype(np.float64) / self.params.temperature
        if self.params.top_k:
            k = min(self.params.top_k, scores.shape[-1])
            kth = np.partition(scores, -k, axis=-1)[:, -k][:, None]
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        if self.params.top_p < 1.0:
            order = np.argsort(-probs, axis=-1)
            sorted_probs = np.take_along_axis(probs, order, axis=-1)
            # keep the smallest prefix whose mass reaches top_p (always at least the most likely token)
            drop = np.cumsum(sorted_probs, axis=-1) - sorted_probs >= self.params.top_p
            sorted_probs[drop] = 0.0
            probs = np.zeros_like(probs)
            np.put_along_axis(probs, order, sorted_probs, axis=-1)
            probs /= probs.sum(axis=-1, keepdims=True)
        return probs


def apply_penalties(logits: np.ndarray, generated: list[int], presence: float, frequency: float) -> np.ndarray:
    """OpenAI's presence and frequency penalties on one row of logits `[V]`: a token generated `n` times so far loses
    `presence` once and `frequency * n` (in place; returns the row)."""
    if generated and (presence or frequency):
        tokens, counts = np.unique(np.asarray(generated), return_counts=True)
        logits[tokens] -= presence + frequency * counts
    return logits
