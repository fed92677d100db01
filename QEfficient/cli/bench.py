"""`qeff bench`: HF eager `generate` and QEfficient's compiled program on the same prompt, in one run.

Batch 1, a prompt of `prompt_tokens` tokens, `new_tokens` greedy tokens; prints TTFT and decode tokens/s
for both, their ratio, and whether the generated tokens are identical.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

BENCH_TEXT = (
    "The history of the city begins with a small fishing village on the river, where traders from the north "
    "and the south met every spring to exchange salt, wool, grain and stories about the lands beyond the sea."
)


@dataclass
class Row:
    engine: str
    ttft_ms: float
    decode_tokens_per_s: float


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_generation_bench(
    model_path: str | None = None,
    prompt_tokens: int = 24,
    new_tokens: int = 128,
    prefill_seq_len: int = 32,
    ctx_len: int = 256,
    rounds: int = 3,
    threads: int | None = None,
) -> str:
    """Run the benchmark and return its report (a markdown table and the run's facts)."""
    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.backends.onnxruntime import default_num_threads
    from QEfficient.utils.default_models import default_causal_lm

    threads = threads or default_num_threads()
    os.environ["QEFF_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    model = QEFFAutoModelForCausalLM.from_pretrained(model_path or default_causal_lm())
    model.compile(prefill_seq_len=prefill_seq_len, ctx_len=ctx_len, batch_size=1)
    tokenizer = model.tokenizer
    ids = tokenizer(BENCH_TEXT * 8)["input_ids"][:prompt_tokens]
    hf = model.hf_model
    prompt = torch.tensor([ids])
    eos_free = {"eos_token_id": None, "pad_token_id": tokenizer.pad_token_id or 0}

    def hf_run(n: int) -> tuple[float, list[int]]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=n,
                do_sample=False,
                min_new_tokens=n,
                **eos_free,
            )
        return time.perf_counter() - start, out[0, len(ids) :].tolist()

    eos = model.hf_model.generation_config.eos_token_id
    model.hf_model.generation_config.eos_token_id = None  # same token count for both engines
    try:
        hf_run(2), model.generate(prompts=[ids], generation_len=2)  # warm-up
        hf_rows, ours_rows, same = [], [], True
        for _ in range(rounds):  # interleaved, because this machine is noisy
            ttft, _ = hf_run(1)
            total, hf_tokens = hf_run(new_tokens)
            hf_rows.append(Row("HF eager (PyTorch)", ttft * 1000, (new_tokens - 1) / max(total - ttft, 1e-9)))
            out = model.generate(prompts=[ids], generation_len=new_tokens)
            m = out.perf_metrics
            ours_rows.append(Row("QEfficient (ONNX Runtime, fp32)", m.ttft_s * 1000, m.decode_tokens_per_s))
            same &= out.generated_ids[0] == hf_tokens
    finally:
        model.hf_model.generation_config.eos_token_id = eos

    def median(rows: list[Row]) -> Row:
        pick = sorted(rows, key=lambda r: r.decode_tokens_per_s)[len(rows) // 2]
        return Row(pick.engine, sorted(r.ttft_ms for r in rows)[len(rows) // 2], pick.decode_tokens_per_s)

    hf_row, ours = median(hf_rows), median(ours_rows)
    lines = [
        f"model: {model.model_name} from {model_path or default_causal_lm()}",
        f"batch 1, prompt {len(ids)} tokens, {new_tokens} new tokens, greedy; prefill_seq_len {prefill_seq_len}, "
        f"ctx_len {ctx_len}; median of {rounds} interleaved rounds after a warm-up",
        f"machine: {_cpu_name()}, {threads} threads; torch {torch.__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__}",
        "",
        "| engine | TTFT (ms) | decode tokens/s | decode vs HF eager |",
        "|---|---:|---:|---:|",
        f"| {hf_row.engine} | {hf_row.ttft_ms:.1f} | {hf_row.decode_tokens_per_s:.1f} | 1.00x |",
        f"| {ours.engine} | {ours.ttft_ms:.1f} | {ours.decode_tokens_per_s:.1f} | "
        f"{ours.decode_tokens_per_s / hf_row.decode_tokens_per_s:.2f}x |",
        "",
        f"generated tokens identical to HF: {'yes' if same else 'NO'}",
    ]
    return "\n".join(lines)
