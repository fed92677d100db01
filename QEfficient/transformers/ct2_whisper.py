"""CTranslate2 Whisper checkpoints (faster-whisper's format) converted once into a plain HF Whisper folder.

A CTranslate2 Whisper model is a folder with `model.bin` (CTranslate2's binary `WhisperSpec`), `config.json`
(suppressed token ids, language ids, alignment heads) and `tokenizer.json` (a HF fast tokenizer). transformers
cannot read it. `ct2_whisper_folder(folder)` converts it into a folder that `WhisperForConditionalGeneration`,
`AutoProcessor` and QEfficient load directly: `config.json`, `generation_config.json`, `model.safetensors` (fp16, as
the source: lossless), the tokenizer and the feature extractor. The folder is an ordinary cached artefact under
`$QEFF_HOME/ct2-whisper/`: keyed by the source files' identity, built atomically under a file lock.

The binary layout (format version 6): u32 version, str spec name, u32 spec revision, u32 variable count, then per
variable: str name, u8 rank, u32 dims, u8 dtype, u32 byte count, the data; then u32 alias count and (alias,
variable) name pairs. A str is a u16 length (with its NUL) and the bytes.

What the conversion does: fused projections are split (self-attention QKV into q/k/v, cross-attention KV into k/v;
Whisper's key projections have no bias and the checkpoint's key bias slices are checked to be zero), layer-norm
gamma/beta become weight/bias, and the output projection is tied to the token embedding, as in Whisper.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from QEfficient.utils.cache import build_artifact, hash_params, qeff_home

logger = logging.getLogger(__name__)

CT2_FORMAT_VERSION = 6
# CTranslate2's dtype codes; 5 (bfloat16) has no numpy type and is widened to float32 by hand.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BFLOAT16 = 5
ENGLISH_VOCAB = 51864  # the English-only models' vocabulary; multilingual ones have 51865 or more


class Ct2FormatError(ValueError):
    """A CTranslate2 file that is not a readable Whisper model."""


@dataclass
class Ct2Model:
    """The contents of a CTranslate2 `model.bin`: its spec, and every variable by name (aliases resolved)."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]


class _Reader:
    """Sequential little-endian reads over the file's bytes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def unpack(self, fmt: str) -> Any:
        fmt = "<" + fmt
        value = struct.unpack_from(fmt, self.data, self.offset)[0]
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("H")  # includes the trailing NUL
        text = self.data[self.offset : self.offset + length - 1].decode("utf-8")
        self.offset += length
        return text

    def raw(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise Ct2FormatError(f"Truncated CTranslate2 file: {size} bytes wanted at offset {self.offset}.")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk


def read_ct2_model(data: bytes) -> Ct2Model:
    """Parse a CTranslate2 `model.bin` (format version 6) from its bytes."""
    reader = _Reader(data)
    try:
        version = reader.unpack("I")
        if version != CT2_FORMAT_VERSION:
            raise Ct2FormatError(f"CTranslate2 binary version {version} is not supported (only {CT2_FORMAT_VERSION}).")
        spec, revision, count = reader.string(), reader.unpack("I"), reader.unpack("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = reader.string()
            rank = reader.unpack("B")
            dims = [reader.unpack("I") for _ in range(rank)]
            dtype, size = reader.unpack("B"), reader.unpack("I")
            raw = reader.raw(size)
            if dtype == _BFLOAT16:
                array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            elif dtype in _DTYPES:
                array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
            else:
                raise Ct2FormatError(f"Variable {name} has unknown CTranslate2 dtype code {dtype}.")
            variables[name] = array.reshape(dims)
        for _ in range(reader.unpack("I")):
            alias, target = reader.string(), reader.string()
            variables[alias] = variables[target]
    except struct.error as exc:
        raise Ct2FormatError(f"Truncated or damaged CTranslate2 file ({exc}).") from exc
    if reader.offset != len(data):
        raise Ct2FormatError(f"{len(data) - reader.offset} unexpected trailing bytes after the CTranslate2 model.")
    return Ct2Model(spec, revision, variables)


def _layer_count(variables: dict[str, np.ndarray], stack: str) -> int:
    pattern = re.compile(rf"{stack}/layer_(\d+)/")
    return len({m.group(1) for name in variables if (m := pattern.match(name))})


def whisper_state_dict(model: Ct2Model) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(HF `WhisperForConditionalGeneration` state dict as float arrays, the config sizes read from the model)."""
    if model.spec != "WhisperSpec":
        raise Ct2FormatError(f"The CTranslate2 model is a {model.spec}, not a WhisperSpec.")
    v = model.variables
    embed = v["decoder/embeddings/weight"]
    d = embed.shape[1]
    sizes = {
        "vocab_size": embed.shape[0],
        "d_model": d,
        "num_mel_bins": v["encoder/conv1/weight"].shape[1],
        "encoder_layers": _layer_count(v, "encoder"),
        "decoder_layers": _layer_count(v, "decoder"),
        "encoder_attention_heads": int(v["encoder/num_heads"]),
        "decoder_attention_heads": int(v["decoder/num_heads"]),
        "encoder_ffn_dim": v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "max_source_positions": v["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": v["decoder/position_encodings/encodings"].shape[0],
    }
    sd: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = v[f"{src}/weight"]
        if f"{src}/bias" in v:
            sd[f"{dst}.bias"] = v[f"{src}/bias"]

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def split(dst: str, src: str, parts: Sequence[str]) -> None:
        """A fused projection split row-wise into `{part}_proj`; key projections have no bias (checked zero)."""
        weight, bias = v[f"{src}/weight"], v[f"{src}/bias"]
        for i, part in enumerate(parts):
            rows = slice(i * d, (i + 1) * d)
            sd[f"{dst}.{part}_proj.weight"] = weight[rows]
            if part != "k":
                sd[f"{dst}.{part}_proj.bias"] = bias[rows]
            elif np.any(bias[rows]):
                raise Ct2FormatError(f"{src} has a non-zero key bias, which Whisper's key projection does not have.")

    enc, dec = "model.encoder", "model.decoder"
    linear(f"{enc}.conv1", "encoder/conv1")
    linear(f"{enc}.conv2", "encoder/conv2")
    sd[f"{enc}.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    def self_attention_and_ffn(dst: str, src: str) -> None:
        """The parts every encoder and decoder layer has: self-attention (fused QKV) and the feed-forward block."""
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        split(f"{dst}.self_attn", f"{src}/self_attention/linear_0", "qkv")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")

    for i in range(sizes["encoder_layers"]):
        self_attention_and_ffn(f"{enc}.layers.{i}", f"encoder/layer_{i}")
    norm(f"{enc}.layer_norm", "encoder/layer_norm")
    sd[f"{dec}.embed_tokens.weight"] = embed
    sd[f"{dec}.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    for i in range(sizes["decoder_layers"]):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        self_attention_and_ffn(dst, src)
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")  # cross-attention (fused KV)
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        split(f"{dst}.encoder_attn", f"{src}/attention/linear_1", "kv")
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    return sd, sizes


def ct2_tokenizer(ct2_dir: str | Path) -> Any:
    """The Whisper tokenizer of a CTranslate2 folder (its `tokenizer.json`, `<|endoftext|>` as every special token
    HF's Whisper tokenizer names)."""
    from transformers import WhisperTokenizerFast

    return WhisperTokenizerFast(
        tokenizer_file=str(Path(ct2_dir) / "tokenizer.json"),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def convert_ct2_whisper(ct2_dir: str | Path, out_dir: str | Path, bin_parts: Sequence[str | Path] = ()) -> Path:
    """Write a HF Whisper folder converted from the CTranslate2 model in `ct2_dir` into `out_dir`.

    `bin_parts`: the `model.bin` file, or its parts in order when it was split (default: `ct2_dir/model.bin`).
    `ct2_dir` holds `config.json` and `tokenizer.json`.
    """
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )
    from transformers.utils import logging as hf_logging

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    parts = [Path(p) for p in bin_parts] or [ct2_dir / "model.bin"]
    model = read_ct2_model(b"".join(p.read_bytes() for p in parts))
    state, sizes = whisper_state_dict(model)
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    multilingual = sizes["vocab_size"] > ENGLISH_VOCAB
    eot = 50257 if multilingual else 50256  # <|endoftext|>; <|startoftranscript|> follows it
    sot = eot + 1
    config = WhisperConfig(
        **sizes,
        bos_token_id=eot + (0 if multilingual else 1),
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        tie_word_embeddings=True,
        architectures=["WhisperForConditionalGeneration"],
    )
    hf_model = WhisperForConditionalGeneration(config)
    tensors = {name: torch.from_numpy(np.array(array, dtype=np.float32)) for name, array in state.items()}
    result = hf_model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if k != "proj_out.weight"]  # tied to the token embedding
    if missing or result.unexpected_keys:
        raise Ct2FormatError(f"Conversion mismatch: missing {missing}, unexpected {result.unexpected_keys}.")
    hf_model.tie_weights()
    tokenizer = ct2_tokenizer(ct2_dir)
    vocab = tokenizer.get_vocab()
    generation = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=config.bos_token_id,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=sizes["max_target_positions"],
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        alignment_heads=ct2_config.get("alignment_heads"),
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        prev_sot_token_id=vocab.get("<|startofprev|>"),
        is_multilingual=multilingual,
    )
    if multilingual:
        lang_ids = set(ct2_config.get("lang_ids", ()))
        generation.lang_to_id = {token: i for token, i in vocab.items() if i in lang_ids}
        generation.task_to_id = {task: vocab[f"<|{task}|>"] for task in ("transcribe", "translate")}
    hf_model.generation_config = generation
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar: callers show their own progress
    try:
        hf_model.to(torch.float16).save_pretrained(out_dir)  # the source is fp16: lossless
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=sizes["num_mel_bins"]), tokenizer)
    processor.save_pretrained(out_dir)
    return out_dir


def ct2_whisper_folder(ct2_dir: str | Path, bin_parts: Sequence[str | Path] = ()) -> Path:
    """The HF folder converted from the CTranslate2 Whisper model in `ct2_dir`: converted on first use, then cached
    under `$QEFF_HOME/ct2-whisper/` (keyed by the source files' paths, sizes and modification times)."""
    ct2_dir = Path(ct2_dir).resolve()
    parts = [Path(p).resolve() for p in bin_parts] or [ct2_dir / "model.bin"]
    sources = [*parts, ct2_dir / "config.json", ct2_dir / "tokenizer.json"]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Not a CTranslate2 Whisper model folder: missing {', '.join(missing)}.")
    identity = [{"path": str(p), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in sources]
    directory = qeff_home() / "ct2-whisper" / f"{ct2_dir.parent.name}-{hash_params({'sources': identity})}"

    def build(tmp: Path) -> dict[str, Any]:
        logger.info("Converting the CTranslate2 Whisper model in %s to a HF folder (once).", ct2_dir)
        convert_ct2_whisper(ct2_dir, tmp, parts)
        return {"kind": "ct2-whisper-conversion", "source": str(ct2_dir), "sources": identity}

    directory, _ = build_artifact(directory, build, description="CTranslate2 Whisper conversion")
    return directory
