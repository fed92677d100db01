"""Grouped-query attention over the retained cache without repeating K/V heads.

HF's eager and sdpa paths repeat each KV head `H / H_kv` times before attending (`repeat_kv`), which in the
exported graph copies the whole cache of every layer at every decode step. This function, registered in
transformers' `AttentionInterface`, instead folds the query heads of each group into the query length,
`[B, H, S, D] -> [B, H_kv, (H/H_kv) * S, D]`, and attends each group to its one KV head. The arithmetic is
the same as eager attention's; only the copies go away.

Sparse attention (DeepSeek Sparse Attention and its relatives) hands attention implementations other than
eager/sdpa the indexer's top-k key indices as `indices` [B, S, k] instead of folding them into the mask;
this function folds them in as eager does (keys outside the top-k get the dtype minimum).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface

NAME = "qeff_grouped"

# Keyword arguments that change the arithmetic beyond what this function implements (e.g. attention sinks).
_UNSUPPORTED = ("s_aux", "sinks", "position_bias")


def grouped_query_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    if any(kwargs.get(k) is not None for k in _UNSUPPORTED):
        raise NotImplementedError(f"{NAME} does not implement {[k for k in _UNSUPPORTED if kwargs.get(k) is not None]}")
    indices = kwargs.get("indices")
    if indices is not None:
        attention_mask = _select_keys(attention_mask, indices, query, key.shape[2])
    batch, heads, seq, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scaling = dim**-0.5 if scaling is None else scaling
    q = query.reshape(batch, kv_heads, groups * seq, dim)
    scores = torch.matmul(q, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        ctx = key.shape[2]
        scores = scores.view(batch, kv_heads, groups, seq, ctx) + attention_mask[:, :, None, :, :ctx]
        scores = scores.view(batch, kv_heads, groups * seq, ctx)
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs, value)  # [B, H_kv, groups * S, Dv]
    out = out.view(batch, heads, seq, value.shape[-1]).transpose(1, 2).contiguous()
    return out, None


def _select_keys(
    attention_mask: torch.Tensor | None, indices: torch.Tensor, query: torch.Tensor, ctx: int
) -> torch.Tensor:
    """`attention_mask` [B, 1, S, ctx] with every key not among `indices` [B, S, k] set to the dtype minimum."""
    batch, _, seq, _ = query.shape
    if attention_mask is None:
        attention_mask = query.new_zeros((batch, 1, seq, ctx))
    attention_mask = attention_mask[..., :ctx]
    index = indices.long()
    chosen = torch.zeros_like(attention_mask[:, 0]).scatter(-1, index, torch.ones_like(index, dtype=query.dtype))
    minimum = torch.finfo(query.dtype).min
    return attention_mask.masked_fill(chosen.unsqueeze(1) == 0, minimum)


AttentionInterface.register(NAME, grouped_query_attention)
