"""`qeff sweep`: run the architecture sweep and write docs/supported_models.{md,json}."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

from QEfficient.sweep import TASKS, sweep_items


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=[*TASKS, "all"], default="all", help="which sweep (default: all three)")
    parser.add_argument("--only", nargs="+", metavar="MODEL_TYPE", help="only these model types (prints; no docs)")
    parser.add_argument("--ci", action="store_true", help="the fixed slice the test suite runs (prints; no docs)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per architecture before it is killed")
    parser.add_argument(
        "--output",
        type=Path,
        help="folder for supported_models.md/.json (default: docs/ for a full sweep, or for one --task, whose rows "
        "replace that task's rows there; nothing for --only/--ci)",
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    import torch
    import transformers

    from QEfficient.sweep.report import read_json, render_markdown, summary, write_json
    from QEfficient.sweep.runner import run_sweep
    from QEfficient.transformers.models.adapters import adapter_sizes

    tasks = TASKS if args.task == "all" else (args.task,)
    items = sweep_items(tasks, args.only, args.ci)
    output = args.output or (Path("docs") if not (args.only or args.ci) else None)
    print(f"Sweeping {len(items)} architectures with {args.workers} workers ...", flush=True)
    start = time.perf_counter()

    def show(row) -> None:  # noqa: ANN001 - SweepRow
        reason = row.detail if row.status == "pass" else f"{row.stage}: {row.reason}"
        print(f"{row.task:<24} {row.model_type:<28} {row.status:<16} {row.seconds:6.1f}s  {reason[:110]}", flush=True)

    rows = run_sweep(items, workers=args.workers, timeout=args.timeout, on_row=show)
    wall = time.perf_counter() - start
    for task in tasks:
        s = summary([r for r in rows if r.task == task])
        print(f"{task}: {s['counts']} pass rate {s['pass_rate']:.1%} of {s['hf_runnable']} HF-runnable")
    print(f"wall time {wall:.0f} s")
    if output is not None:
        command = "qeff sweep" + ("" if args.task == "all" else f" --task {args.task}")
        meta = {
            "command": command,
            "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0],
            "date": datetime.date.today().isoformat(),
            "wall_s": round(wall),
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), {args.workers} workers",
            "adapters": adapter_sizes(),
        }
        previous = output / "supported_models.json"
        if args.task != "all" and previous.exists():  # one task re-swept: the other tasks' rows stay as they were
            old_meta, old_rows = read_json(previous)
            rows = [r for r in old_rows if r.task not in tasks] + rows
            meta["command"] = f"{old_meta['command']}` ({old_meta['date']}), then `{command}"
        write_json(rows, output / "supported_models.json", meta)
        markdown = output / "supported_models.md"
        tmp = markdown.with_suffix(".md.tmp")
        tmp.write_text(render_markdown(meta, rows))
        tmp.replace(markdown)
        print(f"wrote {markdown} and {output / 'supported_models.json'}")
    return 0
