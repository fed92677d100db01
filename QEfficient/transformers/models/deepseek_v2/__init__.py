"""Adapter for DeepSeek-V2: its rotary embedding is computed in complex numbers, which ONNX cannot represent.

HF's `DeepseekV2RotaryEmbedding` returns `polar(1, p * inv_freq)` and `apply_rotary_emb` multiplies
`view_as_complex` pairs by it. The adapter keeps the same arithmetic in real numbers: the rotary module
returns `(cos, sin)` stacked as `[..., D/2, 2]`, and the attention rotates each interleaved pair
`(x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos)`. Everything else is HF's attention, unchanged.
"""

from __future__ import annotations

import torch
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as hf

from QEfficient.transformers.models.adapters import Adapter


class RealRotaryEmbedding(hf.DeepseekV2RotaryEmbedding):
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        return torch.stack((freqs.cos(), freqs.sin()), dim=-1) * self.attention_scaling


def rotate_pairs(x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """`view_as_real(view_as_complex(x) * polar(1, angle))`, in real arithmetic; cos_sin is [B, S, D/2, 2]."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = cos_sin[:, None, ..., 0], cos_sin[:, None, ..., 1]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(3).type_as(x)


class RealRotaryAttention(hf.DeepseekV2Attention):
    def forward(self, hidden_states, attention_mask=None, cache=None, position_embeddings=None, **kwargs):  # noqa: ANN001, ANN201
        batch_size, seq_length = hidden_states.shape[:-1]
        if self.q_lora_rank is None:
            q = self.q_proj(hidden_states)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
        q = q.view(batch_size, seq_length, -1, self.qk_head_dim).transpose(1, 2)
        q_nope, q_pe = torch.split(q, [self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        kv_nope, k_pe = torch.split(
            self.kv_a_proj_with_mqa(hidden_states), [self.kv_lora_rank, self.qk_rope_head_dim], dim=-1
        )
        k_nope = self.kv_a_layernorm(kv_nope).view(batch_size, 1, seq_length, self.kv_lora_rank)
        k_pe = k_pe.view(batch_size, 1, seq_length, self.qk_rope_head_dim)
        q_pe, k_pe = rotate_pairs(q_pe, position_embeddings), rotate_pairs(k_pe, position_embeddings)
        if cache is not None:
            k_nope, k_pe = cache.update(k_nope, k_pe, self.layer_idx, kwargs=kwargs)
        key_states, value_states = self.expand_kv(k_nope, k_pe)
        attention = hf.ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, hf.eager_attention_forward
        )
        out, weights = attention(
            self,
            torch.cat((q_nope, q_pe), dim=-1),
            key_states,
            value_states,
            attention_mask,
            dropout=0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(out.reshape(batch_size, seq_length, -1).contiguous()), weights


ADAPTER = Adapter(
    "deepseek_v2",
    {hf.DeepseekV2RotaryEmbedding: RealRotaryEmbedding, hf.DeepseekV2Attention: RealRotaryAttention},
)
