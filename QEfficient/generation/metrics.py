"""Timing of a generation run: time to first token, prefill and decode throughput."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PerfMetrics:
    """Measured on the host around the program's runs (tokenisation and detokenisation included)."""

    prompt_tokens: int
    generated_tokens: int
    ttft_s: float
    prefill_s: float
    decode_s: float
    total_s: float

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens produced by decode steps (all but each prompt's first) per second of decoding."""
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    decode_tokens: int = 0
    vision_s: float = 0.0  # a vision-language model's vision program (included in ttft_s and total_s)

    def __str__(self) -> str:
        return (
            f"TTFT {self.ttft_s * 1000:.1f} ms | prefill {self.prompt_tokens} tokens at "
            f"{self.prefill_tokens_per_s:.1f} tokens/s | decode {self.decode_tokens} tokens at "
            f"{self.decode_tokens_per_s:.1f} tokens/s | total {self.total_s:.2f} s"
        )
