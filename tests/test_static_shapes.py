"""A model whose Python code fixes shapes at trace time gets one static graph per compiled shape, never a dynamic
graph that is silently wrong at other shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from QEfficient import QEFFTransformersBase


class BlockMean(nn.Module):
    """Averages tokens in blocks of 4 after padding the sequence to a multiple of 4. The padding length is
    computed in Python from the shape, so a trace bakes it in, as Funnel's pooling and Reformer's chunking do."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> BaseModelOutput:
        hidden = self.embed(input_ids) * attention_mask[..., None]
        batch, seq = input_ids.shape
        pad = int((4 - seq % 4) % 4)
        blocks = nn.functional.pad(hidden, (0, 0, 0, pad)).view(int(batch), -1, 4, 8).mean(dim=2)
        return BaseModelOutput(last_hidden_state=blocks.repeat_interleave(4, dim=1)[:, : int(seq)])


def test_shape_bound_graph_gets_static_graphs_per_shape() -> None:
    torch.manual_seed(0)
    module = BlockMean().eval()
    model = QEFFTransformersBase(module)
    model.export()
    assert not model.graph_holds_any_shape
    assert "at shape (3, 13)" in model.shape_check["reason"]
    with pytest.raises(ValueError, match="holds only at its traced shape.*compile fixed seq_len"):
        model.compile(seq_len="dynamic")

    model.compile(seq_len=[6, 13], batch_size=[1, 2])
    assert sorted(model.onnx_paths) == ["b1_s13", "b1_s6", "b2_s13", "b2_s6"]
    assert model.compiled_seq_lens == [6, 13] and model.compiled_batch_sizes == [1, 2]
    rows = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [17, 18]]
    for row in rows:  # each alone: the exact shape HF would see
        ids = torch.tensor([row])
        expected = module(ids, torch.ones_like(ids)).last_hidden_state.detach().numpy()
        got = model.generate({"input_ids": ids.numpy()})["last_hidden_state"]
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_shape_generic_graph_stays_dynamic(tiny_encoder_dirs) -> None:
    from QEfficient import QEFFAutoModel

    model = QEFFAutoModel.from_pretrained(str(tiny_encoder_dirs["bert"]), pooling="mean")
    model.export()
    assert model.graph_holds_any_shape
    model.compile(seq_len="dynamic")
    assert model.dynamic_seq_len
