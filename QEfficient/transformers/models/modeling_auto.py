"""QEFFTransformersBase and the QEFFAutoModel* classes: HF transformers models through the QEfficient pipeline."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerBase

from QEfficient.base.modeling_qeff import SINGLE_GRAPH, GraphExport, QEFFBaseModel
from QEfficient.base.pytorch_transforms import FloatTransform, PytorchTransform, transform_name
from QEfficient.transformers.embeddings.batching import pad_to_shape, plan_batches, smallest_fit
from QEfficient.transformers.embeddings.classification import (
    ClassificationTransform,
    ClassifierForExport,
    text_pad_token_id,
)
from QEfficient.transformers.embeddings.pooling import EncoderForExport, PoolingFn
from QEfficient.transformers.loading import load_pretrained, load_tokenizer, prepare_for_export
from QEfficient.transformers.models.pytorch_transforms import KVCacheTransform, PoolingTransform
from QEfficient.transformers.models.registry import (
    check_encoder_supported,
    check_sequence_classification_supported,
    is_encoder_config,
)
from QEfficient.utils.errors import first_line

logger = logging.getLogger(__name__)

DEFAULT_SEQ_LENS = (32, 128, 512)
PROBE_SHAPE = (3, 13)  # (batch, length) at which a fresh dynamic graph is checked: unlike the traced (2, 8)
DEFAULT_CTX_LEN = 128


def max_sequence_length(config: Any) -> int | None:
    """Longest input the model's position embeddings allow (RoBERTa-style models reserve pad+1 slots)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:  # e.g. XLNet's -1: no limit
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (getattr(config, "pad_token_id", 1) or 1) + 1
    return limit


def _as_sizes(value: int | Sequence[int], what: str) -> list[int]:
    sizes = [value] if isinstance(value, int) else list(value)
    if not sizes or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
        raise ValueError(f"{what} must be a positive int or a non-empty list of them; got {value!r}.")
    return sorted(set(sizes))


class QEFFTransformersBase(QEFFBaseModel):
    """Base of the QEfficient wrappers around a HF `PreTrainedModel`.

    It exports the model as `(input_ids, attention_mask) -> last_hidden_state` and compiles it for a set of
    sequence lengths and batch sizes. Subclass it, as SEED.md's `MyModel`, to bring a model outside
    transformers' auto classes: implement `from_pretrained` to build the HF model and pass it to `cls(model)`.
    """

    _hf_auto_class: ClassVar[Any] = AutoModel
    _pytorch_transforms: ClassVar[list[type[PytorchTransform] | PytorchTransform]] = [FloatTransform]

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__} wraps a torch nn.Module (a HF PreTrainedModel); got {type(model)}.")
        prepare_for_export(model)
        self.pretrained_model_name_or_path = kwargs.pop("pretrained_model_name_or_path", None)
        self.tokenizer: PreTrainedTokenizerBase | None = kwargs.pop("tokenizer", None)
        extra = kwargs.pop("extra_pytorch_transforms", None) or [PoolingTransform()]
        super().__init__(model, extra_pytorch_transforms=extra, **kwargs)
        self.shape_check: dict[str, Any] = {}  # the dynamic graph's check at another shape (`export`)
        self.shape_specializations: list[dict[str, int | None]] = []  # the compiled (batch_size, seq_len) pairs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load a HF model (hub id, offline from the HF cache; local folder; or `gguf_file=`) and wrap it.

        QEfficient forces fp32 and an exportable attention implementation and logs what it changed. The
        tokenizer is loaded from the same place when one is there (`encode` and `generate` use it).
        Keyword arguments named by `_init_kwargs` (e.g. `pooling`, `continuous_batching`) configure the
        wrapper; the rest go to HF's `from_pretrained`.
        """
        init_kwargs = {k: kwargs.pop(k) for k in cls._init_kwargs() if k in kwargs}
        hf_model = load_pretrained(
            cls._hf_auto_class, pretrained_model_name_or_path, *args, check_config=cls._check_config, **kwargs
        )
        model = cls(hf_model, pretrained_model_name_or_path=str(pretrained_model_name_or_path), **init_kwargs)
        if model.tokenizer is None:
            # the folder the weights came from (for a GGUF file: the converted folder), else the hub id
            folder = getattr(hf_model, "name_or_path", "")
            source = folder if folder and Path(folder).is_dir() else str(pretrained_model_name_or_path)
            tokenizer_kwargs = {k: kwargs[k] for k in ("revision", "trust_remote_code") if k in kwargs}
            try:
                model.tokenizer = load_tokenizer(source, **tokenizer_kwargs)
            except (OSError, ValueError, TypeError) as exc:
                logger.info("No tokenizer found with %s (%s); pass one where it is needed.", model.model_name, exc)
        return model

    @classmethod
    def _init_kwargs(cls) -> tuple[str, ...]:
        """Keyword arguments of `from_pretrained` that configure the wrapper rather than the HF load."""
        return ()

    @staticmethod
    def _check_config(config: Any) -> None:
        """Reject an unsupported architecture from its config, before any weight is loaded."""

    # ---- identity ----------------------------------------------------------------------------------

    @property
    def hf_model(self) -> nn.Module:
        """The wrapped HF model, without QEfficient's export wrapper."""
        if isinstance(self.model, EncoderForExport):
            return self.model.encoder
        if isinstance(self.model, ClassifierForExport):
            return self.model.classifier
        return self.model

    @property
    def model_name(self) -> str:
        """Name of the wrapped HF model's class (e.g. `BertModel`)."""
        return type(self.hf_model).__name__

    def __repr__(self) -> str:
        transforms = ", ".join(
            name if name in self.applied_transforms else f"{name} (no-op)"
            for name in (transform_name(t) for t in self.transforms)
        )
        return f"{type(self).__name__}(transforms=[{transforms}])\n{self.model!r}"

    # ---- export / compile --------------------------------------------------------------------------

    @property
    def output_name(self) -> str:
        return "last_hidden_state" if getattr(self.model, "pooling", None) is None else "sentence_embedding"

    def _example_batch(self, batch: int, seq: int) -> dict[str, torch.Tensor]:
        """A padded example batch: every row full but the last, which is padded with the pad id after
        max(1, 5 * seq // 8) tokens (so that tracing keeps the attention-mask path; all-ones masks may be
        dropped)."""
        input_ids = torch.full((batch, seq), 5, dtype=torch.int64)
        attention_mask = torch.ones((batch, seq), dtype=torch.int64)
        valid = max(1, 5 * seq // 8)
        attention_mask[-1, valid:] = 0
        input_ids[-1, valid:] = self._pad_token_id()
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def export(self, export_dir: str | Path | None = None) -> Path:
        """Export `(input_ids, attention_mask) -> output` with dynamic batch and sequence (cached).

        The fresh graph is run once at a shape other than the traced one and compared with the PyTorch module
        (`graph_holds_any_shape`): a model whose Python code fixes shapes at trace time (a loop over the batch, a
        padding length computed in Python) then gets one static graph per compiled shape instead.
        """
        output_axes = {0: "batch_size", 1: "seq_len"} if self.output_name == "last_hidden_state" else {0: "batch_size"}
        path = self._export(
            self._example_batch(2, 8),
            output_names=[self.output_name],
            dynamic_axes={
                "input_ids": {0: "batch_size", 1: "seq_len"},
                "attention_mask": {0: "batch_size", 1: "seq_len"},
                self.output_name: output_axes,
            },
            export_dir=export_dir,
            check=self._check_other_shape,
        )
        self.shape_check = dict(self.export_checks)
        return path

    def _check_other_shape(self, paths: dict[str, Path]) -> dict[str, Any]:
        """Run the dynamic graph at a batch and length unlike the traced (2, 8) and compare with PyTorch."""
        limit = max_sequence_length(getattr(self.hf_model, "config", None)) or PROBE_SHAPE[1]
        batch = self._example_batch(PROBE_SHAPE[0], min(PROBE_SHAPE[1], limit))
        try:
            with torch.no_grad():
                expected = self.model(*batch.values()).numpy()
            session = ort.InferenceSession(str(next(iter(paths.values()))), providers=["CPUExecutionProvider"])
            got = session.run(None, {name: t.numpy() for name, t in batch.items()})[0]
            mask = batch["attention_mask"].numpy().astype(bool)
            if expected.ndim == 3:
                got, expected = got[mask], expected[mask]
            diff = float(np.max(np.abs(got - expected)))
            holds = diff <= 1e-3 * max(1.0, float(np.max(np.abs(expected))))
            reason = f"max |diff| {diff:.3g} from PyTorch at shape {tuple(batch['input_ids'].shape)}"
        except Exception as exc:  # noqa: BLE001 - any failure: the graph does not hold at that shape
            holds, reason = False, f"{first_line(exc)} at shape {tuple(batch['input_ids'].shape)}"
        if not holds:
            logger.warning(
                "%s's exported graph holds only at its traced shape (%s); each compiled shape gets its own static "
                "graph.",
                self.model_name,
                reason,
            )
        return {"graph_holds_any_shape": holds, "reason": reason}

    @property
    def graph_holds_any_shape(self) -> bool:
        """False when the dynamic graph failed its check at another shape (see `export`)."""
        return bool(self.shape_check.get("graph_holds_any_shape", True))

    def export_static(self, shapes: Sequence[tuple[int, int]]) -> dict[str, Path]:
        """Export one static graph per (batch_size, seq_len), named `b{batch}_s{seq}` (cached); returns their paths."""
        graphs = {
            f"b{b}_s{s}": GraphExport(self._example_batch(b, s), [self.output_name], {}) for b, s in sorted(set(shapes))
        }
        self._export_graphs(graphs)
        return self.onnx_paths

    def compile(
        self,
        seq_len: int | Sequence[int] | None = None,
        batch_size: int | Sequence[int] = 1,
        backend: str = "onnxruntime",
        compile_dir: str | Path | None = None,
        **backend_options: Any,
    ) -> Path:
        """Compile for every (batch_size, seq_len) pair; at run time inputs go to the smallest that fits.

        `seq_len` defaults to 32, 128 and 512 (capped at the model's limit). `seq_len="dynamic"` leaves the
        sequence dimension free on backends that allow it (ONNX Runtime): each batch is then padded only to
        its longest input, as sentence-transformers does. Returns the program directory. Exports first if needed;
        a model whose graph holds only at its traced shape gets one static graph per pair.
        """
        limit = max_sequence_length(getattr(self.hf_model, "config", None))
        if seq_len is None:
            seq_len = sorted({min(s, limit) for s in DEFAULT_SEQ_LENS} if limit else DEFAULT_SEQ_LENS)
        batch_sizes = _as_sizes(batch_size, "batch_size")
        if self.onnx_path is None or SINGLE_GRAPH not in self.onnx_paths:
            self.export()
        if seq_len == "dynamic":
            if not self.graph_holds_any_shape:
                raise ValueError(
                    f"{self.model_name}'s exported graph holds only at its traced shape "
                    f"({self.shape_check.get('reason')}), so it cannot run with a dynamic seq_len; compile fixed "
                    "seq_len values (each gets its own static graph)."
                )
            specializations = [{"batch_size": b, "seq_len": None} for b in batch_sizes]
            self.shape_specializations = specializations
            return self._compile(specializations, backend=backend, compile_dir=compile_dir, **backend_options)
        seq_lens = _as_sizes(seq_len, "seq_len")
        if limit is not None and max(seq_lens) > limit:
            raise ValueError(f"seq_len {max(seq_lens)} exceeds the model's maximum sequence length {limit}.")
        if len(seq_lens) * len(batch_sizes) > 16:
            logger.warning(
                "Compiling %d specialisations; each one is a session in memory when used.",
                len(seq_lens) * len(batch_sizes),
            )
        specializations = [{"batch_size": b, "seq_len": s} for b in batch_sizes for s in seq_lens]
        self.shape_specializations = specializations
        if self.graph_holds_any_shape:
            return self._compile(specializations, backend=backend, compile_dir=compile_dir, **backend_options)
        self.export_static([(b, s) for b in batch_sizes for s in seq_lens])
        per_graph = {name: [{}] for name in self.onnx_paths}  # static graphs: no symbolic dimension to set
        return self._compile(per_graph, backend=backend, compile_dir=compile_dir, **backend_options)

    @property
    def compiled_seq_lens(self) -> list[int]:
        """The compiled sequence lengths; a dynamic one counts as the model's maximum length."""
        limit = max_sequence_length(getattr(self.hf_model, "config", None)) or DEFAULT_SEQ_LENS[-1]
        return sorted({limit if spec["seq_len"] is None else spec["seq_len"] for spec in self._shapes()})

    @property
    def dynamic_seq_len(self) -> bool:
        return any(spec["seq_len"] is None for spec in self._shapes())

    @property
    def compiled_batch_sizes(self) -> list[int]:
        return sorted({spec["batch_size"] for spec in self._shapes()})

    def _shapes(self) -> list[dict[str, int | None]]:
        """The compiled (batch_size, seq_len) pairs."""
        self.program  # noqa: B018 - a clear error when not compiled
        return self.shape_specializations

    # ---- running -----------------------------------------------------------------------------------

    def hf_reference(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the exported graph should return, computed with the untouched HF model in PyTorch.

        `last_hidden_state`, with the configured pooling (and normalisation) applied in PyTorch. Validation
        compares every stage with this.
        """
        with torch.no_grad():
            hidden = self.hf_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            wrapper = self.model
            if not isinstance(wrapper, EncoderForExport) or wrapper.pooling is None:
                return hidden
            pooled = wrapper.pooling(hidden, attention_mask)
            return nn.functional.normalize(pooled, p=2, dim=-1) if wrapper.normalize else pooled

    def generate(self, inputs: Any, runtime: str = "compiled") -> dict[str, np.ndarray]:
        """Run tokenised inputs (a tokenizer's output, or a dict with `input_ids` and `attention_mask`).

        Inputs are padded to the smallest compiled shape that fits and the padding is removed from the
        result. `runtime="pytorch"` runs the transformed PyTorch model instead of the compiled program.
        Returns `{output_name: array}`: `[B, H]` embeddings, or `[B, S, H]` hidden states.
        """
        input_ids = np.asarray(inputs["input_ids"], dtype=np.int64)
        attention_mask = np.asarray(inputs.get("attention_mask", np.ones_like(input_ids)), dtype=np.int64)
        if input_ids.ndim == 1:
            input_ids, attention_mask = input_ids[None], attention_mask[None]
        if input_ids.size == 0:
            raise ValueError("generate() got empty inputs.")
        if runtime == "pytorch":
            with torch.no_grad():
                out = self.model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
            return {self.output_name: out.numpy()}
        if runtime != "compiled":
            raise ValueError(f"runtime must be 'compiled' or 'pytorch'; got {runtime!r}.")
        rows = [row[mask.astype(bool)].tolist() for row, mask in zip(input_ids, attention_mask)]
        if any(not mask[: int(mask.sum())].all() for mask in attention_mask):
            raise ValueError("generate() expects right-padded inputs (attention_mask = 1s then 0s).")
        out = self._run_rows(rows)
        if self.output_name == "last_hidden_state":
            out = out[:, : input_ids.shape[1]]
        return {self.output_name: out}

    def _run_rows(self, rows: list[list[int]]) -> np.ndarray:
        """Run token rows through the program; returns `[len(rows), H]` or `[len(rows), S_max, H]`."""
        longest = max(len(r) for r in rows)
        seq = smallest_fit(longest, self.compiled_seq_lens)
        if seq is not None and self.dynamic_seq_len:
            seq = longest  # pad only to the longest input of this batch
        if seq is None:
            raise ValueError(
                f"Input of {longest} tokens is longer than the largest compiled seq_len "
                f"{max(self.compiled_seq_lens)}; compile a longer seq_len or truncate the input."
            )
        pad_id = self._pad_token_id()
        outputs, start = [], 0
        for used, batch in plan_batches(len(rows), self.compiled_batch_sizes):
            feed = pad_to_shape(rows[start : start + used], batch, seq, pad_id)
            outputs.append(self.program.run(feed)[self.output_name][:used])
            start += used
        if self.output_name == "last_hidden_state":
            outputs = [o[:, :longest] for o in outputs]
        return np.concatenate(outputs)

    def _tokenize(
        self, texts: list[str], tokenizer: PreTrainedTokenizerBase | None, truncate: bool, caller: str, what: str
    ) -> list[list[int]]:
        """Token ids of each text (no padding); longer than the largest compiled seq_len is an error unless
        `truncate`."""
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError(f"{caller}() needs a tokenizer: none was found with the model; pass tokenizer=.")
        rows = tokenizer(texts, padding=False, truncation=False, verbose=False)["input_ids"]
        return self._check_lengths(rows, truncate, what, texts, tokenizer)

    def _check_lengths(
        self,
        rows: list[list[int]],
        truncate: bool,
        what: str,
        texts: list[str] | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> list[list[int]]:
        """Rows longer than the largest compiled seq_len: an error, or truncated (by the tokenizer for texts)."""
        max_len = max(self.compiled_seq_lens)
        too_long = [i for i, r in enumerate(rows) if len(r) > max_len]
        if too_long and not truncate:
            i = too_long[0]
            raise ValueError(
                f"{what} {i} has {len(rows[i])} tokens, more than the largest compiled seq_len {max_len} "
                f"({len(too_long)} input(s) too long). Compile a longer seq_len, or pass truncate=True."
            )
        rows = [list(r) for r in rows]
        if too_long and texts is not None and tokenizer is not None:
            clipped = tokenizer([texts[i] for i in too_long], truncation=True, max_length=max_len)["input_ids"]
            for i, row in zip(too_long, clipped):
                rows[i] = row
        elif too_long:
            for i in too_long:
                rows[i] = rows[i][:max_len]
        return rows

    def _run_sorted(self, rows: list[list[int]], batch_size: int) -> tuple[list[Any], np.ndarray]:
        """Run rows sorted by length, `batch_size` at a time; results in input order (and the last output)."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        results: list[Any] = [None] * len(rows)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out = self._run_rows([rows[i] for i in chunk])
            for i, value in zip(chunk, out):
                results[i] = value[: len(rows[i])] if out.ndim == 3 else value
        return results, out

    def _pad_token_id(self) -> int:
        config = getattr(self.hf_model, "config", None)
        pad = text_pad_token_id(config) if config is not None else None
        if pad is None and self.tokenizer is not None:
            pad = self.tokenizer.pad_token_id
        return int(pad or 0)


class QEFFAutoModel(QEFFTransformersBase):
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


class QEFFAutoModelForSequenceClassification(QEFFTransformersBase):
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


class QEFFAutoModelForCausalLM(QEFFTransformersBase):
    """Decoder-only language models with a fixed-size retained-state KV cache (docs/causal_lm.md).

    ```python
    model = QEFFAutoModelForCausalLM.from_pretrained(path_or_id)          # or gguf_file=...
    model.compile(prefill_seq_len=32, ctx_len=256, batch_size=1)          # exports first if needed
    out = model.generate(tokenizer, prompts=["The capital of France is"], generation_len=64)
    out.generated_texts, out.generated_ids, out.perf_metrics
    ```

    Any model that follows transformers' Cache and attention interfaces works with no model-specific code.
    `continuous_batching=True` adds the `batch_index` input; compile it with `full_batch_size=F`.
    """

    _hf_auto_class: ClassVar[Any] = AutoModelForCausalLM

    def __init__(self, model: nn.Module, continuous_batching: bool = False, **kwargs: Any) -> None:
        self.continuous_batching = continuous_batching
        super().__init__(
            model,
            extra_pytorch_transforms=[KVCacheTransform(continuous_batching)],  # its name enters the hash
            **kwargs,
        )
        self.ctx_len: int | None = None
        self._exported_for: tuple[int, int | None] | None = None  # (ctx_len, prefill_seq_len of recurrent graphs)
        self.compile_config: dict[str, Any] = {}

    @classmethod
    def _init_kwargs(cls) -> tuple[str, ...]:
        return ("continuous_batching", "tokenizer")

    @property
    def hf_model(self) -> nn.Module:
        return self.model.model

    @property
    def layout(self):  # noqa: ANN201 - CacheLayout
        return self.model.layout

    def export(
        self, export_dir: str | Path | None = None, ctx_len: int | None = None, prefill_seq_len: int | None = None
    ) -> Path:
        """Export for one `ctx_len` (static), with a dynamic batch.

        A model with only KV caches gets one graph that serves prefill and decode (dynamic sequence length). A model
        with recurrent state gets two (docs/recurrent_state.md): `prefill` for `prefill_seq_len` tokens and
        `decode` for one (a single graph when `prefill_seq_len` is 1).
        """
        ctx_len = ctx_len or self.ctx_len or DEFAULT_CTX_LEN
        prefill_seq_len = prefill_seq_len or self.compile_config.get("prefill_seq_len") or 32
        self.ctx_len = ctx_len
        self._exported_for = (ctx_len, prefill_seq_len if self.model.has_recurrent_state else None)
        if not self.model.has_recurrent_state:
            # trace with S > 1: sdpa's q_len == 1 branch must not be baked into the graph
            graph = self._graph_export(8, ctx_len, dynamic_seq_len=True)
            return self._export(graph.example_inputs, graph.output_names, graph.dynamic_axes, export_dir)
        graphs = {"decode": self._graph_export(1, ctx_len)}
        if prefill_seq_len > 1:
            graphs = {"prefill": self._graph_export(prefill_seq_len, ctx_len), **graphs}
        return self._export_graphs(graphs, export_dir)

    def _graph_export(self, seq: int, ctx_len: int, dynamic_seq_len: bool = False) -> GraphExport:
        """Example inputs (batch 2: one full row, one padded row) and axes for a graph over `seq` tokens."""
        batch = 2
        cache_batch = batch + 1 if self.continuous_batching else batch
        valid = min(seq, 5) if dynamic_seq_len else max(1, seq // 2)
        padded = list(range(valid)) + [-1] * (seq - valid)  # right padding (KV graph)
        if self.model.has_recurrent_state:  # left padding (docs/recurrent_state.md)
            padded = [-1] * (seq - valid) + list(range(valid))
        first = [min(5, ctx_len - 1)] if seq == 1 else list(range(seq))
        inputs: dict[str, torch.Tensor] = {
            "input_ids": torch.zeros((batch, seq), dtype=torch.int64),
            "position_ids": torch.tensor([first, padded if seq > 1 else [-1]], dtype=torch.int64),
        }
        if self.continuous_batching:
            inputs["batch_index"] = torch.tensor([[2], [0]], dtype=torch.int64)
        for name, shape in self.layout.past_shapes(cache_batch, ctx_len).items():
            inputs[name] = torch.zeros(shape)
        tokens = {0: "batch_size", 1: "seq_len"} if dynamic_seq_len else {0: "batch_size"}
        axes: dict[str, dict[int, str]] = {"input_ids": tokens, "position_ids": tokens, "logits": {0: "batch_size"}}
        if self.continuous_batching:
            axes["batch_index"] = {0: "batch_size"}
        cache_axis = "full_batch_size" if self.continuous_batching else "batch_size"
        for name in self.model.past_names():
            axes[name] = axes[f"{name}_RetainedState"] = {0: cache_axis}
        return GraphExport(inputs, self.model.output_names(), axes)

    def compile(
        self,
        prefill_seq_len: int = 32,
        ctx_len: int = DEFAULT_CTX_LEN,
        batch_size: int = 1,
        full_batch_size: int | None = None,
        backend: str = "onnxruntime",
        compile_dir: str | Path | None = None,
        **backend_options: Any,
    ) -> Path:
        """Compile the prefill (B x prefill_seq_len) and decode (B x 1) specialisations for one `ctx_len`.

        With continuous batching, prefill runs one prompt at a time (B=1) into one of `full_batch_size`
        cache rows and decode runs all rows. Exports first if needed. A model with recurrent state has a
        prefill and a decode graph, each compiled for its specialisation.
        """
        for name, value in (("prefill_seq_len", prefill_seq_len), ("ctx_len", ctx_len), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        if prefill_seq_len > ctx_len:
            raise ValueError(f"prefill_seq_len ({prefill_seq_len}) must not exceed ctx_len ({ctx_len}).")
        limit = getattr(self.hf_model.config, "max_position_embeddings", None)
        if limit is not None and ctx_len > limit:
            logger.warning("ctx_len %d exceeds the model's max_position_embeddings %d.", ctx_len, limit)
        if self.continuous_batching and not full_batch_size:
            raise ValueError("This model was loaded with continuous_batching=True: compile(full_batch_size=F).")
        if full_batch_size and not self.continuous_batching:
            raise ValueError(
                "full_batch_size needs the batch_index input: load with from_pretrained(..., continuous_batching=True)."
            )
        recurrent = self.model.has_recurrent_state
        exported_for = (ctx_len, prefill_seq_len if recurrent else None)
        if self._exported_for != exported_for or self.onnx_path is None:
            self.export(ctx_len=ctx_len, prefill_seq_len=prefill_seq_len)
        if full_batch_size:
            specs = [
                {"batch_size": 1, "seq_len": prefill_seq_len, "full_batch_size": full_batch_size},
                {"batch_size": full_batch_size, "seq_len": 1, "full_batch_size": full_batch_size},
            ]
        else:
            specs = [{"batch_size": batch_size, "seq_len": prefill_seq_len}, {"batch_size": batch_size, "seq_len": 1}]
        specs = [dict(s) for s in {tuple(s.items()): s for s in specs}.values()]  # prefill_seq_len=1: one graph
        if recurrent:  # the graphs have static sequence lengths: each takes its own specialisation
            specs = {
                graph: [{k: v for k, v in spec.items() if k != "seq_len"}]
                for graph, spec in zip(("prefill", "decode") if len(specs) == 2 else ("decode",), specs)
            }
        self.compile_config = {
            "prefill_seq_len": prefill_seq_len,
            "ctx_len": ctx_len,
            "batch_size": batch_size,
            "full_batch_size": full_batch_size,
        }
        generation = {"generation": self.generation_settings()}  # so the program runs on its own (`from_program`)
        program = self._compile(specs, backend=backend, compile_dir=compile_dir, metadata=generation, **backend_options)
        self.program.load_all()  # prefill and decode both run in every generate: open them now
        return program

    @property
    def single_chunk_prefill(self) -> bool:
        """True when each prompt must fit in one prefill chunk: the model keeps recurrent state whose prefill starts
        from zero (Mamba-1's scan cannot continue from a stored state), and `prefill_seq_len` > 1."""
        prefill = self.compile_config.get("prefill_seq_len", 32)
        return self.model.prefill_starts_from_zero and prefill > 1

    def generation_settings(self) -> dict[str, Any]:
        """What driving the compiled program needs besides the graph: the compile shapes, the model's EOS ids, the
        prompt padding side and prefill chunking. Recorded in the program's manifest by `compile`."""
        if not self.compile_config:
            raise RuntimeError("QEFFAutoModelForCausalLM is not compiled yet; call .compile(...) first.")
        return {
            **self.compile_config,
            "eos_token_ids": self.eos_token_ids(),
            "left_padding": self.model.has_recurrent_state,
            "single_chunk_prefill": self.single_chunk_prefill,
        }

    def text_generator(self, program: Any = None, tokenizer: Any = None):  # noqa: ANN201 - TextGenerator
        """The `TextGenerator` that drives `program` (the compiled program by default) with this model's compile
        settings: prompt padding side, prefill chunking, EOS ids (the model's and the tokenizer's)."""
        from QEfficient.generation.text_generation import TextGenerator

        return TextGenerator.with_settings(program or self.program, tokenizer, self.generation_settings())

    def eos_token_ids(self, tokenizer: Any = None) -> list[int]:
        """End-of-sequence ids from the generation config, the model config and the tokenizer."""
        from QEfficient.generation.text_generation import eos_token_ids

        return eos_token_ids(getattr(self.hf_model, "generation_config", None), self.hf_model.config, tokenizer)

    def generate(
        self,
        tokenizer: Any = None,
        prompts: str | Sequence[str] | Sequence[Sequence[int]] = (),
        generation_len: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_strings: Sequence[str] = (),
        streamer: Any = None,
        chat: bool = False,
    ):  # noqa: ANN201 - GenerationOutput
        """Generate text for `prompts` (strings, or lists of token ids) on the compiled program (greedy unless
        `do_sample=True`).

        More prompts than `batch_size` run in rounds (or, with continuous batching, as cache rows free up).
        Stops on EOS, a stop string, `generation_len` new tokens, or a full context; `finish_reasons` says
        which. `streamer` is anything with `put`/`end`, such as transformers' `TextStreamer`.
        """
        from QEfficient.generation.sampling import SamplingParams

        tokenizer = tokenizer or self.tokenizer  # may stay None for token-id prompts
        generator = self.text_generator(tokenizer=tokenizer)
        sampling = SamplingParams(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return generator.generate(prompts, generation_len, sampling, stop_strings, streamer, chat)

    def stream(self, prompt: str, tokenizer: Any = None, **generate_kwargs: Any) -> Iterator[str]:
        """Yield the generated text piece by piece (the iterator form of `generate(..., streamer=...)`).

        Takes `generate`'s keyword arguments (`generation_len`, `chat`, sampling options, ...). An error in
        generation is raised here, after the pieces produced before it.
        """
        from transformers import TextIteratorStreamer

        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("stream() needs a tokenizer: none was found with the model; pass tokenizer=.")
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.generate(tokenizer, [prompt], streamer=streamer, **generate_kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if failure:
            raise failure[0]
