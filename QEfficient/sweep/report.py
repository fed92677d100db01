"""The sweep's outputs: `docs/supported_models.json` (the rows) and `docs/supported_models.md` (rendered from them).

The markdown is a pure function of the JSON, so the table in the docs is never edited by hand: `qeff sweep`
writes both, and a test checks that the committed markdown is the rendering of the committed JSON.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from QEfficient.sweep.runner import FAIL, HF_CANNOT_BUILD, HF_CANNOT_RUN, PASS, UNSUPPORTED, SweepRow

TASK_TITLES = {
    "causal-lm": "Causal LMs (`QEFFAutoModelForCausalLM`)",
    "encoder": "Encoders (`QEFFAutoModel`)",
    "sequence-classification": "Sequence classification (`QEFFAutoModelForSequenceClassification`)",
    "speech-seq2seq": "Speech to text (`QEFFAutoModelForSpeechSeq2Seq`)",
    "ctc": "CTC speech recognition (`QEFFAutoModelForCTC`)",
    "image-text-to-text": "Vision-language (`QEFFAutoModelForImageTextToText`)",
}
TASK_CHECKS = {
    "causal-lm": "HF `generate` = transformed PyTorch = ONNX Runtime = compiled program, exact greedy tokens "
    "(2 prompts x 24 new tokens, one prompt longer than the sliding window and than `prefill_seq_len`)",
    "encoder": "mean-pooled `last_hidden_state` vs HF + pooling in PyTorch, 1e-5 absolute, on a right-padded "
    "batch, compiled at the batch's padded length (a few models, e.g. ConvBERT, Nystromformer, YOSO, let padding "
    "reach the valid tokens, so their output changes with the amount of padding, in HF as in a program compiled "
    "for longer buckets)",
    "sequence-classification": "logits vs HF, 1e-5 absolute, on a right-padded batch, compiled at the batch's "
    "padded length",
    "speech-seq2seq": "HF `generate` = compiled encoder and decoder programs, exact greedy tokens",
    "ctc": "logits vs HF, 1e-4 absolute, on clips of two lengths",
    "image-text-to-text": "HF `generate` = compiled vision and language programs (and the single-program mode), "
    "exact greedy tokens",
}

# The causal families the reference system validates (shared/reference/qefficient.md §6) -> model type.
REFERENCE_FAMILIES: dict[str, str] = {
    "Llama": "llama",
    "Mistral": "mistral",
    "Mixtral": "mixtral",
    "Qwen2": "qwen2",
    "Qwen3": "qwen3",
    "Qwen3-MoE": "qwen3_moe",
    "Gemma": "gemma",
    "Gemma2": "gemma2",
    "Gemma3 (text)": "gemma3_text",
    "Phi": "phi",
    "Phi3": "phi3",
    "Falcon": "falcon",
    "GPT-2": "gpt2",
    "GPT-J": "gptj",
    "GPTBigCode (StarCoder)": "gpt_bigcode",
    "StarCoder2": "starcoder2",
    "CodeGen": "codegen",
    "MPT": "mpt",
    "Granite": "granite",
    "GraniteMoE": "granitemoe",
    "OLMo2": "olmo2",
    "GPT-OSS": "gpt_oss",
    "DeepSeek-V3": "deepseek_v3",
    "GLM4-MoE": "glm4_moe",
}

# The speech and vision-language families the reference system validates (qefficient.md §6), per task.
OTHER_REFERENCE_FAMILIES: dict[str, dict[str, str]] = {
    "speech-seq2seq": {"Whisper": "whisper"},
    "ctc": {"Wav2Vec2": "wav2vec2"},
    "image-text-to-text": {
        "LLaVA": "llava",
        "LLaVA-NeXT / Granite-Vision": "llava_next",
        "Gemma3": "gemma3",
        "Mllama": "mllama",
        "Qwen2.5-VL": "qwen2_5_vl",
        "InternVL": "internvl",
        "Llama4": "llama4",
        "Mistral3": "mistral3",
    },
}


def reference_families() -> dict[str, dict[str, str]]:
    """Task -> {family: model type}: the reference system's validated families, causal and the others."""
    return {"causal-lm": REFERENCE_FAMILIES, **OTHER_REFERENCE_FAMILIES}


def write_json(rows: list[SweepRow], path: Path, meta: dict[str, Any]) -> None:
    """Write `{"meta": ..., "rows": [...]}` (atomically: temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": [r.to_dict() for r in rows]}, indent=1) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> tuple[dict[str, Any], list[SweepRow]]:
    data = json.loads(Path(path).read_text())
    return data["meta"], [SweepRow(**r) for r in data["rows"]]


def summary(rows: list[SweepRow]) -> dict[str, Any]:
    """Counts per status and the pass rate over the architectures HF itself can build and run tiny."""
    counts = Counter(r.status for r in rows)
    runnable = sum(counts[s] for s in (PASS, FAIL, UNSUPPORTED))
    return {
        "total": len(rows),
        "counts": {s: counts[s] for s in (PASS, FAIL, UNSUPPORTED, HF_CANNOT_BUILD, HF_CANNOT_RUN)},
        "hf_runnable": runnable,
        "pass_rate": counts[PASS] / runnable if runnable else 0.0,
        "pass_rate_supported": counts[PASS] / (counts[PASS] + counts[FAIL]) if counts[PASS] + counts[FAIL] else 0.0,
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def render_markdown(meta: dict[str, Any], rows: list[SweepRow]) -> str:
    """The supported-models page: summary, reference families, adapters, then one table per task."""
    lines = [
        "# Supported models",
        "",
        "<!-- Generated by `qeff sweep` from supported_models.json; do not edit by hand. -->",
        "",
        f"Generated by `{meta['command']}` with transformers {meta['transformers']} and torch {meta['torch']} "
        f"on {meta['date']} ({meta['wall_s']:.0f} s wall time on {meta['machine']}).",
        "",
        "Every architecture in transformers' auto mappings is built as a tiny random model from its config "
        "class (defaults scaled down: 2-4 layers keeping each kind of layer, width 64, vocabulary 512, short "
        "sliding windows), saved, loaded through QEfficient's public `from_pretrained`, and checked against "
        "HF itself. Status: **pass**; **fail** (stage and first line of the error); **unsupported** (a "
        "mechanism QEfficient does not implement yet, with the reason); **hf-cannot-build** / **hf-cannot-run** "
        "(HF itself cannot build or run the tiny model on CPU: listed, not counted).",
        "",
        "| task | architectures | pass | fail | unsupported | HF cannot build / run | pass rate (of HF-runnable) |",
        "|---|---|---|---|---|---|---|",
    ]
    tasks = [t for t in TASK_TITLES if any(r.task == t for r in rows)]
    for task in tasks:
        s = summary([r for r in rows if r.task == task])
        c = s["counts"]
        lines.append(
            f"| {task} | {s['total']} | {c[PASS]} | {c[FAIL]} | {c[UNSUPPORTED]} | "
            f"{c[HF_CANNOT_BUILD]} / {c[HF_CANNOT_RUN]} | {s['pass_rate']:.0%} ({c[PASS]}/{s['hf_runnable']}) |"
        )
    by_task = {(r.task, r.model_type): r for r in rows}
    families = [(t, f, m) for t, fams in reference_families().items() if t in tasks for f, m in fams.items()]
    if families:
        ok = sum(by_task.get((t, m)) is not None and by_task[(t, m)].status == PASS for t, _, m in families)
        lines += [
            "",
            f"## Reference families ({ok}/{len(families)} pass)",
            "",
            "The families the reference system (Qualcomm's QEfficient) validates, all present in transformers 5.x:",
            "",
            "| task | family | model type | status | reason |",
            "|---|---|---|---|---|",
        ]
        for task, family, model_type in families:
            row = by_task.get((task, model_type))
            status, reason = (row.status, _cell(row.reason) if row.status != PASS else "") if row else ("not swept", "")
            lines.append(f"| {task} | {family} | `{model_type}` | {status} | {reason} |")
    adapters = meta.get("adapters", {})
    lines += [
        "",
        f"## Adapters ({len(adapters)})",
        "",
        "Model-specific code, registered by architecture in `QEfficient/transformers/models/adapters.py` "
        "(see [adding a model](adding_a_model.md)). Every other pass comes from the generic mechanism.",
        "",
    ]
    if adapters:
        lines += ["| architecture | adapter package | lines |", "|---|---|---|"]
        lines += [f"| {arch} | `{a['module']}` | {a['lines']} |" for arch, a in sorted(adapters.items())]
    else:
        lines.append("No architecture needs model-specific code: every pass comes from the generic mechanism.")
    for task in tasks:
        lines += ["", f"## {TASK_TITLES[task]}", "", f"Check: {TASK_CHECKS[task]}.", ""]
        lines += ["| model type | architecture | status | stage | reason | adapter |", "|---|---|---|---|---|---|"]
        for r in sorted((r for r in rows if r.task == task), key=lambda r: r.model_type):
            reason = r.reason if r.status != PASS else r.detail
            lines.append(
                f"| `{r.model_type}` | {r.architecture} | {r.status} | {_cell(r.stage)} | {_cell(reason)} | "
                f"{r.adapter} |"
            )
    return "\n".join(lines) + "\n"
