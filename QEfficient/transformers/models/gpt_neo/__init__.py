"""Adapter for GPT-Neo: its attention masks by key *count*, not by position.

`GPTNeoSelfAttention._attn` takes its causal (and, on "local" layers, sliding-window) mask as the rows
`bias[key_length - query_length : key_length]` of a [max_pos, max_pos] table, which assumes the keys are
exactly positions 0..key_length-1 and the queries the last ones. With the fixed cache the key length is
always ctx_len, so a local layer's window lands at the end of the cache and hides the real keys. The layer
kinds live in GPT-Neo's own `config.attention_layers` ("global"/"local", `window_size`), which transformers'
`layer_types` machinery does not know, so the wrapper cannot build per-kind masks for it.

The adapter reads the same table at each token's position (its cache slot) and combines it with the
wrapper's mask; `_attn` then applies only that mask. Same arithmetic as HF otherwise (no 1/sqrt(d) scaling).
"""

from __future__ import annotations

import torch
from transformers.models.gpt_neo import modeling_gpt_neo as hf

from QEfficient.transformers.models.adapters import Adapter


class PositionedSelfAttention(hf.GPTNeoSelfAttention):
    def forward(self, hidden_states, attention_mask=None, layer_past=None, **kwargs):  # noqa: ANN001, ANN201
        self.positioned = layer_past is not None  # without a cache (classification) HF's own masks are right
        if not self.positioned:
            return super().forward(hidden_states, attention_mask=attention_mask, layer_past=layer_past, **kwargs)
        layer = layer_past.layers[self.layer_id]
        allowed = self.bias[0, 0, :, : layer.keys.shape[2]][layer.slots][:, None]  # [B, 1, S, ctx_len]
        minimum = torch.finfo(torch.float32).min
        if attention_mask is None:
            attention_mask = torch.zeros((), dtype=torch.float32)
        mask = torch.where(allowed, attention_mask.float(), torch.tensor(minimum))
        return super().forward(hidden_states, attention_mask=mask, layer_past=layer_past, **kwargs)

    def _attn(self, query, key, value, attention_mask=None):  # noqa: ANN001, ANN202
        if not self.positioned:
            return super()._attn(query, key, value, attention_mask)
        weights = torch.matmul(query.float(), key.float().transpose(-1, -2)) + attention_mask
        weights = torch.nn.functional.softmax(weights, dim=-1).to(value.dtype)
        return torch.matmul(weights, value), weights


ADAPTER = Adapter("gpt_neo", {hf.GPTNeoSelfAttention: PositionedSelfAttention})
