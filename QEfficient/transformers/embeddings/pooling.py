"""Pooling of token embeddings into one vector per sentence, built into the exported graph.

Every pooling function takes `(last_hidden_state [B, S, H], attention_mask [B, S])` and returns `[B, H]`.
They follow sentence-transformers' definitions, so that `QEFFAutoModel.encode` returns its numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

PoolingFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_pooling(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the valid (non-padding) token embeddings, as sentence-transformers' `mean` mode."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def average_pooling(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the valid tokens, in E5's formulation (padding zeroed, then divided by the token count)."""
    hidden = last_hidden_state.masked_fill(~attention_mask.unsqueeze(-1).bool(), 0.0)
    return hidden.sum(dim=1) / attention_mask.sum(dim=1, keepdim=True).to(hidden.dtype)


def max_pooling(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-dimension maximum over the valid tokens (padding set to -1e9 first, as sentence-transformers)."""
    hidden = last_hidden_state.masked_fill(~attention_mask.unsqueeze(-1).bool(), -1e9)
    return hidden.max(dim=1).values


def cls_pooling(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The embedding of the first token ([CLS])."""
    return last_hidden_state[:, 0]


POOLING_FUNCTIONS: dict[str, PoolingFn] = {
    "mean": mean_pooling,
    "avg": average_pooling,
    "max": max_pooling,
    "cls": cls_pooling,
}


def resolve_pooling(pooling: str | PoolingFn | None) -> PoolingFn | None:
    """Map a pooling name to its function; a callable is checked on a small example and returned as is."""
    if pooling is None:
        return None
    if callable(pooling):
        example = torch.randn(2, 3, 4)
        try:
            out = pooling(example, torch.ones(2, 3, dtype=torch.int64))
        except Exception as exc:
            raise ValueError(
                f"Custom pooling {pooling!r} failed on an example input; it must accept "
                f"(last_hidden_state [B, S, H], attention_mask [B, S]) and return [B, H]: {exc}"
            ) from exc
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 4):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"Custom pooling {pooling!r} must return a [B, H] tensor; got {shape} for B=2, H=4.")
        return pooling
    if pooling not in POOLING_FUNCTIONS:
        raise ValueError(
            f"Unknown pooling {pooling!r}. Choose one of {', '.join(POOLING_FUNCTIONS)}, a callable "
            "(last_hidden_state, attention_mask) -> [B, H], or None for the raw last_hidden_state."
        )
    return POOLING_FUNCTIONS[pooling]


def pooling_name(pooling: str | PoolingFn | None) -> str | None:
    """A stable name for hashing: the pooling mode, or the qualified name of a custom function."""
    if pooling is None or isinstance(pooling, str):
        return pooling
    return f"{getattr(pooling, '__module__', '?')}.{getattr(pooling, '__qualname__', repr(pooling))}"


class EncoderForExport(nn.Module):
    """An encoder with the export signature `(input_ids, attention_mask)`.

    Returns the pooled (optionally L2-normalised) sentence embedding, or `last_hidden_state` when no
    pooling is set.
    """

    def __init__(self, encoder: nn.Module, pooling: PoolingFn | None = None, normalize: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize

    @property
    def config(self):  # noqa: ANN201 - the wrapped HF config
        return self.encoder.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling is None:
            return hidden
        embedding = self.pooling(hidden, attention_mask)
        if self.normalize:
            embedding = nn.functional.normalize(embedding, p=2, dim=-1)
        return embedding
