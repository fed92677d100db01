"""LoRA decode speed on SmolLM2-135M-Instruct: the base program against the same model with a rank-16 adapter on every
linear layer (random B != 0), same run.

    python benchmarks/bench_lora.py [--new-tokens 128] [--rank 16] [--rounds 3]

Rows, batch 1, greedy, fp32: the base program; the adapter on `QEFFAutoPeftModelForCausalLM` (one slot: the matrices
are read in place); the adapter on `QEFFAutoLoraModelForCausalLM` compiled with 4 slots (each step gathers its row's
matrices). Each figure is the best of `--rounds` runs after a warm-up, the configs interleaved. A last pair of rows runs
the one-slot program's decode step directly, with the adapter weights bound once (`Program.bind_constants`, what
generate does) against passed as ordinary inputs at every step. Prints the CPU and a markdown table (docs/lora.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from QEfficient.cli.bench import cpu_name, vector_flags

PROMPT = "Write a short story about a dragon who learns to bake bread."


def make_adapter(folder: Path, hf_folder: str, rank: int) -> Path:
    """A peft LoRA adapter of rank `rank` on every linear layer of the model in `hf_folder`, A and B random."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def best_runs(configs: list, new_tokens: int, rounds: int) -> list:
    """Per `(model, generate kwargs)`, the fastest (decode tokens/s) of `rounds` runs, interleaved, after a warm-up."""
    for model, kwargs in configs:
        model.generate(prompts=[PROMPT], generation_len=8, chat=True, **kwargs)
    runs: list[list] = [[] for _ in configs]
    for _ in range(rounds):
        for i, (model, kwargs) in enumerate(configs):
            runs[i].append(model.generate(prompts=[PROMPT], generation_len=new_tokens, chat=True, **kwargs))
    return [max(r, key=lambda run: run.perf_metrics.decode_tokens_per_s) for r in runs]


def decode_steps_per_s(program, steps: int, bound_once: bool) -> float:  # noqa: ANN001 - an opened Program
    """Decode steps per second of a one-row program at positions 0.. `steps`, the adapter weights bound once or fed as
    inputs at every step."""
    constants = dict(program.constants)
    arrays = {name: value.numpy() for name, value in constants.items()}
    if not bound_once:
        program.constants = {}
        program._constant_specs = {}
    try:
        state = program.new_state({"batch_size": 1, "seq_len": 1})
        extra = {} if bound_once else arrays
        t0 = time.perf_counter()
        for position in range(steps):
            inputs = {
                "input_ids": np.array([[1 + position]]),
                "position_ids": np.array([[position]]),
                "adapter_ids": np.zeros((1, 1), np.int64),
                **extra,
            }
            program.run_with_state(inputs, state)
        return steps / (time.perf_counter() - t0)
    finally:
        program.constants = constants
        program._constant_specs = {name: (a.shape, a.dtype) for name, a in arrays.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ctx-len", type=int, default=256)
    args = parser.parse_args()

    from QEfficient import QEFFAutoLoraModelForCausalLM, QEFFAutoModelForCausalLM, QEFFAutoPeftModelForCausalLM
    from QEfficient.utils.default_models import default_causal_lm

    shapes = {"prefill_seq_len": 32, "ctx_len": args.ctx_len, "batch_size": 1}
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores visible); vector flags: {vector_flags()}")
    print(f"SmolLM2-135M-Instruct fp32, batch 1, greedy, {args.new_tokens} new tokens, LoRA rank {args.rank}\n")

    base = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm())
    base.compile(**shapes)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(Path(tmp) / "adapter", base.hf_model.name_or_path, args.rank)
        one = QEFFAutoPeftModelForCausalLM.from_pretrained(adapter, base_model=str(default_causal_lm()))
        one.compile(**shapes)
        four = QEFFAutoLoraModelForCausalLM.from_pretrained(default_causal_lm())
        for i in range(4):
            four.load_adapter(adapter, f"copy{i}")
        four.compile(**shapes, max_adapters=4)
    configs = [(base, {}), (one, {}), (four, {"adapter_name": "copy2"})]
    names = [
        "base program",
        "LoRA, 1 slot (QEFFAutoPeftModelForCausalLM)",
        "LoRA, 4 slots (QEFFAutoLoraModelForCausalLM)",
    ]
    outs = best_runs(configs, args.new_tokens, args.rounds)
    if outs[1].generated_ids != outs[2].generated_ids:
        print("WARNING: the 1-slot and 4-slot programs disagree on the adapter's greedy tokens")
    for model, name in zip((base, one, four), names):
        fused = len(model.program.manifest.get("fused_attention") or [])
        print(f"{name}: {fused} fused attention layers; program {model.program_path}")
    base_rate = outs[0].perf_metrics.decode_tokens_per_s
    print("\n| program | decode tokens/s | vs base |")
    print("|---|---:|---:|")
    for name, out in zip(names, outs):
        rate = out.perf_metrics.decode_tokens_per_s
        print(f"| {name} | {rate:.1f} | {rate / base_rate:.2f}x |")
    steps = min(args.new_tokens, args.ctx_len - 1)
    rates = {mode: [] for mode in (True, False)}
    for _ in range(args.rounds):
        for mode in rates:
            rates[mode].append(decode_steps_per_s(one.program, steps, mode))
    print(f"| 1 slot, decode loop, weights bound once | {max(rates[True]):.1f} | - |")
    print(f"| 1 slot, decode loop, weights fed at every step | {max(rates[False]):.1f} | - |")


if __name__ == "__main__":
    main()
