"""Adapter for Llama 4: its rotary embeddings are computed in complex numbers, which ONNX cannot represent.

HF's `Llama4TextRotaryEmbedding` returns `polar(1, p * inv_freq)` and `apply_rotary_emb` multiplies
`view_as_complex` pairs of `[B, S, H, D]` queries and keys by it. The adapter keeps the same arithmetic in real
numbers: the rotary module returns `(cos, sin)` stacked as `[B, S, D/2, 2]`, and the attention rotates each
interleaved pair `(x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos)`. Everything else is HF's attention, unchanged
(qk-norm, temperature tuning on NoPE layers, the chunked-attention mask it is given).

The vision tower (Llama4ForConditionalGeneration) does the same with a complex buffer `freqs_ci [S, 1, D/2]` that
depends on the config only: its module returns the buffer's real view `[S, 1, D/2, 2]` as a constant, and the vision
attention rotates the pairs with it.
"""

from __future__ import annotations

import torch
from transformers.models.llama4 import modeling_llama4 as hf

from QEfficient.transformers.models.adapters import Adapter


class RealRotaryEmbedding(hf.Llama4TextRotaryEmbedding):
    @hf.dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        return torch.stack((freqs.cos(), freqs.sin()), dim=-1) * self.attention_scaling


def rotate_pairs(x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """`view_as_real(view_as_complex(x) * freqs_cis[:, :, None])` in real arithmetic; x is [B, S, H, D]."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = cos_sin[:, :, None, :, 0], cos_sin[:, :, None, :, 1]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(3).type_as(x)


class RealRotaryAttention(hf.Llama4TextAttention):
    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs):  # noqa: ANN001, ANN201
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape)
        key_states = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if self.use_rope:
            cos_sin = position_embeddings.to(query_states.device)
            query_states, key_states = rotate_pairs(query_states, cos_sin), rotate_pairs(key_states, cos_sin)
        if hasattr(self, "qk_norm"):
            query_states, key_states = self.qk_norm(query_states), self.qk_norm(key_states)
        if self.attn_temperature_tuning and not self.use_rope:
            past_seen_tokens = cache.get_seq_length(self.layer_idx) if cache is not None else 0
            positions = torch.arange(hidden_states.shape[1], device=hidden_states.device) + past_seen_tokens
            attn_scales = torch.log1p(torch.floor((positions.float() + 1.0) / self.floor_scale)) * self.attn_scale + 1.0
            attn_scales = attn_scales.view((1, input_shape[-1], 1, 1)).expand((*input_shape, 1, 1))
            query_states = (query_states * attn_scales).to(query_states.dtype)
        query_states, key_states = query_states.transpose(1, 2), key_states.transpose(1, 2)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
        attention = hf.ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, hf.eager_attention_forward
        )
        attn_output, attn_weights = attention(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(attn_output.reshape(*input_shape, -1).contiguous()), attn_weights


class RealVisionRotaryEmbedding(hf.Llama4VisionRotaryEmbedding):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # the buffer depends on the config alone: its real view enters the graph as a constant, with no complex op
        real = torch.view_as_real(self.freqs_ci.detach()).cpu().numpy().copy()
        return torch.from_numpy(real).to(hidden_states.device)


class RealVisionAttention(hf.Llama4VisionAttention):
    def forward(self, hidden_states, freqs_ci, attention_mask=None, cache=None, **kwargs):  # noqa: ANN001, ANN201
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape)
        key_states = self.k_proj(hidden_states).view(hidden_shape)
        value_states = self.v_proj(hidden_states).view(hidden_shape)
        cos_sin = freqs_ci.reshape(1, freqs_ci.shape[0], -1, 2)  # HF's reshape_for_broadcast, per (cos, sin) pair
        query_states, key_states = rotate_pairs(query_states, cos_sin), rotate_pairs(key_states, cos_sin)
        query_states, key_states = query_states.transpose(1, 2), key_states.transpose(1, 2)
        value_states = value_states.transpose(1, 2)
        attention = hf.ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, hf.vision_eager_attention_forward
        )
        attn_output, attn_weights = attention(
            self,
            query_states,
            key_states,
            value_states,
            None,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=None,
            is_causal=False,
            **kwargs,
        )
        return self.o_proj(attn_output.reshape(*input_shape, -1).contiguous()), attn_weights


ADAPTER = Adapter(
    "llama4",
    {
        hf.Llama4TextRotaryEmbedding: RealRotaryEmbedding,
        hf.Llama4TextAttention: RealRotaryAttention,
        hf.Llama4VisionRotaryEmbedding: RealVisionRotaryEmbedding,
        hf.Llama4VisionAttention: RealVisionAttention,
    },
)
