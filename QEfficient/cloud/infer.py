"""`python -m QEfficient.cloud.infer`: `qeff infer` under the reference system's entry point and argument names.

python -m QEfficient.cloud.infer --model_name PATH --prompt_len 32 --ctx_len 128 --prompt "My name is"
"""

from __future__ import annotations

import argparse
import logging
import sys

from QEfficient.cli.main import add_infer_args, cmd_infer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m QEfficient.cloud.infer", description=__doc__.splitlines()[0])
    add_infer_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return cmd_infer(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
