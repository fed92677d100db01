"""The architecture sweep (`qeff sweep`): every architecture in transformers' auto mappings, tiny, against HF.

- `tiny_configs`: a tiny config for any model type, scaled from the config class's defaults;
- `checks`, `checks_encoders`, `checks_speech`, `checks_ctc`, `checks_image_text`: one check per task;
- `runner`: isolated worker processes with a timeout per check;
- `report`: `docs/supported_models.json` and the markdown rendered from it.
"""

from __future__ import annotations

TASKS = ("causal-lm", "encoder", "sequence-classification", "speech-seq2seq", "ctc", "image-text-to-text")

# transformers' auto mapping behind each task that sweeps a whole mapping.
TASK_MAPPINGS = {
    "causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "speech-seq2seq": "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "ctc": "MODEL_FOR_CTC_MAPPING_NAMES",
    "image-text-to-text": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
}

# The fixed slice the test suite runs (the full sweep is one command: `qeff sweep`): the reference families,
# plus one architecture for each generic mechanism and for the adapter.
CI_SLICE: dict[str, tuple[str, ...]] = {
    "causal-lm": (
        "bert",  # encoder family as a decoder (is_decoder)
        "bloom",  # ALiBi from the 4-D mask
        "cohere",  # interleaved rotary (repeat_interleave with a negative dim)
        "deepseek_v2",  # an adapter (complex rotary)
        "deepseek_v32",  # sparse indexed attention: retained indexer keys
        "gemma3",  # multimodal model, text-only
        "jetmoe",  # an adapter (expert loop) + the index_add symbolic
        "llama4_text",  # chunked attention + an adapter
        "falcon_h1",  # recurrent state and a KV cache in one layer; chunked prefill continues from the state
        "inkling_text",  # hybrid_sliding layers; queries numbered from cache.get_query_offset()
        "mamba",  # recurrent state, prefill from zero in one chunk
        "qwen3_next",  # gated delta rule: linalg_solve_triangular
        "recurrent_gemma",  # unsupported: recurrent state outside transformers' Cache
        "mllama",  # cross-attention layers unused by text: no buffers
        "pegasus",  # positions numbered from cache.get_seq_length()
    ),
    "encoder": ("bert", "convbert", "deberta-v2", "mobilebert", "modernbert", "roberta"),
    "sequence-classification": ("bert", "deepseek_v2", "gpt2", "llama", "qwen2", "qwen3_moe"),
    "speech-seq2seq": ("whisper", "voxtral"),  # an encoder-decoder; an audio LLM (features merged into embeddings)
    "ctc": ("wav2vec2", "hubert"),
    "image-text-to-text": (
        *("llava", "llava_next", "mistral3", "gemma3", "qwen2_5_vl", "internvl", "llama4", "mllama"),
        "blip-2",  # the language model runs on merged embeddings
        "paligemma",  # a bidirectional prefix
    ),
}


def task_types(task: str) -> list[str]:
    """Every model type the sweep checks for `task`."""
    if task in TASK_MAPPINGS:
        from transformers.models.auto import modeling_auto

        return list(getattr(modeling_auto, TASK_MAPPINGS[task]))
    from QEfficient.sweep import checks_encoders

    if task == "encoder":
        return checks_encoders.encoder_sweep_types()
    if task == "sequence-classification":
        return checks_encoders.sequence_classification_sweep_types()
    raise ValueError(f"Unknown sweep task {task!r}; choose from {', '.join(TASKS)}.")


def sweep_items(
    tasks: tuple[str, ...] = TASKS, only: list[str] | None = None, ci: bool = False
) -> list[tuple[str, str]]:
    """(task, model_type) pairs: all of each task's types, those in `only`, or the CI slice."""
    from QEfficient.sweep.report import reference_families

    items = []
    for task in tasks:
        types = task_types(task)
        if ci:
            wanted = set(CI_SLICE[task]) | set(reference_families().get(task, {}).values())
            types = [t for t in types if t in wanted]
        elif only:
            unknown = set(only) - set().union(*(task_types(t) for t in tasks))
            if unknown:
                raise ValueError(f"Model types not in the sweep's mappings: {', '.join(sorted(unknown))}.")
            types = [t for t in types if t in only]
        items += [(task, t) for t in types]
    return items
