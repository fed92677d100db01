"""Text generation: `QEFFAutoModelForCausalLM`, decoder LLMs behind the fixed-size retained-state KV cache."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from QEfficient.base.modeling_qeff import GraphExport
from QEfficient.generation.speculative import check_num_speculative_tokens
from QEfficient.transformers.models.modeling_auto import DEFAULT_CTX_LEN, QEFFTransformersBase
from QEfficient.transformers.models.pytorch_transforms import KVCacheTransform

logger = logging.getLogger(__name__)


def _vocab_size(model: nn.Module) -> int:
    """The width of a causal LM's logits: its output embedding's rows (else the text config's `vocab_size`)."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    return int(model.config.get_text_config(decoder=True).vocab_size)


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
        # (ctx_len, prefill_seq_len of recurrent graphs, logits kept per row)
        self._exported_for: tuple[int, int | None, int] | None = None
        self.compile_config: dict[str, Any] = {}
        # Logits per row of a step, at most (`LastValidPosition.keep`): 1, or K + 1 for a speculative-decoding target
        # (`compile(num_speculative_tokens=K)`). Part of the export's identity when it is not 1.
        self.num_logits_to_keep = 1
        self._backend_options: dict[str, Any] = {}  # the last compile's, for a recompile that adds a verify width

    @staticmethod
    def _check_config(config: Any) -> None:
        """A vision-language model that transformers does not load as a causal LM is sent to the image-text class."""
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
            MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
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
        speech = model_type in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES
        if speech and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise UnsupportedModelError(
                f"{type(config).__name__} is a speech-to-text model: load it with "
                "QEFFAutoModelForSpeechSeq2Seq.from_pretrained(...) (an audio LLM such as Voxtral comes back as a "
                "QEFFAutoModelForAudioTextToText; QEFFAutoModelForCausalLM serves text-only language models)."
            )

    @classmethod
    def _init_kwargs(cls) -> tuple[str, ...]:
        return ("continuous_batching", "tokenizer")

    @property
    def hf_model(self) -> nn.Module:
        return self.model.model

    def _model_identity(self) -> dict[str, Any]:
        identity = super()._model_identity()
        if self.num_logits_to_keep != 1:  # an export with one logit per row keeps its hash
            identity["num_logits_to_keep"] = self.num_logits_to_keep
        return identity

    @contextlib.contextmanager
    def _logits_kept(self) -> Iterator[None]:
        """The wrapper's LM-head hook keeps `num_logits_to_keep` logits per row while the graph is traced."""
        hook = self.model.last_position
        before, hook.keep = hook.keep, self.num_logits_to_keep
        try:
            yield
        finally:
            hook.keep = before

    @property
    def layout(self):  # noqa: ANN201 - CacheLayout
        return self.model.layout

    def export(
        self,
        export_dir: str | Path | None = None,
        ctx_len: int | None = None,
        prefill_seq_len: int | None = None,
        num_logits_to_keep: int = 1,
    ) -> Path:
        """Export for one `ctx_len` (static), with a dynamic batch.

        A model with only KV caches gets one graph that serves prefill and decode (dynamic sequence length). A model
        with recurrent state gets two (docs/recurrent_state.md): `prefill` for `prefill_seq_len` tokens and
        `decode` for one (a single graph when `prefill_seq_len` is 1).

        `num_logits_to_keep` (KV-cache graphs only): a step of S tokens returns the logits of its last
        `min(S, num_logits_to_keep)` columns up to each row's last valid one, `[B, min(S, n), V]`
        (`LastValidPosition`); 1 (the default) is the last valid position alone. A speculative-decoding target keeps
        K + 1, so that one step verifies K draft tokens (docs/speculative_decoding.md).
        """
        if not isinstance(num_logits_to_keep, int) or num_logits_to_keep < 1:
            raise ValueError(f"num_logits_to_keep must be a positive int; got {num_logits_to_keep!r}.")
        if num_logits_to_keep > 1 and self.model.has_recurrent_state:
            raise ValueError(
                "num_logits_to_keep > 1 (speculative decoding) needs a model whose whole state is a position-indexed "
                "KV cache: this model keeps recurrent state, which rejected draft tokens would leave advanced."
            )
        ctx_len = ctx_len or self.ctx_len or DEFAULT_CTX_LEN
        prefill_seq_len = prefill_seq_len or self.compile_config.get("prefill_seq_len") or 32
        self.ctx_len = ctx_len
        self.num_logits_to_keep = num_logits_to_keep
        recurrent_prefill = prefill_seq_len if self.model.has_recurrent_state else None
        self._exported_for = (ctx_len, recurrent_prefill, num_logits_to_keep)
        if not self.model.has_recurrent_state:
            # trace with S > 1: sdpa's q_len == 1 branch must not be baked into the graph
            graph = self._graph_export(8, ctx_len, dynamic_seq_len=True)
            if num_logits_to_keep > 1:  # min(S, n) logits per row
                graph.dynamic_axes["logits"] = {0: "batch_size", 1: "logits_len"}
            with self._logits_kept():
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
        prefill_seq_len: int | Sequence[int] = 32,
        ctx_len: int = DEFAULT_CTX_LEN,
        batch_size: int = 1,
        full_batch_size: int | None = None,
        backend: str = "onnxruntime",
        compile_dir: str | Path | None = None,
        num_speculative_tokens: int | None = None,
        **backend_options: Any,
    ) -> Path:
        """Compile the prefill (B x prefill_seq_len) and decode (B x 1) specialisations for one `ctx_len`.

        With continuous batching, prefill runs one prompt at a time (B=1) into one of `full_batch_size`
        cache rows and decode runs all rows. Exports first if needed. A model with recurrent state has a
        prefill and a decode graph, each compiled for its specialisation.

        `prefill_seq_len` may be several chunk widths, each dividing the next, e.g. `(32, 128)`: each is compiled, and
        a prompt is prefilled in the cheapest plan of chunks (`TextGenerator.chunk_plan`: a 24-token prompt in one
        32-column chunk, a 512-token prompt in four of 128; docs/performance.md, "Prefill"). Models with recurrent
        state take one width.

        `num_speculative_tokens=K` makes this program a speculative-decoding target
        (docs/speculative_decoding.md): the graph keeps up to K + 1 logits per row, and verify specialisations of
        2, 4, ... and K + 1 columns (batch B; with continuous batching full_batch_size) check up to K draft tokens
        per step.
        """
        chunk_widths = (
            sorted(set(prefill_seq_len))
            if isinstance(prefill_seq_len, Sequence) and not isinstance(prefill_seq_len, str)
            else [prefill_seq_len]
        )
        checked = [("prefill_seq_len", width) for width in chunk_widths] or [("prefill_seq_len", prefill_seq_len)]
        for name, value in (*checked, ("ctx_len", ctx_len), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int or a sequence of them; got {value!r}.")
        if len(chunk_widths) > 1 and self.model.has_recurrent_state:
            raise ValueError(
                f"This model keeps recurrent state, whose prefill graph has one static width: give one "
                f"prefill_seq_len, not {chunk_widths}."
            )
        prefill_seq_len, widest = chunk_widths[0], chunk_widths[-1]
        if any(wider % width for width, wider in zip(chunk_widths, chunk_widths[1:])):
            # then a plan of widest-first chunks starts each chunk at a multiple of its own width
            raise ValueError(f"Each prefill_seq_len must divide the next wider one; got {chunk_widths}.")
        if num_speculative_tokens is not None:
            check_num_speculative_tokens(num_speculative_tokens)
            if self.model.has_recurrent_state:
                raise ValueError(
                    "Speculative decoding needs a model whose whole state is a position-indexed KV cache; this model "
                    "keeps recurrent state, which rejected draft tokens would leave advanced."
                )
            if num_speculative_tokens + 1 > ctx_len:
                raise ValueError(
                    f"num_speculative_tokens + 1 ({num_speculative_tokens + 1}) exceeds ctx_len {ctx_len}."
                )
        if widest > ctx_len:
            raise ValueError(f"prefill_seq_len ({widest}) must not exceed ctx_len ({ctx_len}).")
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
        keep = num_speculative_tokens + 1 if num_speculative_tokens else 1
        exported_for = (ctx_len, prefill_seq_len if recurrent else None, keep)
        if self._exported_for != exported_for or self.onnx_path is None:
            self.export(ctx_len=ctx_len, prefill_seq_len=prefill_seq_len, num_logits_to_keep=keep)
        if full_batch_size:
            specs = [
                {"batch_size": 1, "seq_len": prefill_seq_len, "full_batch_size": full_batch_size},
                {"batch_size": full_batch_size, "seq_len": 1, "full_batch_size": full_batch_size},
            ]
        else:
            specs = [{"batch_size": batch_size, "seq_len": prefill_seq_len}, {"batch_size": batch_size, "seq_len": 1}]
        specs += [{**specs[0], "seq_len": width} for width in chunk_widths[1:]]  # the wider prefill chunks
        if num_speculative_tokens:  # verify steps: the last token and up to K drafts (2, 4, 8, ... and K + 1 columns)
            widths = {min(2**i, num_speculative_tokens + 1) for i in range(1, num_speculative_tokens.bit_length() + 1)}
            specs += [{**specs[1], "seq_len": width} for width in sorted(widths)]
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
        if len(chunk_widths) > 1:  # recorded only when set, as below: other programs' settings stay as they were
            self.compile_config["prefill_seq_lens"] = chunk_widths
        if num_speculative_tokens:
            self.compile_config["num_speculative_tokens"] = num_speculative_tokens
        self._backend_options = dict(backend_options)
        generation = {"generation": self.generation_settings()}  # so the program runs on its own (`from_program`)
        options = self._with_checkpoint_weights(backend, backend_options)  # a GPTQ / AWQ / ... checkpoint's own weights
        program = self._compile(specs, backend=backend, compile_dir=compile_dir, metadata=generation, **options)
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
        speculative: Any = None,
        draft_model: QEFFAutoModelForCausalLM | None = None,
        num_speculative_tokens: int | None = None,
    ):  # noqa: ANN201 - GenerationOutput
        """Generate text for `prompts` (strings, or lists of token ids) on the compiled program (greedy unless
        `do_sample=True`).

        More prompts than `batch_size` run in rounds (or, with continuous batching, as cache rows free up).
        Stops on EOS, a stop string, `generation_len` new tokens, or a full context; `finish_reasons` says
        which. `streamer` is anything with `put`/`end`, such as transformers' `TextStreamer`.

        Speculative decoding (docs/speculative_decoding.md): `speculative="prompt_lookup"` drafts from n-grams of
        the prompt and output (or pass a configured `PromptLookupDrafter`); `draft_model=` (a smaller
        `QEFFAutoModelForCausalLM` with the same vocabulary; `speculative="draft"` may say so too) drafts with that
        model's own program. Each target step verifies up to `num_speculative_tokens` drafts (default: the compiled
        K, else 4). Greedy output equals plain decoding's; sampling keeps the target's distribution (rejection
        sampling). The target is recompiled with `num_speculative_tokens` when its program has no verify step wide
        enough; the draft model is compiled with the target's shapes when it does not fit them.
        """
        from QEfficient.generation.sampling import SamplingParams

        tokenizer = tokenizer or self.tokenizer  # may stay None for token-id prompts
        sampling = SamplingParams(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        config = None
        if speculative is not None or draft_model is not None or num_speculative_tokens is not None:
            config = self._speculative_config(speculative, draft_model, num_speculative_tokens, tokenizer)
        generator = self.text_generator(tokenizer=tokenizer)
        return generator.generate(prompts, generation_len, sampling, stop_strings, streamer, chat, speculative=config)

    def _speculative_config(
        self,
        method: Any,
        draft_model: QEFFAutoModelForCausalLM | None,
        num_speculative_tokens: int | None,
        tokenizer: Any,
    ):  # noqa: ANN202 - SpeculativeConfig
        """Check the speculative-decoding arguments, compile what they need and build the drafter."""
        from QEfficient.generation.speculative import (
            DEFAULT_NUM_SPECULATIVE_TOKENS,
            SPECULATIVE_METHODS,
            Drafter,
            DraftModelDrafter,
            PromptLookupDrafter,
            SpeculativeConfig,
            check_num_speculative_tokens,
        )

        if isinstance(method, Drafter) and not isinstance(method, DraftModelDrafter):  # a configured drafter
            method, drafter = "prompt_lookup", method
        else:
            drafter = PromptLookupDrafter()
        if method is None:
            if draft_model is None:
                raise ValueError(
                    "num_speculative_tokens needs a drafter: speculative='prompt_lookup', or draft_model=<model>."
                )
            method = "draft"
        if method not in SPECULATIVE_METHODS:
            raise ValueError(f"speculative must be one of {SPECULATIVE_METHODS}; got {method!r}.")
        if method == "draft" and draft_model is None:
            raise ValueError("speculative='draft' needs draft_model=<QEFFAutoModelForCausalLM>.")
        if method == "prompt_lookup" and draft_model is not None:
            raise ValueError("speculative='prompt_lookup' drafts without a model: drop draft_model, or use 'draft'.")
        if not self.compile_config:
            raise RuntimeError("QEFFAutoModelForCausalLM is not compiled yet; call .compile(...) first.")
        compiled = self.compile_config.get("num_speculative_tokens") or 0
        k = num_speculative_tokens if num_speculative_tokens is not None else compiled or DEFAULT_NUM_SPECULATIVE_TOKENS
        k = check_num_speculative_tokens(k)
        if compiled < k:  # the program needs a verify step of k + 1 columns
            logger.info("Compiling the target for speculative decoding (num_speculative_tokens=%d).", k)
            shapes = {name: self.compile_config[name] for name in ("prefill_seq_len", "ctx_len", "batch_size")}
            full = self.compile_config.get("full_batch_size")
            self.compile(**shapes, full_batch_size=full, num_speculative_tokens=k, **self._backend_options)
        if method == "prompt_lookup":
            return SpeculativeConfig(drafter, k)
        self._check_draft_model(draft_model, tokenizer)
        return SpeculativeConfig(DraftModelDrafter(draft_model.text_generator(tokenizer=tokenizer)), k)

    def _check_draft_model(self, draft: Any, tokenizer: Any) -> None:
        """A draft model must be a causal LM with this model's vocabulary, batch layout and at least its context;
        compiled with this model's shapes when it is not compiled, or compiled for others."""
        if not isinstance(draft, QEFFAutoModelForCausalLM):
            raise TypeError(f"draft_model must be a QEFFAutoModelForCausalLM; got {type(draft).__name__}.")
        if draft is self:
            raise ValueError("draft_model is the target model itself: use a smaller model (or prompt lookup).")
        if draft.model.has_recurrent_state:
            raise ValueError("The draft model keeps recurrent state; speculative decoding needs a KV-cache model.")
        ours, theirs = _vocab_size(self.hf_model), _vocab_size(draft.hf_model)
        if ours != theirs:
            raise ValueError(
                f"The draft model's vocabulary has {theirs} tokens and the target's {ours}: speculative decoding needs "
                "a draft model with the target's tokenizer."
            )
        theirs = draft.tokenizer
        if tokenizer is not None and theirs is not None and theirs.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                "The draft model's tokenizer differs from the target's: speculative decoding needs the same tokenizer."
            )
        full = self.compile_config.get("full_batch_size")
        if bool(full) != draft.continuous_batching:
            raise ValueError(
                "The target runs with continuous batching and the draft model does not (or the other way round): load "
                f"the draft with from_pretrained(..., continuous_batching={bool(full)})."
            )
        wanted = {
            "ctx_len": self.compile_config["ctx_len"],
            "batch_size": self.compile_config["batch_size"],
            "full_batch_size": full,
        }
        have = draft.compile_config
        fits = bool(have) and have["ctx_len"] >= wanted["ctx_len"]
        fits = fits and have["batch_size"] == wanted["batch_size"] and have.get("full_batch_size") == full
        if not fits:
            logger.info("Compiling the draft model with the target's shapes %s.", wanted)
            prefill = have.get("prefill_seq_len") or self.compile_config["prefill_seq_len"]
            draft.compile(prefill_seq_len=prefill, **wanted, **draft._backend_options)

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
