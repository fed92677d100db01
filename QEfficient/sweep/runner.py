"""Run the architecture sweep: one tiny random model per architecture, checked in isolated worker processes.

Each check builds the tiny model with HF, runs HF itself first (an architecture HF cannot build or run tiny on
CPU is recorded as such and does not count against us), then loads the saved model through QEfficient's
public path and validates every stage against HF. Workers are separate processes so that a crash, a hang
or a leak in one architecture cannot take the sweep down; a check that runs past its timeout is killed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from QEfficient.utils.errors import first_line

# Status of one architecture.
PASS = "pass"
FAIL = "fail"
UNSUPPORTED = "unsupported"
HF_CANNOT_BUILD = "hf-cannot-build"
HF_CANNOT_RUN = "hf-cannot-run"
STATUSES = (PASS, FAIL, UNSUPPORTED, HF_CANNOT_BUILD, HF_CANNOT_RUN)


@dataclass
class SweepRow:
    """The result for one architecture."""

    task: str  # "causal-lm", "encoder", "sequence-classification"
    model_type: str
    architecture: str
    status: str = FAIL
    stage: str = ""  # the stage that failed (empty on pass)
    reason: str = ""  # first line of the failure
    adapter: str = ""  # the adapter used, if any
    detail: str = ""  # e.g. "48/48 tokens" or "max |diff| 3e-7"
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str):  # a mapping entry may name several classes (Funnel)
            self.architecture = " / ".join(self.architecture)

    def to_dict(self) -> dict:
        return asdict(self)


class StageFailure(Exception):
    """Raised inside a check to end it with a given status at a named stage."""

    def __init__(self, status: str, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.stage, self.reason = status, stage, reason


def run_stage(stage: str, status: str, fn: Callable, *args, **kwargs):
    """Call `fn`; any exception becomes a `StageFailure(status, stage, first line)`."""
    try:
        return fn(*args, **kwargs)
    except StageFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - the whole point is to record it
        raise StageFailure(status, stage, first_line(exc)) from exc


def load_stage(load: Callable, *args, unsupported: tuple[type[BaseException], ...], **kwargs):
    """Call `load` (QEfficient's public `from_pretrained` on the saved tiny model): an error of an `unsupported` type
    (a mechanism QEfficient does not implement) ends the check as UNSUPPORTED at "transform", with the error's first
    line; any other error as FAIL at "load and transform"."""
    try:
        return load(*args, **kwargs)
    except unsupported as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise StageFailure(UNSUPPORTED, "transform", lines[0] if lines else type(exc).__name__) from exc
    except Exception as exc:  # noqa: BLE001 - recorded as the check's failure
        raise StageFailure(FAIL, "load and transform", first_line(exc)) from exc


def _worker(tasks: mp.Queue, results: mp.Queue, home: str) -> None:
    os.environ.setdefault("QEFF_NUM_THREADS", "1")
    os.environ["QEFF_HOME"] = home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    log_dir = os.path.join(home, "logs")
    os.makedirs(log_dir, exist_ok=True)
    log = os.open(os.path.join(log_dir, f"worker-{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)  # exporter dumps and warnings go to the worker's log, not the sweep's output
    os.dup2(log, 2)
    import torch

    torch.set_num_threads(1)
    from QEfficient.sweep.checks import CHECKS

    while True:
        item = tasks.get()
        if item is None:
            return
        task, model_type = item
        results.put(("start", task, model_type, os.getpid()))
        print(f"==== {task} {model_type}", flush=True)
        started = time.perf_counter()
        try:
            row = CHECKS[task](model_type)
        except Exception as exc:  # noqa: BLE001 - a bug in the check itself is still one row
            row = SweepRow(task, model_type, "?", FAIL, "sweep", first_line(exc))
            traceback.print_exc()
        row.seconds = round(time.perf_counter() - started, 1)
        results.put(("done", task, model_type, row.to_dict()))


def run_sweep(
    items: Iterable[tuple[str, str]],
    workers: int = 2,
    timeout: float = 300.0,
    home: str | None = None,
    on_row: Callable[[SweepRow], None] | None = None,
) -> list[SweepRow]:
    """Check every `(task, model_type)` in `workers` processes; a check past `timeout` seconds is killed.

    `home` is the QEfficient cache the workers export into (a temporary one by default); `on_row` is called
    as each result arrives.
    """
    items = list(items)
    ctx = mp.get_context("spawn")
    tasks: mp.Queue = ctx.Queue()
    results: mp.Queue = ctx.Queue()
    for item in items:
        tasks.put(item)
    own_home = home is None
    home = home or tempfile.mkdtemp(prefix="qeff-sweep-")
    procs: dict[int, mp.Process] = {}
    running: dict[int, tuple[str, str, float]] = {}  # pid -> (task, model_type, start)
    rows: dict[tuple[str, str], SweepRow] = {}

    def spawn() -> None:
        proc = ctx.Process(target=_worker, args=(tasks, results, home), daemon=True)
        proc.start()
        procs[proc.pid] = proc

    def finish(row: SweepRow) -> None:
        rows[(row.task, row.model_type)] = row
        if on_row is not None:
            on_row(row)

    for _ in range(min(workers, len(items))):
        spawn()
    try:
        while len(rows) < len(items):
            try:
                message = results.get(timeout=1.0)
            except queue.Empty:
                message = None
            if message is not None:
                kind, task, model_type, payload = message
                if kind == "start":
                    running[payload] = (task, model_type, time.perf_counter())
                else:
                    for pid, (t, m, _) in list(running.items()):
                        if (t, m) == (task, model_type):
                            del running[pid]
                    finish(SweepRow(**payload))
            now = time.perf_counter()
            for pid, proc in list(procs.items()):
                if pid not in running and not proc.is_alive() and message is None:
                    raise RuntimeError(
                        f"A sweep worker exited (code {proc.exitcode}) before starting a check; run the sweep from "
                        "a script guarded by `if __name__ == '__main__':` (workers are spawned processes)."
                    )
            for pid, (task, model_type, start) in list(running.items()):
                proc = procs[pid]
                dead = not proc.is_alive()
                if dead or now - start > timeout:
                    proc.kill()
                    proc.join()
                    del running[pid], procs[pid]
                    reason = f"worker exited with code {proc.exitcode}" if dead else f"timed out after {timeout:.0f} s"
                    finish(SweepRow(task, model_type, "?", FAIL, "sweep", reason, seconds=round(now - start, 1)))
                    if len(rows) + len(running) < len(items):
                        spawn()
    finally:
        for _ in procs:
            tasks.put(None)
        for proc in procs.values():
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        if own_home:
            import shutil

            shutil.rmtree(home, ignore_errors=True)
    return [rows[(t, m)] for t, m in items]
