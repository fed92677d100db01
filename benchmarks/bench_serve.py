"""`qeff serve` under load (and llama-cpp-python's server as a peer): requests/s, output tokens/s, TTFT and ITL
p50/p99 and failures per concurrency level, against the targets at 8 streams with 8 slots.

    python benchmarks/bench_serve.py [--concurrency 1 4 8 16] [--requests 200] [--slots 8] [--max-tokens 64]
        [--weights fp32] [--llama-cpp] [--model FILE.gguf] [--threads N]

`--requests` is the request count at the 8-stream level (default 200; the targets' failure count needs 500); the
others scale with their stream count. The same benchmark is `qeff bench --serve`; how it measures is described in
QEfficient/cli/bench_serve.py.
"""

from __future__ import annotations

import argparse
import sys

from QEfficient.cli.bench_serve import add_serve_bench_args, serve_bench_from_args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_serve_bench_args(parser, standalone=True)
    args = parser.parse_args()
    try:
        print(serve_bench_from_args(args), flush=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
