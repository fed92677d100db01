"""Continuous-batching throughput: aggregate decode tokens/s with 1 and with 8 cache slots, fp32.

    python benchmarks/bench_continuous_batching.py [--slots 8] [--new-tokens 128] [--weights fp32]

SmolLM2-135M-Instruct, `continuous_batching=True`, prompts of 24 tokens from `QEfficient/generation/eval_text.py`:
one prompt on a 1-slot program, then as many prompts as slots on a `full_batch_size=slots` program, each to
`new_tokens` tokens; prints the aggregate decode tokens/s of both and their ratio.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--weights", choices=["fp32", "int8", "int4"], default="fp32")
    args = parser.parse_args()

    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.generation.eval_text import EVAL_TEXT
    from QEfficient.utils.default_models import default_causal_lm

    model = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm(), continuous_batching=True)
    ids = model.tokenizer(EVAL_TEXT)["input_ids"]
    prompts = [ids[i * 10 : i * 10 + 24] for i in range(args.slots)]
    options = {} if args.weights == "fp32" else {"weights": args.weights}
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


if __name__ == "__main__":
    main()
