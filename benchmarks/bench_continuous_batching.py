"""Continuous-batching throughput: aggregate decode tokens/s with 8 cache slots against batch 1, fp32.

    python benchmarks/bench_continuous_batching.py [--slots 8] [--new-tokens 128] [--weights fp32]

SmolLM2-135M-Instruct, prompts of 24 tokens from `QEfficient/generation/eval_text.py`, each to `new_tokens` tokens:
one prompt on the plain batch-1 program, one on a 1-slot continuous-batching program, then as many prompts as slots
on a `full_batch_size=slots` program; prints the aggregate decode tokens/s of each and the ratios.
"""

from __future__ import annotations

import argparse

from QEfficient.cli.bench import QEFF_WEIGHTS, compile_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--weights", choices=QEFF_WEIGHTS, default="fp32")
    args = parser.parse_args()

    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.generation.eval_text import EVAL_TEXT
    from QEfficient.utils.default_models import default_causal_lm

    options = compile_options(args.weights)
    plain = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm())
    ids = plain.tokenizer(EVAL_TEXT)["input_ids"]
    prompts = [ids[i * 10 : i * 10 + 24] for i in range(args.slots)]
    plain.compile(prefill_seq_len=32, ctx_len=256, **options)
    plain.generate(prompts=prompts[:1], generation_len=4)  # warm-up
    batch1 = plain.generate(prompts=prompts[:1], generation_len=args.new_tokens).perf_metrics.decode_tokens_per_s
    print(f"batch 1 (plain program), 1 prompt x {args.new_tokens} tokens, {args.weights}: decode {batch1:.1f} tokens/s")
    del plain

    model = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm(), continuous_batching=True)
    rates = {}
    for slots in (1, args.slots):
        model.compile(prefill_seq_len=32, ctx_len=256, full_batch_size=slots, **options)
        model.generate(prompts=prompts[:slots], generation_len=4)  # warm-up
        metrics = model.generate(prompts=prompts[:slots], generation_len=args.new_tokens).perf_metrics
        rates[slots] = metrics.decode_tokens_per_s
        print(
            f"{slots} slot(s), {slots} prompt(s) x {args.new_tokens} tokens, {args.weights}: aggregate decode "
            f"{rates[slots]:.1f} tokens/s ({metrics.generated_tokens} tokens in {metrics.total_s:.1f} s)"
        )
    print(f"{args.slots} slots / 1 slot: {rates[args.slots] / rates[1]:.2f}x")
    print(f"{args.slots} slots / batch 1 (plain program): {rates[args.slots] / batch1:.2f}x")


if __name__ == "__main__":
    main()
