"""Tiny random configs for any transformers architecture, scaled down from the config class's own defaults.

`tiny_config(model_type)` starts from the config class's defaults and shrinks every size it knows by name
(width, depth, heads, experts, vocabulary, positions, low-rank and state sizes), keeping the class's
structure: the kinds of layer it mixes (`layer_types` and the hybrid patterns), its sliding window (made
short, so that prompts run past it), its attention variant and its sub-configs. A handful of architectures
need one more consistent value; `TINY_OVERRIDES` holds those, per model type.
"""

from __future__ import annotations

import dataclasses
import re
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
            "adapter_in_dim",
            "adapter_input_size",
            "adapter_out_dim",
            # vision towers' outputs and projectors, which feed the (tiny) language model
            "out_hidden_size",
            "vision_output_dim",
            "projector_input_dim",
            "projector_output_dim",
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
            "depth",  # vision towers (Qwen2-VL)
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
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    # Moshi's mask is full-causal while its DynamicCache keeps only the last W-1 tokens: past the window HF's
    # own output depends on how the prompt was chunked. The real window (3000) is beyond the sweep's context.
    "moshi": {"sliding_window": POSITIONS},
    # MobileBERT has no normalisation layers (NoNorm is an affine map): with the sweep's wide init (0.2) its
    # activations reach 1e7 and the comparison tests float overflow; the class's own init keeps them near 0.1.
    "mobilebert": {"initializer_range": 0.02},
    # Llama 4's attention-temperature tuning on NoPE layers starts at position floor_scale (8192): bring it
    # within the sweep's context so that the arithmetic is exercised.
    "llama4_text": {"floor_scale": 4, "attn_scale": 0.5},
    # Hybrids whose class defaults hold one kind of layer only: give them one layer of each kind.
    "bamba": {"attn_layer_indices": [1]},
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"]},
    "lfm2": {"layer_types": ["conv", "full_attention"], "full_attn_idxs": [1]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},  # layer 0 dense (num_dense_layers), layer 1 MoE
    # The shared attention block is shared: two hybrid layers use it (HF also ties it across them).
    "zamba": {  # its attention reads [hidden, embeddings] concatenated: twice the width
        "num_hidden_layers": 3,
        "layers_block_type": ["linear_attention", "hybrid", "hybrid"],
        "attention_hidden_size": 2 * HIDDEN,
        "attention_head_dim": 2 * HEAD_DIM,
    },
    "zamba2": {"num_hidden_layers": 3, "layers_block_type": ["linear_attention", "hybrid", "hybrid"]},
    # `attention_types` is [[pattern, repeats]]: one global and one local layer.
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "num_layers": 2},
    "zaya": {"num_experts_per_tok": 1},  # HF supports top-1 routing only
    # the class defaults leave the MoE unset; as in dots.llm1, a dense first layer then MoE layers
    "dots1": {
        "n_routed_experts": EXPERTS,
        "n_shared_experts": 1,
        "num_experts_per_tok": EXPERTS_PER_TOKEN,
        "first_k_dense_replace": 1,
    },
    # input / looped / output sections, one attention layer each (`to_dict` units: each followed by an MLP)
    "dory": {
        "num_hidden_layers": 6,
        "layer_types": ["sliding_attention", "mlp", "full_attention", "mlp", "sliding_attention", "mlp"],
        "n_input_layers": 2,
        "n_recurrent_layers": 2,
        "n_output_layers": 2,
    },
    # latent sizes and depth are not the generic fields shrink() knows: at 256 x 1280 latents and 26 self-attends
    # the random model's logits (~750) differ by ~650 between float32 and float64 PyTorch, so no comparison holds
    "perceiver": {"num_latents": 16, "d_latents": 64, "num_self_attends_per_block": 2},
    # axial position factors: the dims sum to hidden, the shape multiplies to the positions
    "reformer": {"is_decoder": True, "axial_pos_embds_dim": [32, 32], "axial_pos_shape": [16, 32]},
    # the modeling reads rope_theta (no default in the sub-config) and always clips q/k/v
    "dbrx": {"attn_config": {"rope_theta": 500000.0, "clip_qkv": 8.0}},
    # sliding layers: head_dim == their own qk_nope_head_dim (per_layer_config, scaled to 24) + qk_rope_head_dim (8)
    "dots3_note": {"text_config": {"head_dim": 32}},
    "dots3_note_text": {"head_dim": 32},
    # the class defaults name "indexed_attention" layers but leave the indexer unset
    "qwen4_exp": {
        "text_config": {
            "indexer_n_heads": 4,
            "indexer_kv_heads": 1,
            "indexer_head_dim": 16,
            "indexer_budget": 8,
            "indexer_compress_ratio": 4,
        }
    },
    "qwen4_exp_text": {
        "indexer_n_heads": 4,
        "indexer_kv_heads": 1,
        "indexer_head_dim": 16,
        "indexer_budget": 8,
        "indexer_compress_ratio": 4,
    },
    # the class's own checks (its defaults fail them): a drafter without per-layer inputs, MoE or wide MLP
    "gemma4_assistant": {
        "text_config": {
            "hidden_size_per_layer_input": 0,
            "vocab_size_per_layer_input": 0,
            "enable_moe_block": False,
            "use_double_wide_mlp": False,
        }
    },
}


_INDEX_LIST = re.compile(r"(idxs|indices|indexes|layer_ids|_layers)$")  # lists of layer indices
_PERIODS = re.compile(r"^(.*)_period$")  # `X_period` / `X_offset`: layer i is of kind X when i % period == offset
_PER_LAYER_DICTS = ("per_layer_config",)  # {layer index: overrides of the base config}
_SCALAR = (str, int, float, bool, type(None))


def _layer_count(values: dict[str, Any]) -> tuple[str | None, int]:
    """(name, value) of the layer-count field, or (None, 0)."""
    name = next((n for n in _SIZES["layers"][1] if isinstance(values.get(n), int)), None)
    return name, values[name] if name else 0


def _is_index_list(name: str, value: Any, layers: int) -> bool:
    """A strictly increasing list of layer indices (`full_attn_idxs`, `hybrid_layer_ids`, `moe_layers`)."""
    return (
        bool(_INDEX_LIST.search(name))
        and isinstance(value, list)
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < layers for v in value)
        and all(a < b for a, b in zip(value, value[1:]))
    )


def _per_layer_lists(values: dict[str, Any], layers: int) -> list[str]:
    """Fields holding one scalar entry per layer (layer kinds, per-layer flags, sizes or rates)."""
    return [
        name
        for name, value in values.items()
        if isinstance(value, list)
        and len(value) == layers
        and (name in _LAYER_LISTS or layers > 1)
        and not _is_index_list(name, value, layers)
        and all(isinstance(v, _SCALAR) for v in value)
    ]


def _layer_dict_keys(value: dict) -> dict[int, Any]:
    """{layer index: key} of a dict keyed by layer index (keys may be strings such as "05")."""
    return {int(k): k for k in value if str(k).isdigit()}


def _scaled_per_layer(entry: dict[str, Any], defaults: dict[str, Any], tiny: dict[str, Any]) -> dict[str, Any]:
    """One layer's overrides, scaled by the same ratio as the base value (a layer twice as wide stays so)."""
    out = {}
    for name, value in entry.items():
        base, small = defaults.get(name), tiny.get(name)
        if isinstance(value, int) and isinstance(base, int) and isinstance(small, int) and base > 0:
            out[name] = max(1, round(small * value / base))
        else:
            out[name] = _scaled(name, value, defaults)
    return out


def _shrink_layers(values: dict[str, Any], tiny: dict[str, Any]) -> dict[str, Any]:
    """Keep one layer of each distinct combination of per-layer kinds, in order (at least `LAYERS` layers).

    The kinds of a layer come from every per-layer list (any scalar type), every list of layer indices, every
    dict keyed by layer index and every `X_period`/`X_offset` pair. Lists and dicts are re-indexed to the kept
    layers; kinds set by a period can only be kept by keeping a prefix of the layers. A short kind pattern
    (`block_types` repeated over the layers) is reduced to one layer of each kind, in order.
    """
    count_name, layers = _layer_count(values)
    if not count_name:
        return {}
    lists = _per_layer_lists(values, layers)
    index_lists = [n for n, v in values.items() if v and _is_index_list(n, v, layers)]
    dicts = [n for n in _PER_LAYER_DICTS if isinstance(values.get(n), dict) and values[n]]
    periods = [
        (int(values[n]), int(values[f"{m.group(1)}_offset"]))
        for n in values
        if (m := _PERIODS.match(n))
        and isinstance(values[n], int)
        and isinstance(values.get(f"{m.group(1)}_offset"), int)
    ]
    patterns = [
        n
        for n in _LAYER_LISTS
        if isinstance(values.get(n), list)
        and 0 < len(values[n]) < layers
        and n not in lists
        and all(isinstance(v, _SCALAR) for v in values[n])
    ]
    shared = values.get("num_kv_shared_layers") or 0  # the last layers reuse the KV of earlier ones

    def kind(i: int) -> tuple:
        return (
            tuple(values[n][i] for n in lists)
            + tuple(i in values[n] for n in index_lists)
            + tuple(str(sorted(values[n].get(_layer_dict_keys(values[n]).get(i), {}).items())) for n in dicts)
            + tuple(i % period == offset for period, offset in periods)
            + (i >= layers - shared,)
        )

    combos = [kind(i) for i in range(layers)]
    first = list(dict.fromkeys(combos))
    if periods:
        keep = list(range(max(combos.index(c) for c in first) + 1))
    else:
        keep = [combos.index(c) for c in first]
    while len(keep) < LAYERS:
        keep.append(keep[-1])
    out: dict[str, Any] = {count_name: len(keep)}
    if shared:
        out["num_kv_shared_layers"] = sum(i >= layers - shared for i in keep)
    for n in lists:
        out[n] = [_scaled_list_entry(n, values[n], values[n][i]) for i in keep]
    for n in index_lists:
        out[n] = [new for new, old in enumerate(keep) if old in values[n]]
    for n in dicts:
        keys = _layer_dict_keys(values[n])
        out[n] = {
            f"{new:0{len(keys[old])}d}" if isinstance(keys[old], str) else new: _scaled_per_layer(
                values[n][keys[old]], values, tiny
            )
            for new, old in enumerate(keep)
            if old in keys
        }
    for n in patterns:
        out[n] = list(dict.fromkeys(values[n]))
        out[count_name] = max(len(out[n]), LAYERS)
    return out


def _scaled_list_entry(name: str, entries: list[Any], value: Any) -> Any:
    """One entry of a per-layer list; per-layer sizes are scaled relative to the most common one."""
    if name not in _SIZE_OF or not isinstance(value, int) or isinstance(value, bool):
        return value
    common = max(set(entries), key=entries.count)
    return max(1, round(_SIZE_OF[name] * value / common)) if common else value


def _scaled(name: str, value: Any, defaults: dict[str, Any]) -> Any:
    """The tiny value for one field, or `value` unchanged when no rule applies."""
    if name in _TEXT_TOKENS:
        return _TEXT_TOKENS[name] if value is not None or name == "pad_token_id" else None
    if value is None and name == "vocab_size":  # set by a tokenizer at load time (esm)
        return VOCAB
    if value is None and name == "head_dim" and "num_attention_heads" in defaults:
        return HEAD_DIM  # None means hidden / heads, which is HEAD_DIM here; some models read it as is
    if value is None and name == "num_key_value_heads" and "num_attention_heads" in defaults:
        return HEADS  # None means one KV head per attention head
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
        if name in ("n_groups", "mamba_n_groups", "mamba_ngroups"):  # state groups, shared by the mamba heads
            return min(value, 2)
        if name in ("mamba_dt_rank", "time_step_rank", "dt_rank"):
            return HIDDEN // 16
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


# Mamba-2 mixers: (heads, head dim, expand, inner size); heads * head dim must equal the inner size, which is
# `expand * hidden` unless set explicitly.
_MAMBA = (
    ("mamba_n_heads", "mamba_d_head", "mamba_expand", "mamba_d_ssm"),
    ("mamba_num_heads", "mamba_head_dim", "expand", None),
    ("num_heads", "head_dim", "expand", None),
)


def _consistent(defaults: dict[str, Any], tiny: dict[str, Any]) -> dict[str, Any]:
    """Sizes derived from other tiny sizes, so that the scaled config stays self-consistent."""
    out: dict[str, Any] = {}
    hidden = next((tiny[n] for n in _SIZES["hidden"][1] if isinstance(tiny.get(n), int)), HIDDEN)
    for heads, head_dim, expand, inner in _MAMBA:
        if all(isinstance(tiny.get(n), int) for n in (heads, head_dim, expand)):
            size = tiny[expand] * hidden
            if inner and isinstance(tiny.get(inner), int):
                out[inner] = size
            out[heads] = size // tiny[head_dim]
    if all(isinstance(defaults.get(n), int) for n in ("qk_nope_head_dim", "qk_rope_head_dim")):
        # MLA: sizes that are the whole query-key head (nope + rope) or its rotary part stay so
        full, rope = defaults["qk_nope_head_dim"] + defaults["qk_rope_head_dim"], defaults["qk_rope_head_dim"]
        for name in (*_SIZES["head_dim"][1], "qk_head_dim"):
            if name not in ("qk_nope_head_dim", "v_head_dim") and isinstance(defaults.get(name), int):
                if defaults[name] == full:
                    out[name] = tiny["qk_nope_head_dim"] + tiny["qk_rope_head_dim"]
                elif defaults[name] == rope:
                    out[name] = tiny["qk_rope_head_dim"]
    if isinstance(defaults.get("rotary_dim"), int):  # partial rotary: keep the rotary share of the head
        full_head = next((defaults[n] for n in _SIZES["hidden"][1] if isinstance(defaults.get(n), int)), 0)
        full_heads = next((defaults[n] for n in _SIZES["heads"][1] if isinstance(defaults.get(n), int)), 0)
        share = defaults["rotary_dim"] / (full_head // full_heads) if full_head and full_heads else 0.5
        out["rotary_dim"] = max(2, 2 * round(HEAD_DIM * min(share, 1) / 2))
    value_heads, key_heads = defaults.get("linear_num_value_heads"), defaults.get("linear_num_key_heads")
    if (
        isinstance(value_heads, int)
        and isinstance(key_heads, int)
        and isinstance(tiny.get("linear_num_key_heads"), int)
    ):
        out["linear_num_value_heads"] = tiny["linear_num_key_heads"] * max(1, value_heads // key_heads)
    if any(isinstance(tiny.get(n), int) and tiny[n] > 1 for n in _SIZES["experts"][1]):
        for name in _SIZES["experts_per_token"][1]:
            if name in tiny and tiny[name] is None:
                out[name] = EXPERTS_PER_TOKEN
    return out


def shrink(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict with every known size scaled down; nested sub-config dicts are shrunk too."""
    out = {}
    for name, value in values.items():
        if isinstance(value, dict) and "model_type" in value:
            out[name] = shrink(value)
        else:
            out[name] = _scaled(name, value, values)
    out.update(_shrink_layers(values, out))
    out.update(_consistent(values, out))
    if "initializer_range" in out:
        # random-init logits are tiny: a wider init keeps greedy choices away from near-ties
        out["initializer_range"] = 0.2
    return out


def tiny_config(model_type: str, **overrides: Any) -> PreTrainedConfig:
    """A tiny config of `model_type`: the class's defaults with every known size scaled down."""
    config_class = CONFIG_MAPPING[model_type]
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    try:
        defaults = config_class()
    except Exception:  # noqa: BLE001 - a class whose own defaults fail its checks: start from the override
        defaults = config_class(**TINY_OVERRIDES.get(model_type, {}))
    values = {k: v for k, v in shrink(defaults.to_dict()).items() if k in fields}
    for name in _TEXT_TOKENS:  # a token id cleared above keeps its default where the field cannot be None
        if name in values and values[name] is None and "None" not in str(fields[name].type):
            values[name] = getattr(defaults, name)
    values = _merged(_merged(values, TINY_OVERRIDES.get(model_type, {})), overrides)
    return config_class(**values)


def _merged(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`values` with `overrides` applied; an override of a sub-config dict updates it field by field."""
    out = dict(values)
    for name, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(name), dict) and name not in _PER_LAYER_DICTS:
            out[name] = _merged(out[name], value)
        else:
            out[name] = value
    return out
