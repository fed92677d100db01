"""Where an fp32 decode step's time goes, per weight MatMul, against other kernels on the same bytes: what stands
between our fp32 program and llama.cpp's F32 decode on SmolLM2-135M.

    python benchmarks/fp32_matmul_kernels.py [--rounds 5] [--threads 2]

1. The compiled fp32 program (`qeff bench`'s, prefill_seq_len 32, ctx_len 256) under ONNX Runtime's profiler, one
   decode step at position 30 as `run_with_state` runs it: kernel time per node, grouped by weight shape (the packed
   QKV, o_proj, the packed gate/up, down_proj, the LM head's column blocks) and by op for everything else, with the
   bandwidth each group's weight reads reach.
2. The same weight matrices, each group as one graph of as many distinct copies as the model holds (so that, as in
   a decode step, every weight is read from memory, not from cache), under other kernels on one decode row:
   ONNX Runtime's fp32 MatMul with and without weight pre-packing, its fp16 MatMul (half the bytes), and PyTorch's
   fp32 and bf16 `linear` (oneDNN / MKL). Medians of interleaved rounds, in ms per decode step.

The machine's memory bandwidth (best of 7 torch sums of a 1 GiB fp32 tensor) is printed beside, with the CPU model
and its vector flags.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from profile_decode import decode_session, decode_step, kernel_times, median_step_ms  # benchmarks/

from QEfficient.cli.bench import cpu_name, vector_flags

SHAPE_NAMES = {(576, 960): "packed QKV", (576, 576): "o_proj", (576, 3072): "packed gate/up", (1536, 576): "down_proj"}


def weight_matmuls(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Node name -> [K, N] fp32 weight of every MatMul whose second input is an initializer."""
    initializers = {init.name: init for init in model.graph.initializer}
    return {
        node.name: numpy_helper.to_array(initializers[node.input[1]])
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in initializers
    }


def group_of(shape: tuple[int, ...]) -> str:
    return SHAPE_NAMES.get(tuple(shape), f"LM head block K{shape[0]} N{shape[1]}")


def profile_step(graph: Path, threads: int, in_place: frozenset[str], steps: int = 10) -> tuple[float, dict, dict]:
    """One decode step at position 30 (`profile_decode.decode_step`): (median ms without the profiler, profiled kernel
    ms per step per node name, node name -> op type)."""
    plain = decode_session(graph, threads)
    step = decode_step(plain, in_place)
    step_ms = median_step_ms(step, plain, 30)
    nodes = kernel_times(step, decode_session(graph, threads, profile=True), steps)
    return step_ms, {name: ms for name, _, ms in nodes}, {name: op for name, op, _ in nodes}


def ort_session(weights: list[np.ndarray], dtype: int, prepack: bool, threads: int) -> ort.InferenceSession:
    """One graph: a [1, 1, K] row into every weight of `weights` (distinct copies, run one after another)."""
    k = weights[0].shape[0]
    np_type = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]) for i in range(len(weights))]
    graph = helper.make_graph(
        nodes,
        "weights",
        [helper.make_tensor_value_info("x", dtype, [1, 1, k])],
        [helper.make_tensor_value_info(f"y{i}", dtype, None) for i in range(len(weights))],
        [numpy_helper.from_array(w.astype(np_type), f"w{i}") for i, w in enumerate(weights)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def kernels(weights: list[np.ndarray], threads: int) -> dict[str, Callable[[], None]]:
    """One decode row through every weight of a group, per kernel."""
    k = weights[0].shape[0]
    row32 = np.random.default_rng(0).standard_normal((1, 1, k)).astype(np.float32)
    cases: dict[str, Callable[[], None]] = {}
    for label, dtype, prepack in (
        ("ORT fp32 MatMul", TensorProto.FLOAT, True),
        ("ORT fp32 MatMul, no pre-packing", TensorProto.FLOAT, False),
        ("ORT fp16 MatMul", TensorProto.FLOAT16, True),
    ):
        sess = ort_session(weights, dtype, prepack, threads)
        feed = {"x": row32.astype(np.float16) if dtype == TensorProto.FLOAT16 else row32}
        cases[label] = lambda sess=sess, feed=feed: sess.run(None, feed)
    torch.set_num_threads(threads)
    for label, dtype in (("torch fp32 linear", torch.float32), ("torch bf16 linear", torch.bfloat16)):
        mats = [torch.from_numpy(np.ascontiguousarray(w.T)).to(dtype) for w in weights]  # [N, K], nn.Linear's layout
        x = torch.from_numpy(row32).to(dtype)

        def run(mats: list[torch.Tensor] = mats, x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                for w in mats:
                    torch.nn.functional.linear(x, w)

        cases[label] = run
    return cases


def bandwidth_gbs() -> float:
    data = torch.ones(256 * 1024 * 1024, dtype=torch.float32)
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.utils.default_models import default_causal_lm

    model = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm())
    graph = Path(model.compile(prefill_seq_len=32, ctx_len=256)) / "model.onnx"
    onnx_model = onnx.load(str(graph))
    weights = weight_matmuls(onnx_model)
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for name, w in weights.items():
        groups[group_of(w.shape)].append(name)

    step_ms, profile, ops = profile_step(graph, args.threads, model.program.in_place_state)
    print(f"{cpu_name()}; vector flags: {vector_flags()}; {args.threads} threads")
    print(f"memory bandwidth: {bandwidth_gbs():.1f} GB/s (best of 7 torch sums of 1 GiB fp32)")
    print(f"fp32 decode step: {step_ms:.2f} ms (median of 30, no profiler; {1000 / step_ms:.1f} tokens/s)\n")
    total = sum(profile.values())
    print(f"Profiled decode step: {total:.2f} ms of kernel time\n")
    print("| part | nodes | MB read | ms per step | GB/s |\n|---|---:|---:|---:|---:|")
    matmul_ms = 0.0
    for group, names in groups.items():
        ms = sum(profile.get(name, 0.0) for name in names)
        mb = sum(weights[name].nbytes for name in names) / 1e6
        matmul_ms += ms
        print(f"| {group} | {len(names)} | {mb:.1f} | {ms:.2f} | {mb / ms:.1f} |")
    other: collections.Counter[str] = collections.Counter()
    for name, ms in profile.items():
        if name not in weights:
            other[ops[name]] += ms
    for op, ms in other.most_common(6):
        print(f"| {op} | | | {ms:.2f} | |")
    print(f"| all other ops | | | {sum(other.values()):.2f} | |")
    weight_mb = sum(w.nbytes for w in weights.values()) / 1e6
    print(f"| weight MatMuls | {len(weights)} | {weight_mb:.1f} | {matmul_ms:.2f} | {weight_mb / matmul_ms:.1f} |")

    # the same bytes under other kernels
    all_cases = {group: kernels([weights[n] for n in names], args.threads) for group, names in groups.items()}
    labels = list(next(iter(all_cases.values())))
    times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for _ in range(args.rounds):
        for group, cases in all_cases.items():
            for label, run in cases.items():
                for _ in range(3):
                    run()
                samples = []
                for _ in range(15):
                    start = time.perf_counter()
                    run()
                    samples.append(time.perf_counter() - start)
                times[group, label].append(statistics.median(samples) * 1000)
    print(
        "\nThe same weights, each group as one graph of distinct copies; ms per decode step, median of "
        f"{args.rounds} rounds (fp16/bf16 read half the bytes)\n"
    )
    print("| part | " + " | ".join(labels) + " |\n|---|" + "---:|" * len(labels))
    sums = collections.Counter()
    for group in all_cases:
        cells = []
        for label in labels:
            ms = statistics.median(times[group, label])
            sums[label] += ms
            cells.append(f"{ms:.2f}")
        print(f"| {group} | " + " | ".join(cells) + " |")
    print("| all weight MatMuls | " + " | ".join(f"{sums[label]:.2f}" for label in labels) + " |")


if __name__ == "__main__":
    main()
