"""Adapter for JetMoE: its experts split the routed tokens by counts read back to Python, which does not export.

HF's `JetMoeTopKGating` returns `expert_size = counts.tolist()` and `JetMoeParallelExperts` does
`inputs.split(expert_size)`: the tracer bakes the counts of the trace input into the graph's `Split`, so any
other routing fails at run time. Both the MoE MLP and the mixture-of-attention (MoA) use these two modules.
The adapter passes, in place of the counts, the expert of each routed row (the sorted expert ids the gating
computes anyway), and the experts multiply each row by its own expert's weight (a gather + batched matmul).
"""

from __future__ import annotations

import torch
from transformers.models.jetmoe import modeling_jetmoe as hf

from QEfficient.transformers.models.adapters import Adapter


class StaticTopKGating(hf.JetMoeTopKGating):
    def forward(self, hidden_states: torch.Tensor) -> tuple:
        logits = self.layer(hidden_states).float()
        top_k_logits, top_k_indices = logits.topk(self.top_k, dim=1)
        top_k_gates = torch.softmax(top_k_logits, dim=1).type_as(hidden_states)
        sorted_experts, index_sorted_experts = top_k_indices.flatten().sort(0)
        batch_index = index_sorted_experts.div(self.top_k, rounding_mode="trunc")
        batch_gates = top_k_gates.flatten()[index_sorted_experts]
        # `sorted_experts` (expert of each grouped row) replaces HF's per-expert counts
        return index_sorted_experts, batch_index, batch_gates, sorted_experts, logits


class GatheredParallelExperts(hf.JetMoeParallelExperts):
    def forward(self, inputs: torch.Tensor, row_experts: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.weight[row_experts], inputs.unsqueeze(-1)).squeeze(-1)


ADAPTER = Adapter("jetmoe", {hf.JetMoeTopKGating: StaticTopKGating, hf.JetMoeParallelExperts: GatheredParallelExperts})
