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
