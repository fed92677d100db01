"""HF eager vs QEfficient fp32 / int8 / int4 on SmolLM2-135M-Instruct, in one run: TTFT, prefill and decode
tokens/s, peak RSS (each engine in its own process), fraction of the memory-bandwidth bound, perplexity on a fixed
text and greedy agreement with fp32.

    python benchmarks/bench_generate.py [--model PATH] [--weights fp32 int8 int4] [--peers] [--prompt-tokens 24]
        [--new-tokens 128] [--rounds 3] [--threads N]

The same benchmark is `qeff bench`; how it measures is described in QEfficient/cli/bench.py.
"""

from __future__ import annotations

import sys

from QEfficient.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
