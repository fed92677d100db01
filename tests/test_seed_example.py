"""SEED.md's `MyModel` example, literally: a user subclass of QEFFTransformersBase with its own from_pretrained."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from transformers import AutoModel, AutoTokenizer

from QEfficient import QEFFTransformersBase


class MyModel(QEFFTransformersBase):
    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *args, **kwargs):
        # Load the pretrained model from HuggingFace or local path
        model = AutoModel.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return cls(model)


def test_my_model_exports_compiles_and_runs(tiny_encoder_dirs) -> None:
    folder = str(tiny_encoder_dirs["mpnet"])
    model = MyModel.from_pretrained(folder)
    assert model.model_name == "MPNetModel"
    assert "MyModel" in repr(model) and "FloatTransform" in repr(model)
    onnx_path = model.export()
    assert onnx_path.is_file()
    program = model.compile(seq_len=[16, 32], batch_size=1)
    assert program.is_dir()

    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["a sentence", "a somewhat longer second sentence"], padding=True, return_tensors="np")
    out = model.generate(batch)["last_hidden_state"]
    reference = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = reference(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
    valid = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(out[valid], expected[valid], atol=1e-5, rtol=0)
