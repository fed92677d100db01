"""Text generation on a compiled causal-LM program: chunked prefill, decode loop, stopping, streaming,
and continuous batching over `full_batch_size` cache rows.

The program follows docs/causal_lm.md: a prefill specialisation (B x prefill_seq_len) and a decode one (B x 1),
the KV cache (and any recurrent state) kept as retained state by the backend between steps. Prompts are
right-padded, or left-padded for a model with recurrent state (docs/recurrent_state.md).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from QEfficient.backends import Program, open_program
from QEfficient.backends.base import state_arrays
from QEfficient.generation.metrics import PerfMetrics
from QEfficient.generation.sampling import Sampler, SamplingParams

if TYPE_CHECKING:
    from QEfficient.generation.speculative import SpeculativeConfig

FINISH_REASONS = ("eos", "stop_string", "length", "ctx_full")


def eos_token_ids(*sources: Any) -> list[int]:
    """The `eos_token_id`s of `sources` (generation config, model config, tokenizer; None is skipped), each an int, a
    list of ints or None."""
    ids: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        ids |= set(value if isinstance(value, (list, tuple)) else [] if value is None else [value])
    return sorted(ids)


def chat_token_ids(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> list[int]:
    """The prompt's token ids for a chat (`[{"role": ..., "content": ...}, ...]`) through the tokenizer's chat
    template, ready for the assistant's answer. The template writes any special tokens itself."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("This model's tokenizer has no chat template: give a plain prompt instead of a chat.")
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class GenerationOutput:
    """What `generate` returns: per prompt, the new text, its token ids and why it stopped."""

    prompts: list[str] | list[list[int]]
    generated_texts: list[str] | list[None]  # None when token-id prompts came without a tokenizer
    generated_ids: list[list[int]]
    finish_reasons: list[str]
    perf_metrics: PerfMetrics


@dataclass
class _Request:
    index: int
    prompt_ids: list[int]
    max_new_tokens: int
    # Per-token inputs besides the ids (`TextGenerator.token_inputs`), `{name: [len(prompt_ids), *shape]}`, or None.
    token_features: dict[str, np.ndarray] | None = None
    # Inputs of the prompt's (single) prefill step besides the tokens, e.g. a vision-language program's images.
    prompt_inputs: dict[str, np.ndarray] | None = None
    # Retained state of the prompt's cache row before its prefill, `{name: [1, ...] or None (zeros)}` (a
    # cross-attention vision-language model's image keys and values), or None: nothing to write.
    initial_state: dict[str, np.ndarray] | None = None
    # The LoRA adapter slot the prompt runs with (`adapter_ids`, docs/lora.md); -1: none (the base model).
    adapter_id: int = -1
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None


# What one prefill chunk costs beyond its tokens, in tokens: a chunk of width w takes about the time of w + 20 tokens
# (SmolLM2-135M fp32, 2 cores: 14 from the chunk-size table, 26 from `benchmarks/bench_prefill_chunks.py`;
# docs/performance.md, "Prefill").
CHUNK_OVERHEAD_TOKENS = 20


def chunk_plan_cost(plan: Sequence[int]) -> int:
    """The estimated cost of prefilling in chunks of `plan`'s widths, in tokens (`CHUNK_OVERHEAD_TOKENS`)."""
    return sum(width + CHUNK_OVERHEAD_TOKENS for width in plan)


def plan_chunks(length: int, widths: Sequence[int]) -> list[int]:
    """`TextGenerator.chunk_plan` over `widths` (ascending, each dividing the next)."""
    widest = widths[-1]
    full, rest = divmod(max(length, 0), widest)
    plan = [widest] * full
    if rest:
        narrower = plan_chunks(rest, widths[:-1]) if len(widths) > 1 else [widest]
        plan += min([widest], narrower, key=lambda p: (chunk_plan_cost(p), len(p)))
    return plan


class TextGenerator:
    """Drives a compiled causal-LM program. Use through `QEFFAutoModelForCausalLM.generate`."""

    def __init__(
        self,
        program: Program,
        tokenizer: Any,
        prefill_seq_len: int,
        ctx_len: int,
        batch_size: int,
        full_batch_size: int | None = None,
        eos_token_ids: Sequence[int] = (),
        left_padding: bool = False,
        single_chunk_prefill: bool = False,
        token_inputs: dict[str, Sequence[int]] | None = None,
        num_speculative_tokens: int | None = None,
        prefill_seq_lens: Sequence[int] | None = None,
    ) -> None:
        """`prefill_seq_lens`: the program's prefill chunk widths when it has several (`prefill_seq_len` is the
        narrowest); each prefill takes the fewest chunks (`chunk_plan`).

        `num_speculative_tokens`: K of a speculative-decoding target program (its verify specialisation has K + 1
        columns, and it returns the logits of up to K + 1 columns per row), or None.

        `left_padding`: prompts end at the last column of their last prefill chunk (recurrent state must not run
        over padding after the prompt). `single_chunk_prefill`: each prompt must fit in one prefill chunk (a
        recurrent prefill that starts from a zero state). `token_inputs`: inputs the program takes per token besides
        the ids, name -> trailing shape (e.g. `{"image_embeds": [H]}`: the image features at the image-token
        positions of a vision-language model); a prompt gives them with `generate(..., token_features=)`, padding
        gets zeros and each generated token its prompt's last row (a multimodal rotary offset carries on)."""
        self.program = program
        self.num_speculative_tokens = num_speculative_tokens
        self.token_inputs = {name: tuple(shape) for name, shape in (token_inputs or {}).items()}
        self.left_padding = left_padding
        self.single_chunk_prefill = single_chunk_prefill
        self.tokenizer = tokenizer
        self.prefill_seq_len = prefill_seq_len
        self.chunk_widths = sorted(prefill_seq_lens or [prefill_seq_len])
        self.ctx_len = ctx_len
        self.batch_size = batch_size
        self.full_batch_size = full_batch_size
        self.eos_token_ids = set(eos_token_ids)
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else getattr(tokenizer, "eos_token_id", None)
        self.pad_token_id = int(pad if pad is not None else 0)  # its value is never read: padding has position -1
        # A program with LoRA adapter inputs (docs/lora.md) takes each input row's adapter slot, `adapter_ids`: per
        # prompt, the slot of the next `generate` call (None: -1 for all, the base model), and per cache row, the slot
        # of the prompt that occupies it.
        self.takes_adapter_ids = "adapter_ids" in program.input_dims
        self.adapter_ids: Sequence[int] | None = None
        self._row_adapters = np.full(max(batch_size, full_batch_size or 0), -1, dtype=np.int64)

    @classmethod
    def with_settings(cls, program: Program, tokenizer: Any, settings: dict[str, Any]) -> TextGenerator:
        """A generator for `program` with `QEFFAutoModelForCausalLM.generation_settings()`; EOS ids are the model's
        and the tokenizer's."""
        eos = sorted({*settings["eos_token_ids"], *eos_token_ids(tokenizer)})
        return cls(
            program,
            tokenizer,
            settings["prefill_seq_len"],
            settings["ctx_len"],
            settings["batch_size"],
            settings["full_batch_size"],
            eos,
            left_padding=settings["left_padding"],
            single_chunk_prefill=settings["single_chunk_prefill"],
            token_inputs=settings.get("token_inputs"),
            num_speculative_tokens=settings.get("num_speculative_tokens"),
            prefill_seq_lens=settings.get("prefill_seq_lens"),
        )

    @classmethod
    def from_program(cls, program: str | Path | Program, tokenizer: Any = None) -> TextGenerator:
        """A generator for a compiled causal-LM program on its own: its directory (what `compile()` returned) or the
        opened program. Neither the PyTorch model nor PyTorch is loaded, so the process holds the program's weights
        and little else. Without a tokenizer, prompts are token ids and outputs are ids only."""
        if not isinstance(program, Program):
            program = open_program(program)
        settings = program.manifest.get("generation")
        if settings is None:
            raise ValueError(
                "This program has no generation settings in its manifest: it was not compiled by "
                "QEFFAutoModelForCausalLM.compile() (or by an older QEfficient); compile it again."
            )
        return cls.with_settings(program, tokenizer, settings)

    # ---- input preparation ----------------------------------------------------------------------

    def tokenize(self, prompts: Sequence[str | Sequence[int]], chat: bool = False) -> list[list[int]]:
        """Token ids per prompt; with `chat=True` through the tokenizer's chat template.

        A prompt given as a list of token ids is used as is.
        """
        if not prompts:
            raise ValueError("generate() needs at least one prompt.")
        rows = []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
                if not prompt:
                    raise ValueError(f"Prompt {i} is empty; every prompt needs at least one token.")
                rows.append(list(prompt))
                continue
            if not isinstance(prompt, str):
                raise TypeError(f"Prompt {i} is a {type(prompt).__name__}; prompts are strings.")
            if self.tokenizer is None:
                raise ValueError("Text prompts need a tokenizer: pass tokenizer=, or give prompts as token ids.")
            if not prompt.strip():
                raise ValueError(f"Prompt {i} is empty; every prompt needs at least one token.")
            if chat:
                rows.append(chat_token_ids(self.tokenizer, [{"role": "user", "content": prompt}]))
            else:
                rows.append(self.tokenizer(prompt)["input_ids"])
        return rows

    def _requests(
        self,
        rows: list[list[int]],
        generation_len: int | None,
        token_features: Sequence[dict[str, np.ndarray] | None] | None = None,
    ) -> list[_Request]:
        if generation_len is not None and generation_len <= 0:
            raise ValueError(f"generation_len must be a positive number of tokens; got {generation_len}.")
        requests = []
        for i, ids in enumerate(rows):
            if not ids:
                raise ValueError(f"Prompt {i} has no tokens.")
            if len(ids) >= self.ctx_len:
                raise ValueError(
                    f"Prompt {i} has {len(ids)} tokens but ctx_len is {self.ctx_len}: it must leave room for at "
                    f"least one new token. Compile with a larger ctx_len (compile(ctx_len=...))."
                )
            if self.single_chunk_prefill and len(ids) > self.prefill_seq_len:
                raise ValueError(
                    f"Prompt {i} has {len(ids)} tokens but prefill_seq_len is {self.prefill_seq_len}: this model keeps "
                    "recurrent state and its prefill starts from a zero state (its scan cannot continue from a stored "
                    "state), so a prompt is prefilled in one chunk. Compile with "
                    f"prefill_seq_len >= {len(ids)}."
                )
            room = self.ctx_len - len(ids)
            features = self._check_token_features(i, len(ids), token_features[i] if token_features else None)
            requests.append(_Request(i, ids, min(room, generation_len or room), features))
        return requests

    def _check_token_features(
        self, index: int, length: int, features: dict[str, np.ndarray] | None
    ) -> dict[str, np.ndarray] | None:
        """A prompt's per-token inputs, checked against `token_inputs` (names, `[length, *shape]`)."""
        if not features:
            return None
        unknown = set(features) - set(self.token_inputs)
        if unknown:
            raise ValueError(
                f"Prompt {index} gives per-token inputs {sorted(unknown)} that the program does not take "
                f"(it takes {sorted(self.token_inputs) or 'none'})."
            )
        checked = {}
        for name, values in features.items():
            values = np.asarray(values, dtype=np.float32)
            if values.shape != (length, *self.token_inputs[name]):
                raise ValueError(
                    f"Prompt {index}'s {name} has shape {values.shape}; expected {(length, *self.token_inputs[name])} "
                    "(one row per prompt token)."
                )
            checked[name] = values
        return checked

    # ---- program steps -------------------------------------------------------------------------

    def step(
        self,
        state: Any,
        ids: np.ndarray,
        positions: np.ndarray,
        batch_index: np.ndarray | None,
        token_features: dict[str, np.ndarray] | None = None,
        extra_inputs: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """One program run on `state`: tokens `ids` at `positions` (-1: padding) into the cache rows `batch_index`
        (continuous batching) or the batch's own rows; returns each row's logits at its last valid column `[B, V]`.
        `token_features`: the per-token inputs `[B, S, *shape]` (zeros when not given); `extra_inputs`: more
        inputs of this run (a prompt's images)."""
        return self.run_logits(state, ids, positions, batch_index, token_features, extra_inputs)[:, -1, :]

    def run_logits(
        self,
        state: Any,
        ids: np.ndarray,
        positions: np.ndarray,
        batch_index: np.ndarray | None,
        token_features: dict[str, np.ndarray] | None = None,
        extra_inputs: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """`step`, returning all the logits the program gives: `[B, n, V]`, the n columns up to each row's last valid
        one (n = 1, or min(S, K + 1) for a speculative-decoding target: `LastValidPosition`)."""
        inputs = {"input_ids": ids.astype(np.int64), "position_ids": positions.astype(np.int64), **(extra_inputs or {})}
        if batch_index is not None:
            inputs["batch_index"] = batch_index.astype(np.int64)
        if self.takes_adapter_ids and "adapter_ids" not in inputs:  # each row: the adapter of its cache row's prompt
            rows = batch_index.reshape(-1) if batch_index is not None else np.arange(ids.shape[0])
            inputs["adapter_ids"] = self._row_adapters[rows].reshape(-1, 1)
        for name, shape in self.token_inputs.items():
            given = (token_features or {}).get(name)
            inputs[name] = given if given is not None else np.zeros((*ids.shape, *shape), dtype=np.float32)
        return self.program.run_with_state(inputs, state)["logits"]

    def _prefill(
        self,
        state: Any,
        rows: list[list[int] | None],
        batch_index: np.ndarray | None,
        token_features: Sequence[dict[str, np.ndarray] | None] | None = None,
        prompt_inputs: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Chunked prefill of padded rows (None = idle row); logits at each row's last prompt token.

        Rows are padded to a whole number of chunks: on the right, or on the left with `left_padding`, so that
        every row ends in the last chunk. Padding has position -1. `token_features`: per row, its per-token inputs
        (or None); `prompt_inputs`: inputs of the first chunk's run (a one-chunk prompt's images).
        """
        ids, positions, ends = self.prefill_inputs(rows)
        features = self._padded_features(rows, ids.shape[1], token_features)
        last: np.ndarray | None = None
        start = 0
        for chunk in self.chunk_plan(ids.shape[1]):
            columns = slice(start, start + chunk)
            logits = self.step(
                state,
                ids[:, columns],
                positions[:, columns],
                batch_index,
                {name: values[:, columns] for name, values in features.items()},
                prompt_inputs if start == 0 else None,
            )
            last = np.zeros_like(logits) if last is None else last
            for r, end in enumerate(ends):
                if rows[r] and start <= end < start + chunk:
                    last[r] = logits[r]
            start += chunk
        return last

    def chunk_plan(self, length: int) -> list[int]:
        """The prefill chunk widths for a prompt of `length` tokens, widest first, cheapest by `chunk_plan_cost`: as
        many chunks of the widest width as the prompt fills, then for the rest one more of it or the plan of the
        narrower widths, whichever costs less (widths 32 and 128: 24 tokens -> [32], 37 -> [32, 32], 100 -> [128],
        140 -> [128, 32], 512 -> four of 128). Each width divides the next, so every chunk starts at a multiple of
        its own width."""
        return plan_chunks(length, self.chunk_widths)

    def _padded_features(
        self,
        rows: list[list[int] | None],
        total: int,
        token_features: Sequence[dict[str, np.ndarray] | None] | None,
    ) -> dict[str, np.ndarray]:
        """The per-token inputs of padded rows, `{name: [len(rows), total, *shape]}`, laid out as
        `prefill_inputs` lays out the ids (zeros elsewhere); empty when no row gives any."""
        if not token_features or not any(token_features):
            return {}
        padded = {
            name: np.zeros((len(rows), total, *shape), dtype=np.float32) for name, shape in self.token_inputs.items()
        }
        for r, (row, features) in enumerate(zip(rows, token_features)):
            begin = total - len(row) if row and self.left_padding else 0
            for name, values in (features or {}).items():
                padded[name][r, begin : begin + len(values)] = values
        return padded

    def _decode_features(self, requests: Sequence[_Request | None]) -> dict[str, np.ndarray] | None:
        """The per-token inputs of one decode step `[len(requests), 1, *shape]`: each request's last prompt row."""
        if not self.token_inputs or not any(r is not None and r.token_features for r in requests):
            return None
        features = {
            name: np.zeros((len(requests), 1, *shape), dtype=np.float32) for name, shape in self.token_inputs.items()
        }
        for i, request in enumerate(requests):
            for name, values in ((request.token_features or {}) if request is not None else {}).items():
                features[name][i, 0] = values[-1]
        return features

    def prefill_inputs(
        self, rows: list[list[int] | None], first_position: int = 0
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Token ids and positions `[len(rows), width of the chunk plan]` for the prefill chunks of `rows` (None = idle
        row), and the column of each row's last token. A row's tokens take positions from `first_position` on (a
        prefix already in the cache row takes the positions before it)."""
        width = len(rows)
        lengths = [len(r) if r else 0 for r in rows]
        total = sum(self.chunk_plan(max(lengths)))
        ids = np.full((width, total), self.pad_token_id, dtype=np.int64)
        positions = np.full((width, total), -1, dtype=np.int64)
        ends = []
        for r, row in enumerate(rows):
            begin = total - lengths[r] if self.left_padding else 0
            ids[r, begin : begin + lengths[r]] = row or []
            positions[r, begin : begin + lengths[r]] = np.arange(first_position, first_position + lengths[r])
            ends.append(begin + lengths[r] - 1)
        return ids, positions, ends

    # ---- generation --------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        generation_len: int | None = None,
        sampling: SamplingParams | None = None,
        stop_strings: Sequence[str] = (),
        streamer: Any = None,
        chat: bool = False,
        token_features: Sequence[dict[str, np.ndarray] | None] | None = None,
        prompt_inputs: Sequence[dict[str, np.ndarray] | None] | None = None,
        initial_state: Sequence[dict[str, np.ndarray] | None] | None = None,
        speculative: SpeculativeConfig | None = None,
    ) -> GenerationOutput:
        """Generate for `prompts` (see `QEFFAutoModelForCausalLM.generate`). `token_features`: per prompt, its
        per-token inputs (`token_inputs`), or None; `prompt_inputs`: per prompt, inputs of its prefill run (a
        vision-language program's images), which needs prompts prefilled one at a time in one chunk;
        `initial_state`: per prompt, retained states `{name: [1, ...]}` written into its cache row before its prefill
        (a cross-attention vision-language model's image keys and values; a prompt with None gets zeros there);
        `speculative`: speculative decoding with a drafter (docs/speculative_decoding.md), on a program compiled with
        `num_speculative_tokens`."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if prompts and all(isinstance(t, int) for t in prompts):
            prompts = [prompts]  # one prompt given as token ids
        if streamer is not None and len(prompts) != 1:
            raise ValueError("Streaming supports one prompt at a time (as transformers' TextStreamer).")
        if stop_strings and self.tokenizer is None:
            raise ValueError("stop_strings need a tokenizer to decode the generated text; pass tokenizer=.")
        if token_features is not None and len(token_features) != len(prompts):
            raise ValueError(f"token_features has {len(token_features)} entries for {len(prompts)} prompts.")
        requests = self._requests(self.tokenize(prompts, chat), generation_len, token_features)
        self._assign_adapters(requests, speculative is not None)
        if prompt_inputs is not None and any(prompt_inputs):
            if self.batch_size != 1 or self.full_batch_size or not self.single_chunk_prefill:
                raise ValueError(
                    "Prompt inputs (images in the language program) need a program compiled with batch_size=1 whose "
                    "prompts are prefilled in one chunk."
                )
            for request, inputs in zip(requests, prompt_inputs):
                request.prompt_inputs = inputs
        if initial_state is not None:
            if len(initial_state) != len(prompts):
                raise ValueError(f"initial_state has {len(initial_state)} entries for {len(prompts)} prompts.")
            # every prompt writes the same states (zeros where it gives none): a cache row may hold a previous prompt's
            names = sorted({name for arrays in initial_state if arrays for name in arrays})
            for request, arrays in zip(requests, initial_state):
                request.initial_state = {name: (arrays or {}).get(name) for name in names} if names else None
        sampler = Sampler(sampling or SamplingParams())
        clock = _Clock()
        if speculative is not None:
            if any(r.prompt_inputs or r.initial_state for r in requests):
                raise ValueError("Speculative decoding takes text prompts only (no prompt inputs or initial state).")
            from QEfficient.generation.speculative import SpeculativeRun

            run = SpeculativeRun(self, speculative, sampler, stop_strings, streamer, clock)
            if self.full_batch_size:
                run.continuous(requests)
            else:
                for start in range(0, len(requests), self.batch_size):
                    for row, request in enumerate(requests[start : start + self.batch_size]):
                        self._place(row, request)
                    run.round(requests[start : start + self.batch_size])
        elif self.full_batch_size:
            self._continuous(requests, sampler, stop_strings, streamer, clock)
        else:
            for start in range(0, len(requests), self.batch_size):
                self._round(requests[start : start + self.batch_size], sampler, stop_strings, streamer, clock)
        if self.tokenizer is None:  # token-id prompts without a tokenizer: ids only
            texts: list[str | None] = [None] * len(requests)
        else:
            texts = [self.tokenizer.decode(r.generated, skip_special_tokens=True) for r in requests]
            prompts = [p if isinstance(p, str) else self.tokenizer.decode(p) for p in prompts]
        metrics = PerfMetrics(
            prompt_tokens=sum(len(r.prompt_ids) for r in requests),
            generated_tokens=sum(len(r.generated) for r in requests),
            ttft_s=clock.first_token - clock.start,
            prefill_s=clock.prefill,
            decode_s=clock.decode,
            total_s=time.perf_counter() - clock.start,
            decode_tokens=clock.decode_tokens,
            draft_tokens=clock.draft_tokens,
            accepted_draft_tokens=clock.accepted_draft_tokens,
            row_steps=clock.row_steps,
        )
        return GenerationOutput(
            prompts, texts, [r.generated for r in requests], [r.finish_reason for r in requests], metrics
        )

    def _assign_adapters(self, requests: list[_Request], speculative: bool) -> None:
        """Each request's LoRA adapter slot (`adapter_ids`, one per prompt); every cache row starts on the slot all
        the prompts share (-1 when they differ), so that rows placed by other code (speculative decoding) run right."""
        if self.takes_adapter_ids:
            unbound = [n for n in self.program.input_dims if n.startswith("lora_") and n not in self.program.constants]
            if unbound:
                raise ValueError(
                    f"This program takes LoRA adapter weights ({unbound[0]}, ...) that are not bound: open it through "
                    "QEFFAutoPeftModelForCausalLM / QEFFAutoLoraModelForCausalLM, or bind them with "
                    "program.bind_constants({name: array}) and set adapter_ids (docs/lora.md)."
                )
        if self.adapter_ids is None:
            return
        if len(self.adapter_ids) != len(requests):
            raise ValueError(f"adapter_ids has {len(self.adapter_ids)} entries for {len(requests)} prompts.")
        if not self.takes_adapter_ids:
            raise ValueError("This program takes no LoRA adapters (it has no adapter_ids input).")
        for request, slot in zip(requests, self.adapter_ids):
            request.adapter_id = int(slot)
        shared = {r.adapter_id for r in requests}
        if speculative and len(shared) > 1 and self.full_batch_size:
            raise ValueError(
                "Speculative decoding with continuous batching runs every prompt on one LoRA adapter; got several."
            )
        self._row_adapters[:] = shared.pop() if len(shared) == 1 else -1

    def _place(self, row: int, request: _Request) -> None:
        """Cache row `row` now serves `request`: its steps use the request's adapter."""
        self.set_row_adapter(row, request.adapter_id)

    def set_row_adapter(self, row: int, slot: int) -> None:
        """Steps of cache row `row` run on LoRA adapter slot `slot` (-1: the base model) from now on (the serving
        engine places its requests with it)."""
        if slot >= 0 and not self.takes_adapter_ids:
            raise ValueError("This program takes no LoRA adapters (it has no adapter_ids input).")
        self._row_adapters[row] = slot

    def _write_initial_state(self, state: Any, row: int, request: _Request) -> None:
        """Write `request`'s initial retained state (zeros where it gives None) into cache row `row`, through
        writable host views of the state."""
        if not request.initial_state:
            return
        views = state_arrays(state)
        for name, value in request.initial_state.items():
            if name not in views:
                raise ValueError(f"The program keeps no retained state {name!r} (it keeps {sorted(views)}).")
            if value is None:
                views[name][row] = 0
                continue
            value = np.asarray(value, dtype=views[name].dtype)
            value = value[0] if value.shape[:1] == (1,) and value.ndim == views[name].ndim else value
            if value.shape != views[name].shape[1:]:
                raise ValueError(
                    f"Prompt {request.index}'s initial {name} has shape {value.shape}; the program keeps "
                    f"{views[name].shape[1:]} per cache row."
                )
            views[name][row] = value

    def _accept(self, request: _Request, token: int, stop_strings: Sequence[str], streamer: Any) -> bool:
        """Record a new token; return True when the request is finished."""
        request.generated.append(token)
        if streamer is not None:
            streamer.put(np.array([token]))
        if token in self.eos_token_ids:
            request.finish_reason = "eos"
        elif stop_strings and any(s in self.tokenizer.decode(request.generated) for s in stop_strings):
            request.finish_reason = "stop_string"
        elif len(request.generated) >= request.max_new_tokens:
            at_ctx_end = len(request.prompt_ids) + len(request.generated) >= self.ctx_len
            request.finish_reason = "ctx_full" if at_ctx_end else "length"
        return request.finish_reason is not None

    def _round(
        self, requests: list[_Request], sampler: Sampler, stop_strings: Sequence[str], streamer: Any, clock: _Clock
    ) -> None:
        """Up to `batch_size` prompts together: prefill all, decode until each one stops."""
        width = self.batch_size
        state = self.program.new_state({"batch_size": width, "seq_len": 1})  # zeros: idle rows need nothing written
        for row, request in enumerate(requests):
            self._write_initial_state(state, row, request)
            self._place(row, request)
        rows: list[list[int] | None] = [r.prompt_ids for r in requests] + [None] * (width - len(requests))
        if streamer is not None:
            streamer.put(np.array(requests[0].prompt_ids))
        t0 = time.perf_counter()
        features = [r.token_features for r in requests] + [None] * (width - len(requests))
        logits = self._prefill(state, rows, None, features, requests[0].prompt_inputs if width == 1 else None)
        clock.add_prefill(time.perf_counter() - t0)
        tokens = sampler(logits)
        active = [not self._accept(r, int(tokens[i]), stop_strings, streamer) for i, r in enumerate(requests)]
        clock.mark_first_token()
        positions = np.array([len(r.prompt_ids) for r in requests] + [-1] * (width - len(requests)))
        while any(active):
            ids = np.zeros((width, 1), dtype=np.int64)
            pos = np.full((width, 1), -1, dtype=np.int64)
            for i, r in enumerate(requests):
                if active[i]:
                    ids[i, 0], pos[i, 0] = r.generated[-1], positions[i]
            t0 = time.perf_counter()
            features = self._decode_features([*requests, *[None] * (width - len(requests))])
            logits = self.step(state, ids, pos, None, features)
            tokens = sampler(logits)
            clock.add_decode(time.perf_counter() - t0, sum(active))
            for i, r in enumerate(requests):
                if active[i]:
                    positions[i] += 1
                    active[i] = not self._accept(r, int(tokens[i]), stop_strings, streamer)
        if streamer is not None:
            streamer.end()

    def _continuous(
        self, requests: list[_Request], sampler: Sampler, stop_strings: Sequence[str], streamer: Any, clock: _Clock
    ) -> None:
        """Continuous batching: `full_batch_size` cache rows; a finished row takes the next waiting prompt."""
        slots = self.full_batch_size
        state = self.program.new_state({"batch_size": slots, "seq_len": 1, "full_batch_size": slots})
        waiting = deque(requests)
        running: dict[int, _Request] = {}
        positions = np.full(slots, -1, dtype=np.int64)

        def admit(slot: int) -> None:
            while waiting:
                request = waiting.popleft()
                if streamer is not None:
                    streamer.put(np.array(request.prompt_ids))
                t0 = time.perf_counter()
                self._write_initial_state(state, slot, request)
                self._place(slot, request)
                logits = self._prefill(state, [request.prompt_ids], np.array([[slot]]), [request.token_features])
                clock.add_prefill(time.perf_counter() - t0)
                finished = self._accept(request, int(sampler(logits)[0]), stop_strings, streamer)
                clock.mark_first_token()
                if not finished:
                    running[slot] = request
                    positions[slot] = len(request.prompt_ids)
                    return
            positions[slot] = -1

        for slot in range(slots):
            admit(slot)
        while running:
            ids = np.zeros((slots, 1), dtype=np.int64)
            for slot, request in running.items():
                ids[slot, 0] = request.generated[-1]
            pos = positions.reshape(slots, 1).copy()
            t0 = time.perf_counter()
            rows = [running.get(slot) for slot in range(slots)]
            logits = self.step(state, ids, pos, np.arange(slots).reshape(slots, 1), self._decode_features(rows))
            tokens = sampler(logits)
            clock.add_decode(time.perf_counter() - t0, len(running))
            for slot, request in list(running.items()):
                positions[slot] += 1
                if self._accept(request, int(tokens[slot]), stop_strings, streamer):
                    del running[slot]
                    admit(slot)
        if streamer is not None:
            streamer.end()


class _Clock:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first_token = 0.0
        self.prefill = 0.0
        self.decode = 0.0
        self.decode_tokens = 0
        self.draft_tokens = 0
        self.accepted_draft_tokens = 0
        self.row_steps = 0  # speculative decoding: running rows summed over target steps

    def add_speculation(self, drafted: int, accepted: int) -> None:
        self.draft_tokens += drafted
        self.accepted_draft_tokens += accepted

    def add_prefill(self, seconds: float) -> None:
        self.prefill += seconds

    def add_decode(self, seconds: float, tokens: int, rows: int = 0) -> None:
        self.decode += seconds
        self.decode_tokens += tokens
        self.row_steps += rows

    def mark_first_token(self) -> None:
        if not self.first_token:
            self.first_token = time.perf_counter()
