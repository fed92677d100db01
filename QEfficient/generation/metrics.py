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
    # Speculative decoding (docs/speculative_decoding.md): draft tokens proposed and accepted, and the target's
    # decode work counted per row (each running row in each target step: decode_tokens / row_steps is the mean number
    # of tokens a row gains per step, 1 without speculation). Zero without speculation.
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    row_steps: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens / proposed ones (0 when nothing was proposed)."""
        return self.accepted_draft_tokens / self.draft_tokens if self.draft_tokens else 0.0

    def __str__(self) -> str:
        return (
            f"TTFT {self.ttft_s * 1000:.1f} ms | prefill {self.prompt_tokens} tokens at "
            f"{self.prefill_tokens_per_s:.1f} tokens/s | decode {self.decode_tokens} tokens at "
            f"{self.decode_tokens_per_s:.1f} tokens/s | total {self.total_s:.2f} s"
            + (
                f" | speculative: {self.accepted_draft_tokens}/{self.draft_tokens} draft tokens accepted "
                f"({self.acceptance_rate:.0%}), {self.decode_tokens / self.row_steps:.2f} tokens per target step"
                if self.row_steps
                else ""
            )
        )
