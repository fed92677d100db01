"""Tiny random configs for any transformers architecture, scaled down from the config class's own defaults.

`tiny_config(model_type)` starts from the config class's defaults and shrinks every size it knows by name
(width, depth, heads, experts, vocabulary, positions, low-rank and state sizes), keeping the class's
structure: the kinds of layer it mixes (`layer_types` and the hybrid patterns), its sliding window (made
short, so that prompts run past it), its attention variant and its sub-configs. A handful of architectures
need one more consistent value; `TINY_OVERRIDES` holds those, per model type.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import CONFIG_MAPPING, PreTrainedConfig

HIDDEN = 64
INTERMEDIATE = 128
EXPERT_INTERMEDIATE = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16
VOCAB = 512
EXPERTS = 4
EXPERTS_PER_TOKEN = 2
POSITIONS = 512
WINDOW = 12
LORA_RANK = 32

_SIZES: dict[str, tuple[int, tuple[str, ...]]] = {
    "hidden": (
        HIDDEN,
        (
            "hidden_size",
            "d_model",
            "n_embd",
            "n_embed",
            "dim",
            "embed_dim",
            "model_dim",
            "embedding_size",
            "word_embed_proj_dim",
            "emb_dim",
            "embedding_dim",
            "attention_hidden_size",
            "lru_width",
            "input_embedding_size",
            "output_embedding_size",
            "d_embed",
            "cross_attention_hidden_size",
            "router_hidden_size",
        ),
    ),
    "intermediate": (
        INTERMEDIATE,
        (
            "intermediate_size",
            "ffn_dim",
            "n_inner",
            "d_ff",
            "ffn_hidden_size",
            "decoder_ffn_dim",
            "encoder_ffn_dim",
            "hidden_dim",
            "dim_ff",
            "dff",
            "d_inner",
            "feed_forward_size",
            "intermediate_size_mlp",
            "dense_intermediate_size",
            "prefix_dense_intermediate_size",
        ),
    ),
    "expert_intermediate": (
        EXPERT_INTERMEDIATE,
        (
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "shared_intermediate_size",
            "shared_experts_intermediate_size",
            "expert_ffn_hidden_size",
            "moe_shared_expert_intermediate_size",
            "expert_intermediate_size",
        ),
    ),
    "layers": (
        LAYERS,
        (
            "num_hidden_layers",
            "n_layer",
            "n_layers",
            "num_layers",
            "decoder_layers",
            "encoder_layers",
            "num_decoder_layers",
            "num_encoder_layers",
        ),
    ),
    "heads": (
        HEADS,
        (
            "num_attention_heads",
            "n_head",
            "n_heads",
            "num_heads",
            "decoder_attention_heads",
            "encoder_attention_heads",
            "attention_heads",
            "num_decoder_attention_heads",
            "num_encoder_attention_heads",
            "swa_num_attention_heads",
            "index_n_heads",
            "indexer_n_heads",
            "linear_num_heads",
        ),
    ),
    "head_dim": (
        HEAD_DIM,
        (
            "head_dim",
            "attention_head_dim",
            "kv_channels",
            "head_size",
            "attention_head_size",
            "dim_head",
            "d_head",
            "qk_nope_head_dim",
            "v_head_dim",
            "swa_head_dim",
            "index_head_dim",
            "indexer_head_dim",
            "linear_key_head_dim",
            "linear_value_head_dim",
            "linear_head_dim",
            "mamba_d_head",
            "mamba_head_dim",
            "qk_head_dim",
        ),
    ),
    "experts": (EXPERTS, ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")),
    "experts_per_token": (
        EXPERTS_PER_TOKEN,
        ("num_experts_per_tok", "moe_topk", "top_k_experts", "moe_k", "num_experts_per_token"),
    ),
    "positions": (
        POSITIONS,
        ("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx", "max_target_positions"),
    ),
    "lora_rank": (LORA_RANK, ("kv_lora_rank", "q_lora_rank", "o_lora_rank", "laurel_rank", "loop_gate_rank")),
    "vocab": (VOCAB, ("vocab_size",)),
}
_SIZE_OF = {name: size for size, names in _SIZES.values() for name in names}
_KV_HEADS = (
    "num_key_value_heads",
    "n_head_kv",
    "num_kv_heads",
    "multi_query_group_num",
    "n_kv_heads",
    "swa_num_key_value_heads",
    "linear_num_key_heads",
    "indexer_kv_heads",
)
_WINDOWS = (
    "sliding_window",
    "sliding_window_size",
    "attention_window_size",
    "local_attention_window_len",
    "window_size",
    "attention_chunk_size",
)
_LAYER_LISTS = (
    "layer_types",
    "mlp_layer_types",
    "layers_block_type",
    "block_types",
    "attention_types",
    "indexer_types",
)
_TEXT_TOKENS = {
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": None,
    "decoder_start_token_id": 1,
    "forced_eos_token_id": None,
    "sep_token_id": 2,
    "cls_token_id": 3,
    "mask_token_id": 4,
}

# Values a size rule cannot derive, per model type (kept consistent with the tiny sizes above).
TINY_OVERRIDES: dict[str, dict[str, Any]] = {}


def _layer_lists(values: dict[str, Any], layers: int) -> list[str]:
    """Fields holding one entry per layer (layer kinds, per-layer flags)."""
    return [
        name
        for name, value in values.items()
        if isinstance(value, list)
        and (name in _LAYER_LISTS or (len(value) == layers and layers > 1))
        and all(isinstance(v, (str, int, bool)) or v is None for v in value)
    ]


def _shrink_layers(values: dict[str, Any]) -> dict[str, Any]:
    """Keep one layer of each distinct combination of per-layer kinds, in order (at least `LAYERS` layers)."""
    count_name = next((n for n in _SIZES["layers"][1] if isinstance(values.get(n), int)), None)
    layers = values[count_name] if count_name else 0
    lists = [n for n in _layer_lists(values, layers) if len(values[n]) == layers] if layers else []
    if not lists:
        return {count_name: LAYERS} if count_name else {}
    combos = list(zip(*(values[n] for n in lists)))
    keep = list(dict.fromkeys(combos))
    keep_index = [combos.index(c) for c in keep]
    while len(keep_index) < LAYERS:
        keep_index.append(keep_index[-1])
    out = {n: [values[n][i] for i in keep_index] for n in lists}
    out[count_name] = len(keep_index)
    return out


def _scaled(name: str, value: Any, defaults: dict[str, Any]) -> Any:
    """The tiny value for one field, or `value` unchanged when no rule applies."""
    if name in _TEXT_TOKENS:
        return _TEXT_TOKENS[name] if value is not None or name == "pad_token_id" else None
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if name in _SIZE_OF:
            return _SIZE_OF[name]
        if name in _KV_HEADS:
            heads = next((defaults[h] for h in _SIZES["heads"][1] if isinstance(defaults.get(h), int)), None)
            return 1 if value == 1 else HEADS if value == heads else KV_HEADS
        if name in _WINDOWS:
            return WINDOW
        if name == "qk_rope_head_dim":
            return HEAD_DIM // 2
        if name.endswith(("_token_id", "_token_index")) and value >= VOCAB:
            return VOCAB - 1 - (sum(map(ord, name)) % 16)
        if name in ("n_group", "topk_group", "first_k_dense_replace", "num_dense_layers"):
            return min(value, 1)
        if name.endswith(("state_size", "d_state")):
            return 16
    if isinstance(value, dict) and name in ("rope_parameters", "rope_scaling"):
        return _scaled_rope(value)
    return value


def _scaled_rope(rope: dict[str, Any]) -> dict[str, Any]:
    rope = dict(rope)
    if "mrope_section" in rope:  # sections split head_dim / 2 rotary pairs
        rope["mrope_section"] = [HEAD_DIM // 2 - 2 * (HEAD_DIM // 8), HEAD_DIM // 8, HEAD_DIM // 8]
    if "original_max_position_embeddings" in rope:
        rope["original_max_position_embeddings"] = POSITIONS // 4
    return rope


def shrink(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict with every known size scaled down; nested sub-config dicts are shrunk too."""
    out = {}
    for name, value in values.items():
        if isinstance(value, dict) and "model_type" in value:
            out[name] = shrink(value)
        else:
            out[name] = _scaled(name, value, values)
    out.update(_shrink_layers(values))
    if "initializer_range" in out:
        # random-init logits are tiny: a wider init keeps greedy choices away from near-ties
        out["initializer_range"] = 0.2
    return out


def tiny_config(model_type: str, **overrides: Any) -> PreTrainedConfig:
    """A tiny config of `model_type`: the class's defaults with every known size scaled down."""
    config_class = CONFIG_MAPPING[model_type]
    fields = {f.name for f in dataclasses.fields(config_class)}
    values = {k: v for k, v in shrink(config_class().to_dict()).items() if k in fields}
    values.update(TINY_OVERRIDES.get(model_type, {}))
    values.update(overrides)
    return config_class(**values)
