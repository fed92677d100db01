"""Text generation: `QEFFAutoModelForCausalLM`, decoder LLMs behind the fixed-size retained-state KV cache."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from QEfficient.base.modeling_qeff import GraphExport
from QEfficient.transformers.models.modeling_auto import DEFAULT_CTX_LEN, QEFFTransformersBase
from QEfficient.transformers.models.pytorch_transforms import KVCacheTransform

logger = logging.getLogger(__name__)


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

    def __init__(
        self, model: nn.Module, continuous_batching: bool = False, image_token_id: int | None = None, **kwargs: Any
    ) -> None:
        """`image_token_id`: for the language model of a vision-language model (`QEFFAutoModelForImageTextToText`),
        the image placeholder token; the graph then takes the per-token `image_embeds`."""
        self.continuous_batching = continuous_batching
        super().__init__(
            model,
            # the transform's name enters the hash
            extra_pytorch_transforms=[KVCacheTransform(continuous_batching, image_token_id)],
            **kwargs,
        )
        self.ctx_len: int | None = None
        self._exported_for: tuple[int, int | None] | None = None  # (ctx_len, prefill_seq_len of recurrent graphs)
        self.compile_config: dict[str, Any] = {}

    @staticmethod
    def _check_config(config: Any) -> None:
        """A vision-language model that transformers does not load as a causal LM is sent to the image-text class."""
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        )

        from QEfficient.transformers.models.registry import UnsupportedModelError

        model_type = getattr(config, "model_type", "")
        vision_language = model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        if vision_language and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise UnsupportedModelError(
                f"{type(config).__name__} is a vision-language model: load it with "
                "QEFFAutoModelForImageTextToText.from_pretrained(...) (QEFFAutoModelForCausalLM serves text-only "
                "language models)."
            )

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
        if self.model.image_token_id is not None:  # one image token in the full row: the merge path is traced
            inputs["input_ids"][0, min(1, seq - 1)] = self.model.image_token_id
            inputs["image_embeds"] = torch.zeros((batch, seq, self.model.image_embeds_width))
            for name, shape in self.model.image_fields.items():
                inputs[f"image_{name}"] = torch.zeros((batch, seq, *shape))
        if self.model.rope_rows:
            inputs["rope_offsets"] = torch.zeros((batch, seq, self.model.rope_rows))
        if self.model.cross_mask_shape:  # the full row reads the images: the cross-attention path is traced
            inputs["cross_attention_mask"] = torch.zeros((batch, seq, *self.model.cross_mask_shape))
            inputs["cross_attention_mask"][0] = 1.0
        if self.continuous_batching:
            inputs["batch_index"] = torch.tensor([[2], [0]], dtype=torch.int64)
        for name, shape in self.layout.past_shapes(cache_batch, ctx_len).items():
            inputs[name] = torch.zeros(shape)
        tokens = {0: "batch_size", 1: "seq_len"} if dynamic_seq_len else {0: "batch_size"}
        axes: dict[str, dict[int, str]] = {"input_ids": tokens, "position_ids": tokens, "logits": {0: "batch_size"}}
        for name in (
            "image_embeds",
            "rope_offsets",
            "cross_attention_mask",
            *(f"image_{name}" for name in self.model.image_fields),
        ):
            if name in inputs:
                axes[name] = tokens
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
            "token_inputs": self.token_inputs,
        }

    @property
    def token_inputs(self) -> dict[str, list[int]]:
        """Per-token inputs besides the ids, name -> trailing shape: `image_embeds` for a vision-language model,
        `cross_attention_mask` for a cross-attention one."""
        if self.model.cross_mask_shape:
            return {"cross_attention_mask": list(self.model.cross_mask_shape)}
        if self.model.image_token_id is None:
            return {}
        inputs = {"image_embeds": [self.model.image_embeds_width]}
        inputs.update({f"image_{name}": list(shape) for name, shape in self.model.image_fields.items()})
        return {**inputs, "rope_offsets": [self.model.rope_rows]} if self.model.rope_rows else inputs

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
