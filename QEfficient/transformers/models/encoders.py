"""Encoders and classifiers: `QEFFAutoModel` (embeddings with pooling in the graph) and
`QEFFAutoModelForSequenceClassification` (logits and labels).

Both compile with `weights="fp32"` (default), `"int8"` or `"int4"`. An encoder runs batches of tokens, GEMMs, so its
`"int8"` is ONNX Runtime's dynamic int8 quantisation (the backend's `weights="int8-dynamic"`,
`QEfficient/backends/quantization.py`): per-channel int8 weights, activations quantised to uint8 per tensor at run
time, the FFN output projections (which read GELU outputs, the widest range) kept fp32 and the other MatMuls' inputs
smoothed (their LayerNorm outliers moved into the weights); the manifest's `int8_dynamic` records it. `"int4"` is the
block-wise `MatMulNBits` of the causal LMs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from QEfficient.backends.quantization import DYNAMIC_INT8
from QEfficient.transformers.embeddings.classification import (
    ClassificationTransform,
    text_pad_token_id,
)
from QEfficient.transformers.embeddings.pooling import PoolingFn
from QEfficient.transformers.models.modeling_auto import QEFFTransformersBase
from QEfficient.transformers.models.pytorch_transforms import PoolingTransform
from QEfficient.transformers.models.registry import (
    check_encoder_supported,
    check_sequence_classification_supported,
    is_encoder_config,
)

logger = logging.getLogger(__name__)

ENCODER_WEIGHTS = ("fp32", "int8", "int4")
_BLOCK_OPTIONS = ("block_size", "accuracy_level", "symmetric", "exact_grids")


def encoder_weight_options(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """An encoder's compile options for the backend: `weights="int8"` becomes ONNX Runtime's dynamic int8
    (`"int8-dynamic"`); clear errors for other values and for block options that do not apply to it."""
    weights = options.get("weights", "fp32")
    if weights not in (*ENCODER_WEIGHTS, DYNAMIC_INT8):
        raise ValueError(
            f"weights must be one of {', '.join(ENCODER_WEIGHTS)} for an encoder (int8: dynamic int8, per-channel "
            f"weights and activations quantised at run time); got {weights!r}."
        )
    if weights not in ("int8", DYNAMIC_INT8) or backend != "onnxruntime":
        return options
    given = [key for key in _BLOCK_OPTIONS if key in options]
    if given:
        raise ValueError(
            f"An encoder's weights='int8' is dynamic int8 with one scale per output channel, not blocks, so "
            f"{', '.join(given)} cannot be set with it (block options apply to weights='int4')."
        )
    return {**options, "weights": DYNAMIC_INT8}


class _EncoderCompile:
    """`compile` for encoders and classifiers: their `weights="int8"` is the dynamic-int8 (GEMM) program."""

    def compile(
        self,
        seq_len: int | Sequence[int] | str | None = None,
        batch_size: int | Sequence[int] = 1,
        backend: str = "onnxruntime",
        compile_dir: str | Path | None = None,
        **backend_options: Any,
    ) -> Path:
        """Compile for every (batch_size, seq_len) pair, as `QEFFTransformersBase.compile`; `weights="int8"` gives
        ONNX Runtime's dynamic int8 program (per-channel int8 weights, activations quantised at run time, FFN
        output projections fp32), `weights="int4"` block-wise int4 weights."""
        options = encoder_weight_options(backend, backend_options)
        return super().compile(seq_len, batch_size, backend, compile_dir, **options)  # type: ignore[misc]


class QEFFAutoModel(_EncoderCompile, QEFFTransformersBase):
    """Encoder-only models for embeddings, with pooling and normalisation inside the graph.

    Any encoder-only architecture (BERT, RoBERTa, DeBERTa, ModernBERT, ... : the masked-LM families of
    transformers) loads; decoder-only and encoder-decoder models are rejected with `UnsupportedModelError`.

    ```python
    model = QEFFAutoModel.from_pretrained(path, pooling="mean", normalize=True)
    model.compile(seq_len=[32, 128], batch_size=32)
    embeddings = model.encode(["a sentence", "another one"])
    ```

    `pooling` is `"mean"`, `"max"`, `"cls"`, `"avg"`, a callable `(last_hidden_state, attention_mask) ->
    [B, H]`, or None (the graph then returns `last_hidden_state`). `normalize=True` L2-normalises the
    pooled embedding.
    """

    def __init__(
        self, model: nn.Module, pooling: str | PoolingFn | None = None, normalize: bool = False, **kwargs: Any
    ) -> None:
        config = getattr(model, "config", None)
        if config is not None:  # a module without a HF config must simply take (input_ids, attention_mask)
            check_encoder_supported(config)
        super().__init__(model, extra_pytorch_transforms=[PoolingTransform(pooling, normalize)], **kwargs)

    @classmethod
    def _init_kwargs(cls) -> tuple[str, ...]:
        return ("pooling", "normalize", "tokenizer")

    @staticmethod
    def _check_config(config: Any) -> None:
        check_encoder_supported(config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load an encoder; `pooling=` and `normalize=` configure the exported graph.

        Encoders load with eager attention unless asked otherwise: its graph has no sdpa guard ops and
        ONNX Runtime fuses it (about 8 % faster on the CPU).
        """
        kwargs.setdefault("attn_implementation", "eager")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int = 32,
        tokenizer: PreTrainedTokenizerBase | None = None,
        truncate: bool = False,
    ) -> np.ndarray | list[np.ndarray]:
        """Embed sentences, as sentence-transformers' `encode` does, on the compiled program.

        Sentences are tokenised, sorted by length, run `batch_size` at a time on the smallest compiled
        shapes that fit, and returned in input order: a float32 `[N, H]` array (a `[H]` vector for a
        single string). Without pooling, a list of `[n_tokens, H]` token-embedding arrays.
        A sentence longer than the largest compiled `seq_len` is an error unless `truncate=True`.
        Compiles (for `batch_size` and the default sequence lengths) if the model is not compiled yet.
        """
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if not texts:
            raise ValueError("encode() got an empty list of sentences; pass at least one string.")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode() takes a string or a list of strings.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        if self._program is None:
            self.compile(batch_size=batch_size)
        rows = self._tokenize(texts, tokenizer, truncate, "encode", "Sentence")
        results, out = self._run_sorted(rows, batch_size)
        if out.ndim == 3:
            return results[0] if single else results
        embeddings = np.stack(results).astype(np.float32, copy=False)
        return embeddings[0] if single else embeddings


@dataclass
class ClassificationOutput:
    """What `QEFFAutoModelForSequenceClassification.classify` returns, one entry per input."""

    logits: np.ndarray  # float32 [N, num_labels]
    label_ids: np.ndarray  # int64 [N]: argmax of the logits
    labels: list[str]  # config.id2label of each label id ("LABEL_<id>" where the config names none)


class QEFFAutoModelForSequenceClassification(_EncoderCompile, QEFFTransformersBase):
    """Sequence classifiers (`AutoModelForSequenceClassification`): `(input_ids, attention_mask) -> logits`.

    ```python
    model = QEFFAutoModelForSequenceClassification.from_pretrained(path)
    model.compile(seq_len=[32, 128], batch_size=8)
    out = model.classify(["I loved it", "Not my thing"])      # or lists of token ids
    out.logits, out.label_ids, out.labels                      # [N, num_labels], [N], id2label names
    model.generate(tokenizer(texts, padding=True, return_tensors="np"))["logits"]
    ```

    Encoder families (BERT, RoBERTa, DeBERTa, ...) and decoder families (Llama, Qwen, GPT-2, ...) both work,
    with no model-specific code: the exported graph is the HF model's own forward, pooling included. A
    decoder classifies its last non-padding token, which HF finds from `config.pad_token_id`; the graph
    writes that id at every masked position, so right-padded inputs (attention_mask 1s then 0s) give HF's
    logits whatever id they were padded with. A decoder needs `pad_token_id`: when the config has none,
    `from_pretrained` takes the tokenizer's. Encoder-decoder models are rejected (`UnsupportedModelError`).
    """

    _hf_auto_class: ClassVar[Any] = AutoModelForSequenceClassification

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        config = getattr(model, "config", None)
        if config is not None:
            check_sequence_classification_supported(config)
        super().__init__(model, extra_pytorch_transforms=[ClassificationTransform()], **kwargs)

    @classmethod
    def _init_kwargs(cls) -> tuple[str, ...]:
        return ("tokenizer",)

    @staticmethod
    def _check_config(config: Any) -> None:
        check_sequence_classification_supported(config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load a HF sequence classifier (hub id offline from the HF cache, local folder) and wrap it.

        A decoder whose config has no `pad_token_id` takes the tokenizer's (logged), as HF's own
        classification pipelines need it for batches.
        """
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        config = model.hf_model.config
        pad = getattr(model.tokenizer, "pad_token_id", None)
        if text_pad_token_id(config) is None and pad is not None and not is_encoder_config(config):
            logger.info("config.pad_token_id is not set; using the tokenizer's pad token id %d.", pad)
            config.get_text_config().pad_token_id = pad
        return model

    @property
    def output_name(self) -> str:
        return "logits"

    @property
    def num_labels(self) -> int:
        return int(self.hf_model.config.num_labels)

    def export(self, export_dir: str | Path | None = None) -> Path:
        """Export `(input_ids, attention_mask) -> logits [B, num_labels]` with dynamic batch and sequence."""
        config = self.hf_model.config
        if text_pad_token_id(config) is None and not is_encoder_config(config):
            raise ValueError(
                f"{self.model_name} classifies each input's last non-padding token, which HF finds from "
                "config.pad_token_id, and it is not set. Set model.hf_model.config.pad_token_id (e.g. to "
                "tokenizer.pad_token_id or the eos token id) before export."
            )
        return super().export(export_dir)

    def hf_reference(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """HF's logits for the batch, from the untouched HF model in PyTorch."""
        with torch.no_grad():
            return self.hf_model(input_ids=input_ids, attention_mask=attention_mask).logits.float()

    def generate(self, inputs: Any, runtime: str = "compiled") -> dict[str, np.ndarray]:
        """Run tokenised, right-padded inputs (a tokenizer's output, or a dict with `input_ids` and
        `attention_mask`); returns `{"logits": [B, num_labels]}`.

        Inputs are padded to the smallest compiled shape that fits. `runtime="pytorch"` runs the transformed
        PyTorch model instead of the compiled program.
        """
        return super().generate(inputs, runtime)

    def classify(
        self,
        inputs: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
        batch_size: int = 32,
        tokenizer: PreTrainedTokenizerBase | None = None,
        truncate: bool = False,
    ) -> ClassificationOutput:
        """Classify texts (through the tokenizer) or lists of token ids, on the compiled program.

        A single string or a single list of ids is one input. Inputs are sorted by length and run
        `batch_size` at a time on the smallest compiled shapes that fit; results come back in input order.
        An input longer than the largest compiled `seq_len` is an error unless `truncate=True`. Compiles
        (for `batch_size` and the default sequence lengths) if the model is not compiled yet. Labels are
        the argmax of the logits, named by `config.id2label`.
        """
        if isinstance(inputs, str) or (
            isinstance(inputs, Sequence) and len(inputs) > 0 and isinstance(inputs[0], (int, np.integer))
        ):
            items: list[Any] = [inputs]
        else:
            items = list(inputs)
        if not items:
            raise ValueError("classify() got no inputs; pass a string, a list of strings or lists of token ids.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        texts = all(isinstance(x, str) for x in items)
        if not texts and any(isinstance(x, str) for x in items):
            raise TypeError("classify() takes strings or lists of token ids, not a mix of both.")
        if self._program is None:
            self.compile(batch_size=batch_size)
        if texts:
            rows = self._tokenize(items, tokenizer, truncate, "classify", "Input")
        else:
            rows = [[int(t) for t in row] for row in items]
            if any(not row for row in rows):
                raise ValueError("classify() got an empty list of token ids.")
            rows = self._check_lengths(rows, truncate, "Input")
        results, _ = self._run_sorted(rows, batch_size)
        logits = np.stack(results).astype(np.float32, copy=False)
        label_ids = logits.argmax(axis=-1).astype(np.int64)
        id2label = getattr(self.hf_model.config, "id2label", None) or {}
        labels = [str(id2label.get(int(i), id2label.get(str(int(i)), f"LABEL_{int(i)}"))) for i in label_ids]
        return ClassificationOutput(logits, label_ids, labels)
