"""Adapter for LongCat-Flash: its experts loop over the experts hit by this batch, which does not export.

HF's `LongcatFlashExperts.forward` iterates `for e in expert_hit` (a `nonzero`) with `int(e.item())` and
Python branches on it (routed expert or "zero" identity expert): the trace unrolls it for the trace input's
routing, and the exported graph does not even load (an `If` whose branches disagree). The adapter computes the
same sum with static shapes, as transformers' `batched_mm` experts do: each (token, k) pair gathers its
expert's weights and runs a batched matmul; pairs routed to a zero expert (index >= n_routed_experts) pass
the token through unchanged; the outputs are weighted by the router and summed over k.
"""

from __future__ import annotations

import torch
from transformers.models.longcat_flash import modeling_longcat_flash as hf

from QEfficient.transformers.models.adapters import Adapter


class BatchedLongcatFlashExperts(hf.LongcatFlashExperts):
    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        identity = hidden_states[:, None, :].expand(-1, top_k_index.shape[-1], -1)  # [T, K, H]
        if self.gate_up_proj is None:
            out = identity
        else:
            routed = top_k_index < self.num_routed_experts
            index = top_k_index.clamp(max=self.num_routed_experts - 1)
            x = hidden_states[:, None, None, :]  # [T, 1, 1, H]
            gate, up = torch.matmul(x, self.gate_up_proj[index].transpose(-1, -2)).chunk(2, dim=-1)
            out = torch.matmul(self.act_fn(gate) * up, self.down_proj[index].transpose(-1, -2)).squeeze(2)
            out = torch.where(routed[..., None], out, identity)
        out = out * top_k_weights[..., None].to(out.dtype)
        return out.sum(dim=1).to(hidden_states.dtype)


ADAPTER = Adapter("longcat_flash", {hf.LongcatFlashExperts: BatchedLongcatFlashExperts})
