"""Tiny random models built from config classes in code (no download), one per architecture family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

# The BERT tokenizer used with every tiny encoder has this vocabulary size.
VOCAB = 30522

_COMMON = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=VOCAB,
    max_position_embeddings=512,
    initializer_range=0.05,
)

ENCODER_CONFIGS: dict[str, dict[str, Any]] = {
    "bert": _COMMON,
    "roberta": {**_COMMON, "max_position_embeddings": 514, "pad_token_id": 1},
    "xlm-roberta": {**_COMMON, "max_position_embeddings": 514, "pad_token_id": 1},
    "camembert": {**_COMMON, "max_position_embeddings": 514, "pad_token_id": 1},
    "electra": {**_COMMON, "embedding_size": 16},
    "albert": {**_COMMON, "embedding_size": 16},
    "mpnet": {**_COMMON, "max_position_embeddings": 514, "pad_token_id": 1},
    "deberta-v2": {
        **_COMMON,
        "max_relative_positions": 64,
        "position_buckets": 32,
        "relative_attention": True,
        "pos_att_type": ["p2c", "c2p"],
    },
    "distilbert": dict(
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        vocab_size=VOCAB,
        max_position_embeddings=512,
        initializer_range=0.05,
    ),
}
ENCODER_TYPES = tuple(ENCODER_CONFIGS)


def tiny_encoder(model_type: str, seed: int = 0) -> PreTrainedModel:
    """A tiny random encoder of `model_type` (fp32, eval mode)."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **ENCODER_CONFIGS[model_type])
    return AutoModel.from_config(config).eval()


def save_tiny_encoder(model_type: str, folder: Path, tokenizer_from: str, seed: int = 0) -> Path:
    """Save a tiny random encoder and a BERT tokenizer into `folder`, so that it loads like a real model."""
    tiny_encoder(model_type, seed).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    return folder


_DECODER_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=256,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=0,
    # random-init logits are tiny: a wider init keeps greedy choices away from ties
    initializer_range=0.2,
)

# Causal LMs; sliding-window models get a window of 8 so that tests run past it.
DECODER_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": _DECODER_COMMON,
    "mistral": {**_DECODER_COMMON, "sliding_window": 8},
    "qwen2": {**_DECODER_COMMON, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
    "qwen3": {**_DECODER_COMMON, "head_dim": 16},
    "gpt2": dict(
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        vocab_size=VOCAB,
        bos_token_id=None,
        eos_token_id=None,
        initializer_range=0.2,
    ),
    "gemma": {**_DECODER_COMMON, "head_dim": 16},
    "gemma2": {**_DECODER_COMMON, "head_dim": 16, "sliding_window": 8},
    "phi3": _DECODER_COMMON,
    "falcon": {**_DECODER_COMMON, "new_decoder_architecture": True, "num_kv_heads": 2},
}
DECODER_TYPES = tuple(DECODER_CONFIGS)


def hf_greedy(model: PreTrainedModel, tokenizer: Any, prompt: str, new_tokens: int = 24) -> list[int]:
    """HF `generate`'s greedy continuation of a text prompt (`new_tokens` tokens unless EOS): the reference of the
    generation tests."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def tiny_decoder(model_type: str, seed: int = 0) -> PreTrainedModel:
    """A tiny random causal LM of `model_type` (fp32, eval mode) for the BERT tokenizer's vocabulary."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **DECODER_CONFIGS[model_type])
    return AutoModelForCausalLM.from_config(config).eval()
