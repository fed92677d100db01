"""`kv_offload=False`: the vision encoder and the language model of a vision-language model in one program, its
prefill graph running both and its decode graph the language model (docs/image_text_to_text.md)."""


from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from QEfficient.base.modeling_qeff import QEFFBaseModel
from QEfficient.transformers.models.causal_lm import QEFFAutoModelForCausalLM
from QEfficient.transformers.models.vision_encoder import QEFFVisionEncoder, VisionEncoderForExport

logger = logging.getLogger(__name__)


class ImageTextForExport(nn.Module):
    """The vision encoder and the language model in one module, for the single program (`kv_offload=False`).

    Two graphs are traced from it: **prefill** `(input_ids, position_ids, image_embeds, [image_<field>...],
    [rope_offsets], <image inputs>..., past...)` runs the vision encoder and hands each image token its feature row
    (the k-th image token of the flattened batch the k-th row) to the language model; **decode** takes the language
    model's own inputs. The two are told apart by their number of inputs.
    """

    def __init__(self, vision: VisionEncoderForExport, language: nn.Module) -> None:
        super().__init__()
        self.vision = vision
        self.language = language

    @property
    def config(self) -> Any:
        return self.language.config

    @property
    def export_identity(self) -> dict[str, Any]:
        return {"language": self.language.export_identity, "vision_inputs": list(self.vision.input_names)}

    def language_inputs_before_past(self) -> int:
        """How many language inputs come before the past buffers: ids, positions, image_embeds, fields, rope."""
        return 3 + len(self.language.image_fields) + (1 if self.language.rope_rows else 0)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        head = self.language_inputs_before_past()
        n_past = len(self.language.past_names())
        if len(inputs) == head + n_past:  # decode: the language model alone
            return self.language(*inputs)
        language, images, past = inputs[:head], inputs[head : len(inputs) - n_past], inputs[len(inputs) - n_past :]
        input_ids = language[0]
        outputs = self.vision(*images)  # image_features [N, H], then the extra fields [N, L, H]
        is_image = (input_ids == self.language.image_token_id).reshape(-1)
        index = (is_image.long().cumsum(0) - 1).clamp(min=0)
        per_token = []
        # image_embeds take the features and a flag column of ones; the extra fields take their rows
        outputs = (torch.cat([outputs[0], outputs[0].new_ones((outputs[0].shape[0], 1))], dim=-1), *outputs[1:])
        for given, rows in zip(language[2 : 3 + len(self.language.image_fields)], outputs):
            gathered = rows[index].reshape(*input_ids.shape, *rows.shape[1:])
            keep = is_image.reshape(*input_ids.shape, *([1] * (rows.dim() - 1)))
            per_token.append(torch.where(keep, gathered, given))
        return self.language(*language[:2], *per_token, *language[3 + len(self.language.image_fields) :], *past)


class QEFFImageTextSingleProgram(QEFFBaseModel):
    """`kv_offload=False`: one program whose prefill graph runs the vision encoder and the language model and whose
    decode graph is the language model (docs/image_text_to_text.md). Prompts run one at a time, each prefilled in one
    chunk, with images of the compiled geometry."""

    def __init__(self, vision: QEFFVisionEncoder, language: QEFFAutoModelForCausalLM) -> None:
        super().__init__(ImageTextForExport(vision.model, language.model))
        self.vision = vision
        self.language = language

    @property
    def model_name(self) -> str:
        return f"{type(self.language.hf_model).__name__}-single"

    def export(self, export_dir: str | Path | None = None) -> Path:
        """Export the prefill and decode graphs (call `compile`, which knows the shapes)."""
        raise ValueError("The single program is exported by compile(...): it needs the image inputs and the shapes.")

    def compile(
        self,
        image_inputs: dict[str, np.ndarray],
        prefill_seq_len: int,
        ctx_len: int,
        backend: str = "onnxruntime",
        **backend_options: Any,
    ) -> Path:
        """Export (cached) and compile both graphs for one prompt of up to `prefill_seq_len` tokens and these images."""
        from QEfficient.base.modeling_qeff import GraphExport

        self.vision.export(image_inputs=image_inputs)  # fixes the geometry and the output fields
        self.language.model.image_features_dim = self.vision.features_dim
        self.language.model.image_fields = dict(self.vision.extra_fields)
        self.language.ctx_len = ctx_len
        decode = self.language._graph_export(1, ctx_len)
        prefill = self.language._graph_export(prefill_seq_len, ctx_len)
        names = self.vision.model.input_names
        images = {n: torch.from_numpy(np.asarray(v)) for n, v in image_inputs.items() if n in names}
        past = {n: t for n, t in prefill.example_inputs.items() if n.startswith("past_")}
        head = {n: t for n, t in prefill.example_inputs.items() if not n.startswith("past_")}
        count = int(self.vision.pytorch(image_inputs)["image_features"].shape[0])
        head["input_ids"] = head["input_ids"][:1].clone()
        head["position_ids"] = torch.arange(prefill_seq_len).unsqueeze(0)
        head["input_ids"][0, 1 : 1 + min(count, prefill_seq_len - 1)] = self.language.model.image_token_id
        head = {n: t[:1] for n, t in head.items()}
        past = {n: t[:1] for n, t in past.items()}
        static = {n: {0: "batch_size"} for n in (*head, *past, *prefill.output_names)}
        graphs = {
            "prefill": GraphExport({**head, **images, **past}, prefill.output_names, static),
            "decode": GraphExport(decode.example_inputs, decode.output_names, decode.dynamic_axes),
        }
        self._export_graphs(graphs)
        specs = {"prefill": [{"batch_size": 1}], "decode": [{"batch_size": 1}]}
        settings = {
            "prefill_seq_len": prefill_seq_len,
            "ctx_len": ctx_len,
            "batch_size": 1,
            "full_batch_size": None,
            "eos_token_ids": self.language.eos_token_ids(),
            "left_padding": False,
            "single_chunk_prefill": True,
            "token_inputs": self.language.token_inputs,
        }
        program = self._compile(specs, backend=backend, metadata={"generation": settings}, **backend_options)
        self.program.load_all()
        return program


