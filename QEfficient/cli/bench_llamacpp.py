"""llama.cpp as a `qeff bench --peers` engine, through llama-cpp-python, on the same GGUF file as the bench's model.

llama-cpp-python lives in its own venv, never in QEfficient's dependencies (the same venv `qeff bench --serve`
uses). Build it from source with the CPU's own vector extensions:

    python -m venv /tmp/qeff-peers/llama-cpp
    CMAKE_ARGS="-DGGML_NATIVE=ON" /tmp/qeff-peers/llama-cpp/bin/pip install llama-cpp-python==0.3.36

`qeff bench --peers` finds its python at `$QEFF_LLAMACPP_PYTHON`, else at `$QEFF_PEERS_DIR/llama-cpp/bin/python`
(`$QEFF_PEERS_DIR` defaults to `<tmp>/qeff-peers`), and prints how to install it when neither imports `llama_cpp`.

The rows, one per GGUF file (all cached next to the bench's HF folder after the first run):

- `llamacpp`: the GGUF file the bench's model is loaded from, as shipped (SmolLM2's: Q4_1, embeddings Q8_0);
- `llamacpp-f32`: the same file with every tensor dequantised to F32 (gguf-py, here in QEfficient's environment;
  the metadata and tokenizer copied unchanged): the same weights QEfficient's fp32 program computes with;
- `llamacpp-f16`, `llamacpp-q8_0`: made from that F32 file by llama.cpp's own quantizer (`llama_model_quantize`,
  what `llama-quantize` runs), in the peer's venv. Quantizing from the shipped Q4_1 directly would need
  `allow_requantize`, and F32 of the dequantised weights is the best source there is for this checkpoint.

Each engine is a subprocess of the peer venv's python running this file (`python -I bench_llamacpp.py serve`): it
imports only llama_cpp, numpy and the standard library, and answers one JSON line per command on its stdin. The
bench's engine child in QEfficient's environment (`LlamaCppEngine`) only forwards the commands; the peak RSS it
reports is the subprocess's own `ru_maxrss`. The workload is the bench's: the same prompt token ids (given to
`Llama.eval` as ids: no tokenizer and no BOS of llama.cpp's), the same new-token count, `n_threads` and
`n_threads_batch` both the bench's thread count, greedy (argmax of the last logits), `n_ctx` the bench's ctx_len,
flash attention on (llama.cpp's own default, `-fa auto`, turns it on for the CPU; llama-cpp-python's `Llama` turns it
off unless asked: 5 to 10 % slower decode here), llama-cpp-python's defaults otherwise (`n_batch` 512: a prompt up to
512 tokens is one batch). TTFT is prompt
evaluation plus the first argmax; decode tokens/s is the other new tokens over the rest of the time. Perplexity:
one `Llama.eval` of the bench's eval token ids with `logits_all=True` (a second `Llama` made after the peak RSS is
read), -log softmax of each position's logits for the next token in float64, mean, exp: the same ids and formula
as `QEfficient.generation.quality`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LLAMACPP_KINDS = ("llamacpp", "llamacpp-q8_0", "llamacpp-f16", "llamacpp-f32")
LLAMACPP_SPEC = "llama-cpp-python==0.3.36"
MADE_FILES = {"llamacpp-f32": "F32", "llamacpp-f16": "F16", "llamacpp-q8_0": "Q8_0"}
FTYPES = {"F32": 0, "F16": 1, "Q8_0": 7}  # llama_ftype: LLAMA_FTYPE_ALL_F32, _MOSTLY_F16, _MOSTLY_Q8_0


def peers_dir() -> Path:
    """Where peer venvs live (shared with `qeff bench --serve`)."""
    return Path(os.environ.get("QEFF_PEERS_DIR") or Path(tempfile.gettempdir()) / "qeff-peers")


def install_hint() -> str:
    venv = peers_dir() / "llama-cpp"
    return (
        f'python -m venv {venv} && CMAKE_ARGS="-DGGML_NATIVE=ON" {venv}/bin/pip install {LLAMACPP_SPEC} '
        "(or set QEFF_LLAMACPP_PYTHON to a python that imports llama_cpp)"
    )


def find_python() -> tuple[str | None, str]:
    """(the peer venv's python, 'llama-cpp-python VERSION; ggml: SYSTEM INFO') when it imports llama_cpp, else
    (None, why not)."""
    candidates = [os.environ.get("QEFF_LLAMACPP_PYTHON"), str(peers_dir() / "llama-cpp" / "bin" / "python")]
    tried = []
    for python in filter(None, candidates):
        if not Path(python).is_file():
            tried.append(f"{python} does not exist")
            continue
        code = (
            "import llama_cpp; print(llama_cpp.__version__); "
            "print(llama_cpp.llama_print_system_info().decode(errors='replace').strip())"
        )
        try:
            check = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{python}: {exc}")
            continue
        if check.returncode == 0:
            version, _, info = check.stdout.strip().partition("\n")
            return python, f"llama-cpp-python {version}; ggml: {info.strip()}"
        tried.append(f"{python} cannot import llama_cpp")
    return None, "; ".join(tried)


# ---- GGUF files (QEfficient's environment: gguf-py) ------------------------------------------------------------


def dequantized_copy(source: str | Path, target: str | Path) -> Path:
    """`source` with every tensor dequantised to F32 (metadata copied, file type set to ALL_F32), written to `target`
    atomically."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), arch)
    skipped = (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE)  # written by the writer
    for field in reader.fields.values():
        if field.name in skipped or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(FTYPES["F32"])
    for tensor in reader.tensors:
        if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
            data = np.array(tensor.data, dtype=np.float32)
        elif tensor.tensor_type in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16):
            data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        else:
            data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        writer.add_tensor(tensor.name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(target)
    return target


def gguf_matmul_bytes(path: str | Path) -> int:
    """Bytes of the weights a decode step's matrix products read from a GGUF: every tensor of 2+ dimensions except
    the token embedding table, which counts only when it is also the LM head (no `output.weight`: tied)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    names = {t.name for t in reader.tensors}
    total = 0
    for tensor in reader.tensors:
        if len(tensor.shape) < 2 or (tensor.name == "token_embd.weight" and "output.weight" in names):
            continue
        total += int(tensor.n_bytes)
    return total


def gguf_type_name(path: str | Path) -> str:
    """The file type of a GGUF ('Q4_1', 'F16', ...) as its metadata names it."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get(gguf.Keys.General.FILE_TYPE)
    if field is None:
        return "GGUF"
    value = int(field.contents())
    try:
        return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"file type {value}"


def prepare_files(gguf_path: str, hf_folder: str, python: str, kinds: list[str], threads: int) -> dict[str, Any]:
    """The GGUF file of each llama.cpp kind: {"files": {kind: path}, "failed": {kind: why}, "types": {kind: name},
    "weight_bytes": {kind: bytes}}. Made files are cached in `<hf_folder>-llamacpp/`."""
    out: dict[str, Any] = {"files": {}, "failed": {}, "types": {}, "weight_bytes": {}}
    cache = Path(hf_folder).parent / f"{Path(hf_folder).name}-llamacpp"
    cache.mkdir(parents=True, exist_ok=True)
    f32 = cache / "F32.gguf"
    for kind in kinds:
        try:
            if kind == "llamacpp":
                path = Path(gguf_path)
            else:
                path = cache / f"{MADE_FILES[kind]}.gguf"
                if not f32.is_file():
                    print(f"[bench] llama.cpp: dequantising {gguf_path} to {f32}", file=sys.stderr)
                    dequantized_copy(gguf_path, f32)
                if kind != "llamacpp-f32" and not path.is_file():
                    print(f"[bench] llama.cpp: llama_model_quantize {f32.name} -> {path.name}", file=sys.stderr)
                    partial = path.with_name(path.name + ".partial")
                    done = subprocess.run(
                        [python, "-I", __file__, "quantize", str(f32), str(partial), MADE_FILES[kind], str(threads)],
                        capture_output=True,
                        text=True,
                    )  # its log: one line per tensor
                    if done.returncode != 0:
                        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
                        raise RuntimeError(f"llama_model_quantize failed: {' / '.join(tail)}")
                    partial.replace(path)
            out["files"][kind] = str(path)
            out["types"][kind] = gguf_type_name(path)
            out["weight_bytes"][kind] = gguf_matmul_bytes(path)
        except Exception as exc:  # noqa: BLE001 - reported as that row's failure
            out["failed"][kind] = f"{type(exc).__name__}: {exc}"
    return out


# ---- the engine, as the bench's child sees it (QEfficient's environment) ---------------------------------------


class LlamaCppEngine:
    """Forwards the bench's commands to a `serve` subprocess of the peer venv's python."""

    def __init__(self, python: str, gguf_path: str, prompt_ids: list[int], threads: int, ctx_len: int,
                 weight_bytes: int) -> None:  # fmt: skip
        self.weight_bytes = weight_bytes
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        self.process = subprocess.Popen(
            [python, "-I", __file__, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            self._ask({"model": gguf_path, "prompt": list(prompt_ids), "threads": threads, "n_ctx": ctx_len})
        except BaseException:
            self.close()
            raise

    def _ask(self, command: dict[str, Any]) -> Any:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the llama.cpp process ended (exit code {self.process.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"llama.cpp: {answer['error']}")
        return answer["ok"]

    def round(self, new_tokens: int) -> dict[str, Any]:
        return self._ask({"cmd": "round", "new_tokens": new_tokens})

    def peak_rss_mb(self) -> float:
        return self._ask({"cmd": "rss"})

    def perplexity(self, ids: list[int]) -> float:
        return self._ask({"cmd": "perplexity", "ids": list(ids)})

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


# ---- the peer venv's side: `python -I bench_llamacpp.py serve | quantize ...` ------------------------------------


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def _serve() -> int:
    """Answer the commands of `LlamaCppEngine` (one JSON line each) on stdin; answers go to the original stdout,
    everything else (llama.cpp's own prints included) to stderr."""
    import numpy as np
    from llama_cpp import Llama, llama_cpp

    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def answer(value: Any) -> None:
        answers.write(json.dumps(value) + "\n")
        answers.flush()

    setup = json.loads(sys.stdin.readline())
    threads, n_ctx = int(setup["threads"]), int(setup["n_ctx"])
    prompt = [int(t) for t in setup["prompt"]]

    def load(logits_all: bool) -> Any:
        return Llama(
            model_path=setup["model"], n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
            flash_attn=True, logits_all=logits_all, verbose=False,
        )  # fmt: skip

    try:
        llm = load(False)
    except Exception as exc:  # noqa: BLE001 - reported to the bench
        answer({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    n_vocab = llm.n_vocab()

    def next_token() -> int:
        logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(n_vocab,))))

    def run_round(new_tokens: int) -> dict[str, Any]:
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        tokens = [next_token()]
        ttft = time.perf_counter() - start
        while len(tokens) < new_tokens:
            llm.eval(tokens[-1:])
            tokens.append(next_token())
        total = time.perf_counter() - start
        return {
            "ttft_s": ttft,
            "prefill_tokens_per_s": len(prompt) / ttft,
            "decode_tokens_per_s": (len(tokens) - 1) / max(total - ttft, 1e-9),
            "tokens": tokens,
        }

    def perplexity(ids: list[int]) -> float:
        nonlocal llm
        del llm  # one model in memory at a time; the peak RSS was read before
        scorer = load(True)
        scorer.eval(ids)
        logits = np.asarray(scorer.scores[: len(ids) - 1], dtype=np.float64)
        top = logits.max(axis=1)
        log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        nll = log_norm - logits[np.arange(len(ids) - 1), ids[1:]]
        del scorer
        return float(np.exp(nll.mean()))

    answer({"ok": {"n_vocab": n_vocab}})
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["cmd"] == "round":
                answer({"ok": run_round(int(command["new_tokens"]))})
            elif command["cmd"] == "rss":
                answer({"ok": _peak_rss_mb()})
            elif command["cmd"] == "perplexity":
                answer({"ok": perplexity([int(t) for t in command["ids"]])})
            else:
                break
        except Exception as exc:  # noqa: BLE001 - reported to the bench
            answer({"error": f"{type(exc).__name__}: {exc}"})
    return 0


def _quantize(source: str, target: str, type_name: str, threads: str) -> int:
    """llama.cpp's quantizer (what `llama-quantize SOURCE TARGET TYPE THREADS` runs) on a F32/F16 GGUF."""
    from llama_cpp import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[type_name]
    params.nthread = int(threads)
    code = llama_cpp.llama_model_quantize(source.encode(), target.encode(), params)
    if code != 0:
        print(f"llama_model_quantize returned {code}", file=sys.stderr)
    return int(code != 0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        sys.exit(_serve())
    if sys.argv[1:2] == ["quantize"] and len(sys.argv) == 6:
        sys.exit(_quantize(*sys.argv[2:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
