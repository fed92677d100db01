"""Adapter for DBRX: its experts loop over the experts hit by this batch, which does not export.

HF's `DbrxExperts.forward` iterates `for expert_idx in expert_hit` where `expert_hit = nonzero(...)`: the
tracer unrolls the loop for the experts hit by the trace input and splits `expert_hit` with sizes fixed at
trace time, so the graph fails (or is wrong) on any other routing. The adapter computes the same thing with
static shapes, as transformers' `batched_mm` experts do: gather each (token, k) pair's expert weights and
multiply in a batch, then sum the k outputs weighted by the router.
"""

from __future__ import annotations

import torch
from transformers.models.dbrx import modeling_dbrx as hf

from QEfficient.transformers.models.adapters import Adapter


class BatchedDbrxExperts(hf.DbrxExperts):
    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        batch_size = hidden_states.shape[0]
        x = hidden_states.reshape(-1, 1, 1, self.hidden_size)  # [T, 1, 1, H]
        shape = (self.num_experts, self.ffn_hidden_size, self.hidden_size)
        w1 = self.mlp.w1.view(shape)[top_k_index]  # [T, K, I, H]
        v1 = self.mlp.v1.view(shape)[top_k_index]
        w2 = self.mlp.w2.view(shape)[top_k_index]
        gate = torch.matmul(x, w1.transpose(-1, -2))  # [T, K, 1, I]
        up = torch.matmul(x, v1.transpose(-1, -2))
        out = torch.matmul(self.mlp.activation_fn(gate) * up, w2).squeeze(2)  # [T, K, H]
        out = (out * top_k_weights[..., None].to(out.dtype)).sum(dim=1)
        return out.view(batch_size, -1, self.hidden_size)


ADAPTER = Adapter("dbrx", {hf.DbrxExperts: BatchedDbrxExperts})
