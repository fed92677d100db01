"""QEFFTransformersBase and the QEFFAutoModel* classes: HF transformers models through the QEfficient pipeline."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from transformers import AutoModel, PreTrainedTokenizerBase

from QEfficient.base.modeling_qeff import SINGLE_GRAPH, GraphExport, QEFFBaseModel
from QEfficient.base.pytorch_transforms import FloatTransform, PytorchTransform, transform_name
from QEfficient.transformers.embeddings.batching import pad_to_shape, plan_batches, smallest_fit
from QEfficient.transformers.embeddings.classification import (
    ClassifierForExport,
    text_pad_token_id,
)
from QEfficient.transformers.embeddings.pooling import EncoderForExport
from QEfficient.transformers.loading import load_pretrained, load_tokenizer, prepare_for_export
from QEfficient.transformers.models.pytorch_transforms import PoolingTransform
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
    # (batch, length) of the traced example and of the check at another shape (`export`); inputs measured in
    # something other than tokens (audio samples, feature frames) need other lengths
    _export_shape: ClassVar[tuple[int, int]] = (2, 8)
    _probe_shape: ClassVar[tuple[int, int]] = PROBE_SHAPE

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
        example = self._example_batch(*self._export_shape)
        path = self._export(
            example,
            output_names=[self.output_name],
            dynamic_axes={
                **{name: {0: "batch_size", 1: "seq_len"} for name in example},  # every input: [batch, seq, ...]
                self.output_name: self._output_axes(),
            },
            export_dir=export_dir,
            check=self._check_other_shape,
        )
        self.shape_check = dict(self.export_checks)
        return path

    def _max_seq_len(self) -> int | None:
        """The longest input the model takes, in the graph's length unit (tokens: its position embeddings), or None."""
        return max_sequence_length(getattr(self.hf_model, "config", None))

    def _output_axes(self) -> dict[int, str]:
        """The exported output's dynamic axes."""
        return {0: "batch_size", 1: "seq_len"} if self.output_name == "last_hidden_state" else {0: "batch_size"}

    def _valid_outputs(self, values: np.ndarray, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """The meaningful part of an output for `batch` (per-token outputs at unmasked positions), for comparisons."""
        return values[batch["attention_mask"].numpy().astype(bool)] if values.ndim == 3 else values

    def _check_other_shape(self, paths: dict[str, Path]) -> dict[str, Any]:
        """Run the dynamic graph at a batch and length unlike the traced ones (`_probe_shape`, not `_export_shape`)
        and compare with PyTorch."""
        limit = self._max_seq_len() or self._probe_shape[1]
        batch = self._example_batch(self._probe_shape[0], min(self._probe_shape[1], limit))
        shape = tuple(next(iter(batch.values())).shape)
        try:
            with torch.no_grad():
                expected = self.model(*batch.values()).numpy()
            session = ort.InferenceSession(str(next(iter(paths.values()))), providers=["CPUExecutionProvider"])
            got = session.run(None, {name: t.numpy() for name, t in batch.items()})[0]
            got, expected = self._valid_outputs(got, batch), self._valid_outputs(expected, batch)
            diff = float(np.max(np.abs(got - expected)))
            holds = diff <= 1e-3 * max(1.0, float(np.max(np.abs(expected))))
            reason = f"max |diff| {diff:.3g} from PyTorch at shape {shape}"
        except Exception as exc:  # noqa: BLE001 - any failure: the graph does not hold at that shape
            holds, reason = False, f"{first_line(exc)} at shape {shape}"
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
        limit = self._max_seq_len()
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
    def quantized_checkpoint(self) -> Any:
        """The `QuantizedCheckpoint` of a model loaded from a pre-quantised checkpoint (GPTQ, AWQ, compressed-tensors,
        FP8; docs/quantized_checkpoints.md), else None."""
        from QEfficient.transformers.quantized_checkpoints import ATTRIBUTE

        return getattr(self.hf_model, ATTRIBUTE, None)

    def _with_checkpoint_weights(self, backend: str, options: dict[str, Any]) -> dict[str, Any]:
        """`options` for a model loaded from a pre-quantised checkpoint: unless `weights=` says otherwise, the
        checkpoint's own integer weights are compiled as they are. Other models' options are returned unchanged."""
        checkpoint = self.quantized_checkpoint
        return options if checkpoint is None else checkpoint.compile_options(options, backend)

    @property
    def compiled_seq_lens(self) -> list[int]:
        """The compiled sequence lengths; a dynamic one counts as the model's maximum length."""
        limit = self._max_seq_len() or DEFAULT_SEQ_LENS[-1]
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


# The task classes live in their own modules (one per task family); importing them from here still works.
_TASK_CLASSES = {
    "QEFFAutoModel": "encoders",
    "QEFFAutoModelForSequenceClassification": "encoders",
    "ClassificationOutput": "encoders",
    "QEFFAutoModelForCausalLM": "causal_lm",
}


def __getattr__(name: str) -> Any:
    if name in _TASK_CLASSES:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_TASK_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
