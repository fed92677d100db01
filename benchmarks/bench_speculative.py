"""Speculative decoding on SmolLM2-135M-Instruct: decode tokens/s with and without, acceptance rate, same run.

    python benchmarks/bench_speculative.py [--new-tokens 128] [-k 8] [--weights fp32] [--draft int4] [--rounds 2]

Two workloads, greedy, batch 1 (chat template on): a rewrite prompt whose answer copies much of its input (the case
prompt lookup is for) and a free-generation prompt. Each runs on the plain program (one logit per row) and on the
speculative target program (`compile(num_speculative_tokens=K)`) with prompt lookup and, with `--draft`, with a draft
model (SmolLM2 itself at other weights: it shows the mechanism and the acceptance rate, not a speed-up, as the draft
is no smaller). The greedy tokens of every speculative run are checked equal to the plain run's. Each figure is the
best of `--rounds` runs after a warm-up. Prints the CPU model and a markdown table (docs/speculative_decoding.md).
"""

from __future__ import annotations

import argparse
import os

from QEfficient.cli.bench import cpu_name, vector_flags

REWRITE_TEXT = (
    "The history of the city begins with a small fishing village on the river, where traders from the north and "
    "the south met every spring to exchange salt, wool, grain and stories about the lands beyond the sea. Over the "
    "centuries the village grew into a market town, then into a walled city with a cathedral, a university and a "
    "harbour that sent ships to every port of the known world."
)
WORKLOADS = {
    "rewrite (output overlaps input)": (
        "Repeat the following text exactly, word for word, then stop.\n\n" + REWRITE_TEXT
    ),
    "free generation": "Write a short story about a dragon who learns to bake bread.",
}


def best_runs(configs: list, prompt: str, new_tokens: int, rounds: int) -> list:
    """Per `(model, generate kwargs)` config, the fastest (by decode tokens/s) of `rounds` greedy runs, the configs
    interleaved round by round (so that a busy machine slows them alike), after one warm-up each. Each config's
    rounds must agree."""
    for model, kwargs in configs:  # warm-up
        model.generate(prompts=[prompt], generation_len=8, chat=True, **kwargs)
    runs: list[list] = [[] for _ in configs]
    for _ in range(rounds):
        for i, (model, kwargs) in enumerate(configs):
            runs[i].append(model.generate(prompts=[prompt], generation_len=new_tokens, chat=True, **kwargs))
    for config_runs in runs:
        if any(run.generated_ids != config_runs[0].generated_ids for run in config_runs):
            raise AssertionError("Greedy runs of the same program disagree.")
    return [max(config_runs, key=lambda run: run.perf_metrics.decode_tokens_per_s) for config_runs in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("-k", "--num-speculative-tokens", type=int, default=8)
    parser.add_argument("--weights", choices=("fp32", "int8", "int4"), default="fp32", help="the target's weights")
    parser.add_argument("--draft", choices=("none", "fp32", "int8", "int4"), default="none", help="draft-model row")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ctx-len", type=int, default=512)
    args = parser.parse_args()

    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.utils.default_models import default_causal_lm

    options = {} if args.weights == "fp32" else {"weights": args.weights}
    shapes = {"prefill_seq_len": 32, "ctx_len": args.ctx_len, "batch_size": 1}
    k = args.num_speculative_tokens
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores visible); vector flags: {vector_flags()}")
    print(f"SmolLM2-135M-Instruct {args.weights}, batch 1, greedy, {args.new_tokens} new tokens, K={k}\n")

    plain = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm())
    plain.compile(**shapes, **options)
    target = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm())
    target.compile(**shapes, num_speculative_tokens=k, **options)
    draft = None
    if args.draft != "none":
        draft = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm())
        draft.compile(**shapes, **({} if args.draft == "fp32" else {"weights": args.draft}))

    rows = []
    for workload, prompt in WORKLOADS.items():
        runs = [("prompt lookup", {"speculative": "prompt_lookup"})]
        if draft is not None:
            runs.append((f"draft model (SmolLM2 {args.draft})", {"draft_model": draft}))
        configs = [(plain, {})] + [(target, {"num_speculative_tokens": k, **kwargs}) for _, kwargs in runs]
        base, *outs = best_runs(configs, prompt, args.new_tokens, args.rounds)
        base_rate = base.perf_metrics.decode_tokens_per_s
        rows.append((workload, "plain decoding", base_rate, "", 1.0, 1.0, True))
        for (name, _), out in zip(runs, outs):
            m = out.perf_metrics
            rate = m.decode_tokens_per_s
            same = out.generated_ids == base.generated_ids
            per_step = m.decode_tokens / m.row_steps
            rows.append((workload, name, rate, f"{m.acceptance_rate:.0%}", per_step, rate / base_rate, same))
            if not same:
                print(f"WARNING: {workload} / {name}: greedy tokens differ from plain decoding")
        print(f"{workload}: {base.generated_texts[0][:160]!r}...")

    print()
    print("| workload | decoding | decode tokens/s | acceptance | tokens per target step | speed-up | same tokens |")
    print("|---|---|---:|---:|---:|---:|---|")
    for workload, name, rate, accepted, per_step, speedup, same in rows:
        print(
            f"| {workload} | {name} | {rate:.1f} | {accepted or '-'} | {per_step:.2f} | {speedup:.2f}x | "
            f"{'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()
