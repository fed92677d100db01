"""A small progress indicator for long steps (export, compile): a spinner on a terminal, lines otherwise."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def progress(message: str, stream=None) -> Iterator[None]:  # noqa: ANN001 - a text stream
    """Show `message` with elapsed seconds while the block runs, then `done in Ns` (or `failed`)."""
    stream = stream or sys.stderr
    start = time.perf_counter()
    stop = threading.Event()
    interactive = stream.isatty()

    def spin() -> None:
        for frame in itertools.cycle("|/-\\"):
            if stop.wait(0.2):
                return
            stream.write(f"\r{frame} {message} {time.perf_counter() - start:5.1f}s")
            stream.flush()

    if interactive:
        thread = threading.Thread(target=spin, daemon=True)
        thread.start()
    else:
        stream.write(f"{message}...\n")
        stream.flush()
    outcome = "failed"
    try:
        yield
        outcome = "done"
    finally:
        stop.set()
        if interactive:
            thread.join()
            stream.write("\r")
        stream.write(f"{message}: {outcome} in {time.perf_counter() - start:.1f}s\n")
        stream.flush()
