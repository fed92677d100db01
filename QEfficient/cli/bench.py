"""`qeff bench`: HF eager and QEfficient (fp32 / int8 / int4 weights) on the same prompt, in one run.

`int4` keeps weights that are already on a quantisation grid (a GGUF checkpoint's) on it exactly (`exact_grids`, the
compile default); `int4-requantized` is `compile(weights="int4", exact_grids=False)`, which quantises them again
(smaller and faster, at a cost in perplexity on such a checkpoint).

Per engine: TTFT, prefill and decode tokens/s, peak RSS, decode speed relative to HF eager, the fraction of the
memory-bandwidth bound reached, perplexity on a fixed text (`QEfficient/generation/eval_text.py`) and greedy
agreement with QEfficient fp32 over the generated tokens.

How it measures:

- Every engine runs in its own `multiprocessing` spawn child (HF too), so that its peak RSS
  (`ru_maxrss` of that process) is its own. A first child compiles every requested precision (or finds it in
  the cache), so no engine's peak includes a one-time quantisation; the QEfficient children then open only
  the compiled program (no PyTorch weights in their memory), as a deployment would.
- Timing rounds are interleaved (HF, fp32, int8, int4, HF, ...) after a warm-up in each child, and each number
  is the median over the rounds: the machine may be shared and noisy.
- Memory bandwidth is measured in the same run, before the engines load: the best of several multi-threaded
  `tensor.sum()` over a 1 GiB fp32 tensor. Bytes read per decoded token are the weights the matrix products
  read: the initializers that feed MatMul / MatMulNBits / Gemm / FusedMatMul nodes of the compiled graph
  (weights, scales, zero points; not the embedding table's Gather), or the `nn.Linear` weights for HF eager
  (the tied LM head counts once). The bound is bandwidth / bytes per token, in tokens/s.
- Perplexity teacher-forces the first 200 tokens of the text through decode steps
  (`QEfficient.generation.quality.perplexity`); HF eager's is one forward over the same tokens;
  onnxruntime-genai's appends one token at a time to its generator and reads its logits (`stepwise_perplexity`).

`--peers` adds optimum-onnx (`optimum.onnxruntime.ORTModelForCausalLM`, exported from the same HF folder) and
onnxruntime-genai (models built by `onnxruntime_genai.models.builder`, int4 and fp32) when they are importable, and
prints a 'not installed' line otherwise. onnxruntime-genai installs beside QEfficient
(`pip install --no-deps onnxruntime-genai`: it needs only numpy and onnxruntime >= 1.31). optimum-onnx pins
transformers 4.57 while QEfficient needs its own transformers version, so the two cannot share one
environment: give optimum-onnx its own and run the peer
part of this file there, on the HF folder this command prints ("HF folder: ..."):

    python -m venv ~/venv-optimum
    ~/venv-optimum/bin/pip install torch==2.13.0 "optimum-onnx[onnxruntime]"   # pin torch: else a CUDA build
    ~/venv-optimum/bin/python QEfficient/cli/bench.py --peer optimum --hf-folder FOLDER \\
        [--prompt-tokens 24] [--new-tokens 128] [--rounds 3] [--threads N]

That standalone entry imports neither QEfficient nor torch directly; compare its numbers with a `qeff bench`
run on the same machine.

`--peers` also runs llama.cpp through llama-cpp-python, in its own venv, on the GGUF file the bench's model is loaded
from (as shipped: Q4_1 for SmolLM2) and on F32 / F16 / Q8_0 files made from it (`QEfficient/cli/bench_llamacpp.py`,
which says how to install it and how it measures): same prompt ids, new tokens, threads, greedy, and perplexity on
the same eval ids.
"""

from __future__ import annotations

import datetime
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from QEfficient.cli.bench_llamacpp import LLAMACPP_KINDS, LlamaCppEngine
from QEfficient.cli.bench_variants import VARIANTS, bind_variant_inputs, compile_variant, step_inputs

QEFF_WEIGHTS = ("fp32", "int8", "int4", "int4-requantized")
COMPILE_OPTIONS = {"fp32": {}, "int4-requantized": {"weights": "int4", "exact_grids": False}}  # else weights=kind
PEERS = ("optimum", "genai", "genai-fp32", *LLAMACPP_KINDS)
EVAL_TOKENS = 200
WEIGHT_OPS = ("MatMul", "MatMulNBits", "Gemm", "FusedMatMul")
BENCH_TEXT = (
    "The history of the city begins with a small fishing village on the river, where traders from the north "
    "and the south met every spring to exchange salt, wool, grain and stories about the lands beyond the sea."
)
VARIANT_NAMES = {  # QEfficient/cli/bench_variants.py
    "fp32-lora": "QEfficient ORT fp32 + LoRA (rank 16, all linear)",
    "gptq-int4": "QEfficient ORT GPTQ int4 checkpoint (g32, zero points; head int8)",
}
PEER_NAMES = {
    "optimum": "optimum-onnx (ORTModelForCausalLM)",
    "genai": "onnxruntime-genai (int4)",
    "genai-fp32": "onnxruntime-genai (fp32)",
    "llamacpp": "llama.cpp {type} (the GGUF as shipped)",
    "llamacpp-q8_0": "llama.cpp Q8_0 (llama_model_quantize of F32)",
    "llamacpp-f16": "llama.cpp F16 (llama_model_quantize of F32)",
    "llamacpp-f32": "llama.cpp F32 (the GGUF dequantised)",
}
PEER_MODULES = {"optimum": "optimum.onnxruntime", "genai": "onnxruntime_genai", "genai-fp32": "onnxruntime_genai"}
PEER_INSTALL = {
    "optimum": "optimum-onnx pins transformers 4.57, so give it its own venv (pip install torch==2.13.0 "
    "'optimum-onnx[onnxruntime]') and run there: python QEfficient/cli/bench.py --peer optimum --hf-folder {folder}",
    "genai": "pip install --no-deps onnxruntime-genai",
    "genai-fp32": "pip install --no-deps onnxruntime-genai",
}


def prefill_widths(config: BenchConfig) -> list[int]:
    """The prefill chunk widths to compile: the configured ones that divide ctx_len (at least the narrowest)."""
    from QEfficient.cli.main import fitting_widths

    widths = config.prefill_seq_len
    return fitting_widths([widths] if isinstance(widths, int) else widths, config.ctx_len)


def compile_options(weights: str) -> dict[str, Any]:
    """The `compile` options of one of `QEFF_WEIGHTS`."""
    return COMPILE_OPTIONS.get(weights, {"weights": weights})


@dataclass
class BenchConfig:
    """What one `qeff bench` run measures."""

    model: str | None = None
    prompt_tokens: int = 24
    new_tokens: int = 128
    prefill_seq_len: int | tuple[int, ...] = (32, 128)  # chunk widths (`compile`): those dividing ctx_len
    ctx_len: int = 256
    rounds: int = 3
    threads: int | None = None
    weights: tuple[str, ...] = QEFF_WEIGHTS
    peers: bool = False


@dataclass
class EngineResult:
    """One engine's measurements (medians over the rounds)."""

    name: str
    ttft_ms: float = math.nan
    prefill_tokens_per_s: float = math.nan
    decode_tokens_per_s: float = math.nan
    peak_rss_mb: float = math.nan
    weight_bytes: int = 0
    perplexity: float = math.nan
    tokens: list[int] = field(default_factory=list)
    rounds_identical: bool = True
    note: str = ""


# ---- measurements shared by the children ------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


VECTOR_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",  # x86
    "asimd", "asimddp", "i8mm", "bf16", "sve", "sve2",  # aarch64
)  # fmt: skip


def vector_flags() -> str:
    """The CPU's vector extensions among `VECTOR_FLAGS`, from /proc/cpuinfo ('unknown' elsewhere): every benchmark
    prints them beside its table."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                present = set(line.split(":", 1)[1].split())
                return " ".join(f for f in VECTOR_FLAGS if f in present) or "none of " + " ".join(VECTOR_FLAGS)
    except OSError:
        pass
    return "unknown"


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (`ru_maxrss` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def matmul_weight_bytes(onnx_path: str | Path) -> int:
    """Bytes of the initializers that feed MatMul / MatMulNBits / Gemm / FusedMatMul nodes of a graph: the weights
    (and their scales and zero points) one decode step reads. Each initializer counts once; the embedding table
    read by a Gather is not counted (unless a matrix product reads it too, as a tied LM head does)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name: t for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        if node.op_type in WEIGHT_OPS:
            used.update(name for name in node.input if name in initializers)
    total = 0.0
    for name in used:
        tensor = initializers[name]
        count = math.prod(tensor.dims)
        if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            total += math.ceil(count / 2)
        else:
            total += count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(total)


def _decode_graph(program_dir: Path) -> Path:
    """The graph a decode step runs: `decode/model.onnx` of a two-graph program, else `model.onnx`."""
    return program_dir / "decode" / "model.onnx" if (program_dir / "decode").is_dir() else program_dir / "model.onnx"


def _set_threads(threads: int, torch_too: bool = True) -> None:
    """Thread counts for ONNX Runtime and OpenMP, and for PyTorch unless this process must not load it (a QEfficient
    engine runs the compiled program alone)."""
    os.environ["QEFF_NUM_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if torch_too:
        import torch

        torch.set_num_threads(threads)


def _bandwidth_child(threads: int, gib: float = 1.0, repeats: int = 7) -> float:
    """Memory read bandwidth in GB/s: the best of `repeats` multi-threaded sums of a `gib` GiB fp32 tensor."""
    _set_threads(threads)
    import torch

    data = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    data.sum()  # first touch and warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best / 1e9


def _prepare_child(config: BenchConfig) -> dict[str, Any]:
    """Compile (or find cached) every requested precision, tokenise the prompt and the eval text."""
    _set_threads(config.threads)
    from QEfficient import QEFFAutoModelForCausalLM
    from QEfficient.generation.eval_text import EVAL_TEXT
    from QEfficient.transformers.loading import split_gguf_path
    from QEfficient.utils.default_models import default_causal_lm

    source = str(config.model or default_causal_lm())
    model = QEFFAutoModelForCausalLM.from_pretrained(source)
    folder, gguf = split_gguf_path(source, None)
    gguf_path = str(Path(folder) / gguf) if gguf is not None else None
    if gguf is not None:
        from transformers import AutoModelForCausalLM

        from QEfficient.transformers.gguf import gguf_folder

        folder = str(gguf_folder(folder, gguf, AutoModelForCausalLM))
    tokenizer = model.tokenizer
    shapes = {"prefill_seq_len": prefill_widths(config), "ctx_len": config.ctx_len, "batch_size": 1}
    programs = {}
    for weights in config.weights:
        if weights in VARIANTS:
            programs[weights] = compile_variant(weights, source, folder, tokenizer, shapes)
        else:
            model.compile(**shapes, **compile_options(weights))
            programs[weights] = str(model.program_path)
    prompt = tokenizer(BENCH_TEXT * (1 + config.prompt_tokens // 16))["input_ids"][: config.prompt_tokens]
    eval_ids = tokenizer(EVAL_TEXT)["input_ids"][: min(EVAL_TOKENS, config.ctx_len - 1)]
    return {
        "model_name": model.model_name,
        "source": source,
        "hf_folder": folder,
        "gguf": gguf_path,
        "programs": programs,
        "prompt_ids": prompt,
        "eval_ids": eval_ids,
        "eval_words": len(EVAL_TEXT.split()),
    }


# ---- engines (each one lives in its own child process) ------------------------------------------------------


class _HFEngine:
    """transformers' eager `generate` on the fp32 PyTorch model."""

    def __init__(self, config: BenchConfig, prep: dict[str, Any]) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from QEfficient.transformers.loading import load_pretrained

        self.torch = torch
        self.model = load_pretrained(AutoModelForCausalLM, prep["hf_folder"])
        self.model.generation_config.eos_token_id = None  # the same token count for every engine
        self.prompt = torch.tensor([prep["prompt_ids"]])
        self.pad = self.model.config.pad_token_id or 0
        linears = [m for m in self.model.modules() if isinstance(m, torch.nn.Linear)]
        tensors = {t.data_ptr(): t for m in linears for t in (m.weight, m.bias) if t is not None}
        self.weight_bytes = sum(t.numel() * t.element_size() for t in tensors.values())

    def _generate(self, n: int) -> tuple[float, list[int]]:
        start = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(
                self.prompt,
                attention_mask=self.torch.ones_like(self.prompt),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=self.pad,
            )
        return time.perf_counter() - start, out[0, self.prompt.shape[1] :].tolist()

    def round(self, new_tokens: int) -> dict[str, Any]:
        ttft, _ = self._generate(1)
        total, tokens = self._generate(new_tokens)
        return {
            "ttft_s": ttft,
            "prefill_tokens_per_s": self.prompt.shape[1] / ttft,
            "decode_tokens_per_s": (new_tokens - 1) / max(total - ttft, 1e-9),
            "tokens": tokens,
        }

    def perplexity(self, ids: list[int]) -> float:
        from QEfficient.generation.quality import hf_perplexity

        return hf_perplexity(self.model, ids)


class _CompiledModel:
    """What `perplexity` needs of a compiled model: its program, compile settings and the inputs of a bare step."""

    def __init__(self, program: Any, compile_config: dict[str, Any], step_inputs: dict[str, Any]) -> None:
        self.program = program
        self.compile_config = compile_config
        self.step_inputs = step_inputs


class _QEffEngine:
    """QEfficient's compiled program, opened from the cache without the PyTorch model."""

    def __init__(self, config: BenchConfig, prep: dict[str, Any], weights: str) -> None:
        from QEfficient.generation.text_generation import TextGenerator

        directory = Path(prep["programs"][weights])
        self.generator = TextGenerator.from_program(directory)  # the program alone: no PyTorch in this process
        self.generator.eos_token_ids = set()  # no EOS: the same token count for every engine
        bind_variant_inputs(weights, self.generator, prep["hf_folder"])
        program = self.generator.program
        program.load_all()
        self.model = _CompiledModel(program, program.manifest["generation"], step_inputs(weights))
        self.prompt = prep["prompt_ids"]
        self.weight_bytes = matmul_weight_bytes(_decode_graph(directory))

    def round(self, new_tokens: int) -> dict[str, Any]:
        out = self.generator.generate([self.prompt], generation_len=new_tokens)
        m = out.perf_metrics
        return {
            "ttft_s": m.ttft_s,
            "prefill_tokens_per_s": m.prefill_tokens_per_s,
            "decode_tokens_per_s": m.decode_tokens_per_s,
            "tokens": out.generated_ids[0],
        }

    def perplexity(self, ids: list[int]) -> float:
        from QEfficient.generation.quality import perplexity

        return perplexity(self.model, ids)


class _OptimumEngine:
    """optimum-onnx's `ORTModelForCausalLM`, exported once from the HF folder (cached next to it)."""

    def __init__(self, folder: str, prompt_ids: list[int], threads: int) -> None:
        import onnxruntime as ort
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        self.torch = torch
        export_dir = Path(folder).parent / f"{Path(folder).name}-optimum-onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if not (export_dir / "config.json").is_file():
            ORTModelForCausalLM.from_pretrained(folder, export=True).save_pretrained(export_dir)
        self.model = ORTModelForCausalLM.from_pretrained(export_dir, session_options=options)
        self.model.generation_config.eos_token_id = None
        self.prompt = torch.tensor([prompt_ids])
        self.pad = 0
        graphs = sorted(export_dir.glob("*.onnx"))
        self.weight_bytes = matmul_weight_bytes(graphs[0]) if graphs else 0

    _generate = _HFEngine._generate  # the same transformers `generate` API
    round = _HFEngine.round

    def perplexity(self, ids: list[int]) -> float:
        import torch

        inputs = torch.tensor([ids])
        logits = self.model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits[0, :-1]
        return math.exp(float(torch.nn.functional.cross_entropy(logits.double(), inputs[0, 1:])))


class _GenAIEngine:
    """onnxruntime-genai on a CPU model (int4 or fp32) built once by its builder from the HF folder (cached next to
    it)."""

    def __init__(self, folder: str, prompt_ids: list[int], threads: int, precision: str = "int4") -> None:
        import subprocess

        import onnxruntime_genai as og

        self.og = og
        out = Path(folder).parent / f"{Path(folder).name}-ort-genai-{precision}"
        if not (out / "genai_config.json").is_file():
            subprocess.run(
                [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", folder, "-o", str(out)]
                + ["-p", precision, "-e", "cpu", "-c", str(out.with_name(out.name + "-cache"))],
                check=True,
            )
        config = json.loads((out / "genai_config.json").read_text())
        session = config["model"]["decoder"].setdefault("session_options", {})
        session["intra_op_num_threads"] = threads
        (out / "genai_config.json").write_text(json.dumps(config, indent=2))
        self.model = og.Model(str(out))
        self.prompt = list(prompt_ids)
        self.weight_bytes = matmul_weight_bytes(out / config["model"]["decoder"]["filename"])

    def round(self, new_tokens: int) -> dict[str, Any]:
        og = self.og
        params = og.GeneratorParams(self.model)
        length = len(self.prompt) + new_tokens
        params.set_search_options(do_sample=False, max_length=length, min_length=length)
        start = time.perf_counter()
        generator = og.Generator(self.model, params)
        generator.append_tokens(self.prompt)
        generator.generate_next_token()
        tokens = [int(generator.get_next_tokens()[0])]
        ttft = time.perf_counter() - start
        while not generator.is_done() and len(tokens) < new_tokens:
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        total = time.perf_counter() - start
        return {
            "ttft_s": ttft,
            "prefill_tokens_per_s": len(self.prompt) / ttft,
            "decode_tokens_per_s": (len(tokens) - 1) / max(total - ttft, 1e-9),
            "tokens": tokens,
        }

    def perplexity(self, ids: list[int]) -> float:
        """Teacher-forced, one token at a time through the generator (its logits after each appended token)."""
        from QEfficient.generation.quality import stepwise_perplexity

        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + 1)
        generator = self.og.Generator(self.model, params)

        def step(token: int) -> Any:
            generator.append_tokens([token])
            return generator.get_logits()

        return stepwise_perplexity(step, ids)


def _engine_child(connection: Any, kind: str, config: BenchConfig, prep: dict[str, Any]) -> None:
    """A child's loop: build the engine, warm it up, then answer ("round" | "quality" | "rss" | "stop")."""
    engine: Any = None
    try:
        ours = kind in QEFF_WEIGHTS or kind in VARIANTS
        _set_threads(config.threads, torch_too=not ours and kind not in LLAMACPP_KINDS)
        if kind == "hf":
            engine = _HFEngine(config, prep)
        elif ours:
            engine = _QEffEngine(config, prep, kind)
        elif kind == "optimum":
            engine = _OptimumEngine(prep["hf_folder"], prep["prompt_ids"], config.threads)
        elif kind in LLAMACPP_KINDS:
            peer = prep["llamacpp"]
            engine = LlamaCppEngine(
                peer["python"], peer["files"][kind], prep["prompt_ids"], config.threads, config.ctx_len,
                peer["weight_bytes"][kind],
            )  # fmt: skip
        else:
            precision = "fp32" if kind == "genai-fp32" else "int4"
            engine = _GenAIEngine(prep["hf_folder"], prep["prompt_ids"], config.threads, precision)
        engine.round(2)  # warm-up
        connection.send(("ready", {"weight_bytes": engine.weight_bytes}))
        while True:
            command = connection.recv()
            if command == "round":
                connection.send(("ok", engine.round(config.new_tokens)))
            elif command == "rss":  # a llama.cpp engine's own process is a subprocess: it reports its own
                connection.send(("ok", engine.peak_rss_mb() if hasattr(engine, "peak_rss_mb") else _peak_rss_mb()))
            elif command == "quality":
                connection.send(("ok", engine.perplexity(prep["eval_ids"])))
            else:
                break
    except BaseException:  # noqa: BLE001 - reported to the parent, which prints it
        connection.send(("error", traceback.format_exc(limit=6)))
    finally:
        if hasattr(engine, "close"):
            engine.close()
        connection.close()


def _in_child(context: Any, target: Any, *args: Any) -> Any:
    """Run `target(*args)` in a fresh spawn child and return its result (errors are raised here)."""
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_call_and_send, args=(send, target, args))
    process.start()
    send.close()
    status, value = receive.recv()
    process.join()
    if status == "error":
        raise RuntimeError(f"{target.__name__} failed in its child process:\n{value}")
    return value


def _call_and_send(connection: Any, target: Any, args: tuple) -> None:
    try:
        connection.send(("ok", target(*args)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        connection.send(("error", traceback.format_exc(limit=6)))
    finally:
        connection.close()


# ---- the parent: orchestration and the report ---------------------------------------------------------------


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _engine_name(kind: str, prep: dict[str, Any] | None = None) -> str:
    if kind == "hf":
        return "HF eager (PyTorch fp32)"
    if kind in QEFF_WEIGHTS:
        return f"QEfficient ORT {kind}"
    if kind in VARIANT_NAMES:
        return VARIANT_NAMES[kind]
    types = ((prep or {}).get("llamacpp") or {}).get("types", {})
    return PEER_NAMES[kind].format(type=types.get(kind, "GGUF"))


def _missing_peer_lines(missing_peers: list[str], prep: dict[str, Any]) -> list[str]:
    """How to install each peer that did not run (or why a llama.cpp file could not be made)."""
    from QEfficient.cli.bench_llamacpp import install_hint

    lines = []
    for peer in missing_peers:
        if peer not in LLAMACPP_KINDS:
            how = PEER_INSTALL[peer].format(folder=prep["hf_folder"])
            lines.append(f"{PEER_NAMES[peer]}: not installed ({PEER_MODULES[peer]} is not importable here): {how}")
    llamacpp = prep.get("llamacpp") or {}
    failed = llamacpp.get("failed", {})
    for peer in missing_peers:
        if peer in failed:
            lines.append(f"{_engine_name(peer, prep)}: not run ({failed[peer]})")
    if any(p in LLAMACPP_KINDS and p not in failed for p in missing_peers):
        why = llamacpp.get("why") or "llama-cpp-python not found"
        lines.append(f"llama.cpp (llama-cpp-python): not run ({why}). Install it in its own venv: {install_hint()}")
    return lines


def _llamacpp_setup(prep: dict[str, Any], threads: int, context: Any) -> tuple[list[str], list[str]]:
    """Find llama-cpp-python's venv and make the GGUF files of the llama.cpp rows (cached): (kinds that run, kinds
    that do not). What it found goes into `prep["llamacpp"]`."""
    from QEfficient.cli.bench_llamacpp import find_python, prepare_files

    python, info = find_python()
    if python is None:
        prep["llamacpp"] = {"why": f"no python with llama_cpp: {info}" if info else "no python with llama_cpp"}
        return [], list(LLAMACPP_KINDS)
    if prep.get("gguf") is None:
        prep["llamacpp"] = {"why": "the model is not a GGUF file; llama.cpp rows run on the model's own GGUF"}
        return [], list(LLAMACPP_KINDS)
    print("[bench] llama.cpp: preparing its GGUF files (cached after the first run)", file=sys.stderr)
    try:
        kinds = list(LLAMACPP_KINDS)
        files = _in_child(context, prepare_files, prep["gguf"], prep["hf_folder"], python, kinds, threads)
    except RuntimeError as exc:  # e.g. gguf-py missing here: every llama.cpp row is reported as not run
        prep["llamacpp"] = {"why": f"its GGUF files could not be made: {str(exc).strip().splitlines()[-1]}"}
        return [], list(LLAMACPP_KINDS)
    prep["llamacpp"] = {"python": python, "version": info, **files}
    running = [kind for kind in LLAMACPP_KINDS if kind in files["files"]]
    return running, [kind for kind in LLAMACPP_KINDS if kind not in running]


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _run_engines(context: Any, kinds: list[str], config: BenchConfig, prep: dict[str, Any]) -> list[EngineResult]:
    """Start one child per engine, run the interleaved rounds, then collect peak RSS and perplexity."""
    children: dict[str, tuple[Any, Any]] = {}
    results = {kind: EngineResult(_engine_name(kind, prep)) for kind in kinds}
    for kind in kinds:
        mine, theirs = context.Pipe()
        process = context.Process(target=_engine_child, args=(theirs, kind, config, prep), daemon=True)
        process.start()
        theirs.close()
        children[kind] = (process, mine)

    def ask(kind: str, command: str | None = None) -> Any:
        process, connection = children[kind]
        if command is not None:
            connection.send(command)
        status, value = connection.recv()
        if status == "error":
            results[kind].note = value.strip().splitlines()[-1]
            print(f"[bench] {results[kind].name} failed:\n{value}", file=sys.stderr)
            connection.close()
            process.join(timeout=10)
            del children[kind]
            return None
        return value

    try:
        for kind in kinds:  # all children load at once; each answers when loaded and warmed up
            ready = ask(kind)
            if ready is not None:
                results[kind].weight_bytes = ready["weight_bytes"]
        rounds: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for index in range(config.rounds):
            for kind in kinds:
                if kind in children:
                    row = ask(kind, "round")
                    if row is not None:
                        rounds[kind].append(row)
            print(f"[bench] round {index + 1}/{config.rounds} done", file=sys.stderr)
        for kind in kinds:
            rows = rounds[kind]
            if rows:
                r = results[kind]
                r.ttft_ms = _median(rows, "ttft_s") * 1000
                r.prefill_tokens_per_s = _median(rows, "prefill_tokens_per_s")
                r.decode_tokens_per_s = _median(rows, "decode_tokens_per_s")
                r.tokens = rows[-1]["tokens"]
                r.rounds_identical = all(row["tokens"] == r.tokens for row in rows)
        for kind in kinds:
            if kind in children:
                results[kind].peak_rss_mb = ask(kind, "rss") or math.nan
        for kind in kinds:
            if kind in children:
                value = ask(kind, "quality")
                results[kind].perplexity = math.nan if value is None else value
    finally:
        for process, connection in children.values():
            try:
                connection.send("stop")
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    return [results[kind] for kind in kinds]


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _report(
    config: BenchConfig,
    prep: dict[str, Any],
    results: list[EngineResult],
    bandwidth: float,
    missing_peers: list[str],
    seconds: float,
) -> str:
    from QEfficient.generation.quality import greedy_agreement

    by_name = {r.name: r for r in results}
    hf = by_name.get(_engine_name("hf"))
    fp32 = by_name.get(_engine_name("fp32"))
    n = config.new_tokens
    lines = [
        "| engine | TTFT (ms) | prefill tok/s | decode tok/s | decode vs HF eager | weights read/token (MB) | "
        "bound tok/s | % of bound | peak RSS (MB) | perplexity | agreement with fp32 (leading, % positions) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ratio = r.decode_tokens_per_s / hf.decode_tokens_per_s if hf and hf.decode_tokens_per_s > 0 else math.nan
        bound = bandwidth * 1e9 / r.weight_bytes if r.weight_bytes else math.nan
        agreement = "n/a"
        if r is fp32 and r.tokens:
            agreement = "(reference)"
        elif fp32 is not None and fp32.tokens and r.tokens:
            leading, fraction = greedy_agreement(fp32.tokens, r.tokens)
            agreement = f"{leading}/{n}, {fraction * 100:.1f}%"
        name = r.name + (f" (failed: {r.note})" if r.note else "")
        lines.append(
            f"| {name} | {_fmt(r.ttft_ms)} | {_fmt(r.prefill_tokens_per_s)} | {_fmt(r.decode_tokens_per_s)} | "
            f"{_fmt(ratio, 2)}x | {_fmt(r.weight_bytes / 1e6)} | {_fmt(bound)} | "
            f"{_fmt(r.decode_tokens_per_s / bound * 100)}% | {_fmt(r.peak_rss_mb, 0)} | {_fmt(r.perplexity, 3)} | "
            f"{agreement} |"
        )
    lines.append("")
    if hf is not None and fp32 is not None and hf.tokens and fp32.tokens:
        same = fp32.tokens == hf.tokens
        lines.append(f"QEfficient fp32 generated tokens identical to HF eager ({n} tokens): {'yes' if same else 'NO'}")
    unstable = [r.name for r in results if r.tokens and not r.rounds_identical]
    if unstable:
        lines.append(f"generated tokens differ between rounds for: {', '.join(unstable)}")
    if hf is not None and not math.isnan(hf.perplexity):
        deltas = [
            f"{r.name.removeprefix('QEfficient ORT ')} {(r.perplexity / hf.perplexity - 1) * 100:+.3f}%"
            for r in results
            if r is not hf and not math.isnan(r.perplexity)
        ]
        lines.append(f"perplexity vs HF eager's {hf.perplexity:.3f}: {', '.join(deltas) or 'n/a'}")
    lines += _missing_peer_lines(missing_peers, prep)
    import onnxruntime
    import torch
    import transformers

    from QEfficient import __version__

    llamacpp = prep.get("llamacpp") or {}
    program = Path(sys.argv[0]).name
    command = " ".join(["qeff" if program == "qeff" else f"python {sys.argv[0]}", *sys.argv[1:]])
    lines += [
        "",
        f"model: {prep['model_name']} from {prep['source']} (HF folder: {prep['hf_folder']})",
        f"batch 1, prompt {len(prep['prompt_ids'])} tokens, {n} new tokens (EOS ignored), greedy; "
        f"prefill_seq_len {prefill_widths(config)}, ctx_len {config.ctx_len}; median of {config.rounds} "
        "interleaved rounds after a warm-up; each engine in its own process",
        f"perplexity: the first {len(prep['eval_ids'])} tokens of QEfficient/generation/eval_text.py "
        f"({prep['eval_words']} words), teacher-forced through decode steps (HF eager: one forward; "
        "onnxruntime-genai: one token at a time through its generator; llama.cpp: one eval with logits_all)",
        f"memory bandwidth: {bandwidth:.1f} GB/s (best of 7 torch sums of a 1 GiB fp32 tensor, {config.threads} "
        "threads); bound = bandwidth / weights read per token (MatMul/MatMulNBits/Gemm/FusedMatMul initializers "
        "of the compiled graph; nn.Linear weights for HF eager; the GGUF's 2-D tensors for llama.cpp)",
        "peak RSS: ru_maxrss of the engine's own process (load + warm-up + generation); QEfficient rows open "
        "the compiled program only; llama.cpp's is its llama-cpp-python subprocess's (the model file mmapped)",
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {config.threads} threads per engine; vector flags: "
        f"{vector_flags()}",
        f"versions: QEfficient {__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}",
        *([f"llama.cpp: {llamacpp['version']} ({llamacpp['python']})"] if llamacpp.get("version") else []),
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; bench took {seconds:.0f} s",
        f"command: {command}",
    ]
    return "\n".join(lines)


def run_bench(config: BenchConfig) -> str:
    """Run the benchmark described by `config` and return its report (a markdown table and the run's facts)."""
    from QEfficient.backends.onnxruntime import default_num_threads

    start = time.perf_counter()
    unknown = set(config.weights) - set(QEFF_WEIGHTS) - set(VARIANTS)
    if unknown:
        raise ValueError(f"--weights takes {', '.join([*QEFF_WEIGHTS, *VARIANTS])}; got {sorted(unknown)}.")
    for name in ("prompt_tokens", "new_tokens", "rounds"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1; got {getattr(config, name)}.")
    config.threads = config.threads or default_num_threads()
    context = multiprocessing.get_context("spawn")
    print("[bench] measuring memory bandwidth", file=sys.stderr)
    bandwidth = _in_child(context, _bandwidth_child, config.threads)
    print(f"[bench] compiling {', '.join(config.weights) or 'nothing'} (cached after the first run)", file=sys.stderr)
    prep = _in_child(context, _prepare_child, config)
    kinds = ["hf", *config.weights]
    missing = []
    if config.peers:
        for peer in PEERS:
            if peer in PEER_MODULES:
                (kinds if _importable(PEER_MODULES[peer]) else missing).append(peer)
        running, not_running = _llamacpp_setup(prep, config.threads, context)
        kinds += running
        missing += not_running
    print(f"[bench] running {', '.join(kinds)}", file=sys.stderr)
    results = _run_engines(context, kinds, config, prep)
    return _report(config, prep, results, bandwidth, missing, time.perf_counter() - start)


def run_generation_bench(
    model_path: str | None = None,
    prompt_tokens: int = 24,
    new_tokens: int = 128,
    prefill_seq_len: int | tuple[int, ...] = (32, 128),
    ctx_len: int = 256,
    rounds: int = 3,
    threads: int | None = None,
    weights: tuple[str, ...] = QEFF_WEIGHTS,
    peers: bool = False,
) -> str:
    """Run the benchmark and return its report (a markdown table and the run's facts)."""
    return run_bench(
        BenchConfig(
            model_path, prompt_tokens, new_tokens, prefill_seq_len, ctx_len, rounds, threads, tuple(weights), peers
        )
    )


# ---- standalone peer run (in another environment, e.g. one with optimum-onnx) ------------------------------


def _standalone(argv: list[str]) -> int:
    """`python QEfficient/cli/bench.py --peer optimum|genai --hf-folder FOLDER`: one peer engine, in a spawn child,
    without QEfficient (for an environment whose transformers QEfficient cannot use). The prompt is the first
    `--prompt-tokens` tokens of the same text `qeff bench` uses."""
    import argparse

    parser = argparse.ArgumentParser(description=_standalone.__doc__)
    parser.add_argument("--peer", choices=tuple(PEER_MODULES), required=True)
    parser.add_argument("--hf-folder", required=True, help="the 'HF folder' printed by `qeff bench`")
    parser.add_argument("--prompt-tokens", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    if not _importable(PEER_MODULES[args.peer]):
        print(f"{PEER_NAMES[args.peer]}: not installed ({PEER_MODULES[args.peer]} is not importable)")
        return 1
    from transformers import PreTrainedTokenizerFast

    # tokenizer.json directly: the folder's tokenizer_config may name a class of a newer transformers than this one
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(args.hf_folder) / "tokenizer.json"))
    ids = tokenizer(BENCH_TEXT * (1 + args.prompt_tokens // 16))["input_ids"][: args.prompt_tokens]
    context = multiprocessing.get_context("spawn")
    rows = _in_child(
        context, _standalone_child, args.peer, args.hf_folder, ids, args.new_tokens, args.rounds, args.threads
    )
    print(
        f"{PEER_NAMES[args.peer]}: prompt {len(ids)} tokens, {args.new_tokens} new tokens, median of {args.rounds}: "
        f"TTFT {_median(rows['rounds'], 'ttft_s') * 1000:.1f} ms, "
        f"prefill {_median(rows['rounds'], 'prefill_tokens_per_s'):.1f} tok/s, "
        f"decode {_median(rows['rounds'], 'decode_tokens_per_s'):.1f} tok/s, peak RSS {rows['rss']:.0f} MB, "
        f"weights read/token {rows['weight_bytes'] / 1e6:.1f} MB\ntokens: {rows['rounds'][-1]['tokens']}"
    )
    return 0


def _standalone_child(
    peer: str, folder: str, ids: list[int], new_tokens: int, rounds: int, threads: int
) -> dict[str, Any]:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if peer == "optimum":
        engine: Any = _OptimumEngine(folder, ids, threads)
    else:
        engine = _GenAIEngine(folder, ids, threads, "fp32" if peer == "genai-fp32" else "int4")
    engine.round(2)
    results = [engine.round(new_tokens) for _ in range(rounds)]
    return {"rounds": results, "rss": _peak_rss_mb(), "weight_bytes": engine.weight_bytes}


if __name__ == "__main__":
    sys.exit(_standalone(sys.argv[1:]))
