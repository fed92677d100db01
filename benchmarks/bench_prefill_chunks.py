"""Time to first token by prompt length for three prefill-chunk settings of one fp32 program: chunks of 32 only, of
128 only, and both (`compile(prefill_seq_len=(32, 128))`, each prompt split by `TextGenerator.chunk_plan`).

    python benchmarks/bench_prefill_chunks.py [--rounds 5] [--lengths 24 37 64 100 140 300 512]

SmolLM2-135M-Instruct fp32, batch 1, ctx_len 640; each setting is its own compiled program (the same graph), and the
settings are timed interleaved: per prompt length and round, one prefill (TTFT: prompt in, first token out) on each.
Prints the median TTFT per length and setting, the plan the two-width program chose, and the CPU.
"""

from __future__ import annotations

import argparse
import statistics

from QEfficient.cli.bench import cpu_name, vector_flags

SETTINGS = {"32 only": [32], "128 only": [128], "32 and 128": [32, 128]}
TEXT = (
    "The history of the city begins with a small fishing village on the river, where traders from the north and the "
    "south met every spring to exchange salt, wool, grain and stories about the lands beyond the sea. "
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=[24, 37, 64, 100, 140, 300, 512])
    args = parser.parse_args()

    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.utils.default_models import default_causal_lm

    model = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm())
    generators = {}
    for name, widths in SETTINGS.items():
        model.compile(prefill_seq_len=widths, ctx_len=640)
        model.program.load_all()
        generators[name] = model.text_generator()
    ids = model.tokenizer(TEXT * 40)["input_ids"]
    ttft: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for length in args.lengths:
            for name, generator in generators.items():
                out = generator.generate([ids[:length]], generation_len=1)
                ttft.setdefault((length, name), []).append(out.perf_metrics.ttft_s * 1000)
    print(f"{cpu_name()}; vector flags: {vector_flags()}; SmolLM2-135M-Instruct fp32, ctx_len 640, batch 1")
    print(f"TTFT in ms, median of {args.rounds} interleaved rounds\n")
    print("| prompt tokens | " + " | ".join(SETTINGS) + " | plan of 32 and 128 |")
    print("|---:|" + "---:|" * len(SETTINGS) + "---|")
    both = generators["32 and 128"]
    for length in args.lengths:
        cells = [f"{statistics.median(ttft[length, name]):.0f}" for name in SETTINGS]
        print(f"| {length} | " + " | ".join(cells) + f" | {both.chunk_plan(length)} |")


if __name__ == "__main__":
    main()
