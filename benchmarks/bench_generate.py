"""Decode speed: HF eager `generate` vs QEfficient on SmolLM2-135M-Instruct, in one run.

    python benchmarks/bench_generate.py [--model PATH] [--prompt-tokens 24] [--new-tokens 128] [--rounds 3]

The same benchmark is `qeff bench`.
"""

from __future__ import annotations

import sys

from QEfficient.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
