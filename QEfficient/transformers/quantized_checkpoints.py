"""Pre-quantised checkpoints (GPTQ, AWQ, compressed-tensors, FP8) read without transformers' quantisers.

transformers loads these formats only through their quantisers, which want CUDA kernels or gptqmodel / autoawq, and
would keep the integers hidden in their own Linear modules. Here the checkpoint is read beside loading, as a GGUF
file is (`gguf.py`): `config.json`'s `quantization_config.quant_method` says the format; the model is built from the
config with the `quantization_config` removed, the safetensors files are read directly, each quantised Linear is
dequantised into its fp32 weight and every other tensor is loaded as it is. That is the HF-equivalent fp32 model that
export and parity checks use. The integers themselves are kept as one `PackedLinear` per Linear
(`QuantizedCheckpoint`, attached to the model), so that `compile()` writes them as ONNX Runtime's `MatMulNBits`
unchanged (`QEfficient/backends/checkpoint_weights.py`).

Formats (per Linear `p`; levels q in 0 .. 2^bits - 1, weight = scale * (q - zero) per group of input features):

- GPTQ (`quant_method: "gptq"`, 4 or 8 bits): `p.qweight` int32 [in / (32/bits), out], packed along the input
  rows, low bits first; `p.qzeros` int32 [groups, out / (32/bits)] packed along the outputs, holding zero - 1
  (GPTQ v1, `checkpoint_format: "gptq"`; `"gptq_v2"` holds the zero itself); `p.scales` fp16 [groups, out];
  `p.g_idx` int32 [in], each input feature's group (with `desc_act`, act-order: not `i // group_size`).
- AWQ (`quant_method: "awq"`, `version: "gemm"`, 4 bits): `p.qweight` int32 [in, out / 8] packed along the outputs
  in AWQ's interleaved order (nibble j holds column [0, 2, 4, 6, 1, 3, 5, 7][j] of each 8); `p.qzeros` int32
  [groups, out / 8] likewise (the zero itself); `p.scales` fp16 [groups, out].
- compressed-tensors (`quant_method: "compressed-tensors"`): `format: "pack-quantized"` (W4A16, W8A16):
  `p.weight_packed` int32 [out, in * bits / 32], 32 / bits signed values per word, low bits first, each stored plus
  2^(bits-1); `p.weight_scale` [out, groups] (group, channel or tensor strategy); `p.weight_shape` [out, in];
  `p.weight_zero_point` (asymmetric only) packed likewise along the outputs; `p.weight_g_idx` (act-order).
  `format: "int-quantized"`: `p.weight` int8 with the same scales. `format: "float-quantized"`: FP8, as below.
- FP8 (`quant_method: "fp8"`, DeepSeek / Qwen FP8 checkpoints): `p.weight` float8_e4m3fn [out, in] and
  `p.weight_scale_inv` fp32, one per `weight_block_size` block ([128, 128]: [ceil(out/128), ceil(in/128)]) or one
  per tensor; weight = fp8 * weight_scale_inv. Dequantised to fp32 (no `MatMulNBits` form: see
  `checkpoint_weights.py`).

`write_gptq_checkpoint` writes a GPTQ (v1) checkpoint folder from a fp32 HF model: round-to-nearest, or GPTQ itself
(Frantar et al., 2022: the Hessian of calibration activations drives each column's rounding error into the columns
not yet quantised) when calibration token ids are given.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedModel

from QEfficient.backends.checkpoint_weights import (
    FP8_NOTE,
    PackedLinear,
    records_digest,
    save_records,
)
from QEfficient.utils.cache import build_artifact, qeff_home

logger = logging.getLogger(__name__)

READABLE_METHODS = ("gptq", "awq", "compressed-tensors", "fp8")
SUPPORTED_BITS = (4, 8)
ATTRIBUTE = "qeff_quantized_checkpoint"  # where the loaded model keeps its `QuantizedCheckpoint`
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # column of each nibble of an AWQ GEMM word, within its 8 columns


class QuantizedCheckpointError(ValueError):
    """A pre-quantised checkpoint that cannot be read: unsupported settings, or a tensor missing or of a wrong shape."""


@dataclass
class QuantizedCheckpoint:
    """What a pre-quantised checkpoint holds beyond its dequantised fp32 weights: the format and, per quantised Linear
    (by module name), its integers (`PackedLinear`; none for FP8)."""

    method: str
    summary: dict[str, Any]
    linears: dict[str, PackedLinear] = field(default_factory=dict)
    _records: Path | None = field(default=None, repr=False)

    def digest(self) -> str:
        return records_digest(self.method, self.summary, self.linears)

    def records_file(self) -> Path:
        """The records as one file under `$QEFF_HOME/checkpoint_weights`, named by their content (written once)."""
        if self._records is None:
            directory = qeff_home() / "checkpoint_weights" / f"{self.method}-{self.digest()}"

            def build(tmp: Path) -> dict[str, Any]:
                save_records(tmp / "records.safetensors", self.method, self.summary, self.linears)
                return {"kind": "checkpoint-weights", "method": self.method, "linears": len(self.linears)}

            directory, _ = build_artifact(directory, build, description="checkpoint weights")
            self._records = directory / "records.safetensors"
        return self._records

    def compile_options(self, options: dict[str, Any], backend: str) -> dict[str, Any]:
        """`compile`'s backend options with the checkpoint's own weights: `weights="checkpoint"` unless `weights=` is
        given (`"fp32"`: the dequantised weights, nothing kept). Only ONNX Runtime takes them."""
        weights = options.get("weights", "checkpoint")
        if backend != "onnxruntime" or weights == "fp32":
            return options
        if self.method == "fp8":
            logger.warning("%s The compiled program's manifest records it.", FP8_NOTE)
        return {**options, "weights": weights, "checkpoint_weights": str(self.records_file())}


def quantization_method(config: PretrainedConfig) -> str | None:
    """The `quant_method` of the config's `quantization_config`, or None."""
    quantization = getattr(config, "quantization_config", None)
    if quantization is None:
        return None
    if not isinstance(quantization, dict):
        quantization = quantization.to_dict()
    method = quantization.get("quant_method")
    return str(getattr(method, "value", method)).lower() if method is not None else None


# ---- reading --------------------------------------------------------------------------------------------------------


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors files (sharded or not)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(path.name for path in folder.glob("*.safetensors"))
    if not files:
        raise QuantizedCheckpointError(f"No safetensors files in {folder}: quantised checkpoints are read from them.")
    tensors = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensors[key] = f.get_tensor(key)
    return tensors


def _take(tensors: dict[str, torch.Tensor], prefix: str, suffix: str) -> torch.Tensor:
    name = f"{prefix}.{suffix}"
    if name not in tensors:
        raise QuantizedCheckpointError(f"Quantised checkpoint: tensor {name!r} is missing (the layer has no {suffix}).")
    return tensors.pop(name)


def _prefixes(tensors: dict[str, torch.Tensor], suffix: str) -> list[str]:
    return sorted(key[: -len(suffix) - 1] for key in tensors if key.endswith(f".{suffix}"))


def _check_bits(bits: Any, method: str) -> int:
    if bits not in SUPPORTED_BITS:
        raise QuantizedCheckpointError(
            f"{method} checkpoint with {bits}-bit weights: QEfficient reads {' and '.join(map(str, SUPPORTED_BITS))}-"
            "bit integer checkpoints (ONNX Runtime's MatMulNBits)."
        )
    return int(bits)


def _unpack(words: torch.Tensor, bits: int) -> np.ndarray:
    """int32 [..., W] -> uint8 [..., W * 32 / bits]: the values of each word, lowest bits first."""
    data = words.numpy().astype(np.int64) & 0xFFFFFFFF
    shifts = np.arange(0, 32, bits, dtype=np.int64)
    values = (data[..., None] >> shifts) & ((1 << bits) - 1)
    return values.reshape(*data.shape[:-1], -1).astype(np.uint8)


def _group_size(config_group: Any, inputs: int, groups: int, name: str) -> int:
    size = inputs // max(groups, 1) if config_group in (None, -1) or groups == 1 else int(config_group)
    if groups * size != inputs:
        raise QuantizedCheckpointError(
            f"Quantised checkpoint: {name} has {groups} groups of scales for {inputs} input features "
            f"(group_size {config_group})."
        )
    return size


def _gptq(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, PackedLinear]:
    bits = _check_bits(config.get("bits", 4), "GPTQ")
    checkpoint_format = str(config.get("checkpoint_format") or config.get("format") or "gptq").lower()
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise QuantizedCheckpointError(f"GPTQ checkpoint_format {checkpoint_format!r}: 'gptq' or 'gptq_v2' are read.")
    offset = 1 if checkpoint_format == "gptq" else 0  # v1 stores zero - 1
    linears = {}
    for prefix in _prefixes(tensors, "qweight"):
        q = _unpack(_take(tensors, prefix, "qweight").T, bits)  # [out, in]
        scales = _take(tensors, prefix, "scales")  # [groups, out]
        zeros = _unpack(_take(tensors, prefix, "qzeros"), bits).astype(np.int32) + offset  # [groups, out]
        g_idx = tensors.pop(f"{prefix}.g_idx", None)
        out, inputs = q.shape
        if scales.shape[1] != out or zeros.shape[1] < out:
            raise QuantizedCheckpointError(
                f"GPTQ checkpoint: {prefix}.scales {tuple(scales.shape)} / qzeros do not fit qweight's {out} outputs."
            )
        size = _group_size(config.get("group_size"), inputs, scales.shape[0], prefix)
        groups = None if g_idx is None else g_idx.numpy().astype(np.int64)
        if groups is not None and np.array_equal(groups, np.arange(inputs) // size):
            groups = None
        linears[prefix] = PackedLinear(bits, size, q, scales.float().numpy().T.copy(), zeros[:, :out].T.copy(), groups)
    return linears


def _awq(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, PackedLinear]:
    bits = _check_bits(config.get("bits", config.get("w_bit", 4)), "AWQ")
    version = str(config.get("version", "gemm")).lower()
    if bits != 4 or version != "gemm" or config.get("zero_point", True) is False:
        raise QuantizedCheckpointError(
            f"AWQ checkpoint with bits={bits}, version={version!r}, zero_point={config.get('zero_point', True)}: "
            "QEfficient reads AWQ's 4-bit GEMM packing with zero points."
        )
    inverse = np.argsort(AWQ_ORDER)  # nibble holding each column

    def columns(words: torch.Tensor) -> np.ndarray:  # [rows, out / 8] -> [rows, out], AWQ's order undone
        nibbles = _unpack(words, 4).reshape(words.shape[0], -1, 8)
        return nibbles[:, :, inverse].reshape(words.shape[0], -1)

    linears = {}
    for prefix in _prefixes(tensors, "qweight"):
        q = columns(_take(tensors, prefix, "qweight")).T  # [out, in]
        scales = _take(tensors, prefix, "scales")
        zeros = columns(_take(tensors, prefix, "qzeros")).astype(np.int32)
        out, inputs = q.shape
        size = _group_size(config.get("group_size", config.get("q_group_size")), inputs, scales.shape[0], prefix)
        linears[prefix] = PackedLinear(4, size, q.copy(), scales.float().numpy().T.copy(), zeros.T.copy())
    return linears


def _compressed_tensors(
    tensors: dict[str, torch.Tensor], config: dict[str, Any]
) -> tuple[dict[str, PackedLinear], dict[str, torch.Tensor]]:
    """(integer Linears, FP8-dequantised weights) of a compressed-tensors checkpoint."""
    formats = {config.get("format")} | {
        group.get("format") for group in (config.get("config_groups") or {}).values() if isinstance(group, dict)
    }
    formats.discard(None)
    readable = {"pack-quantized", "int-quantized", "naive-quantized", "float-quantized"}
    if not formats <= readable:
        raise QuantizedCheckpointError(
            f"compressed-tensors format {sorted(formats)}: QEfficient reads {sorted(readable)} (integer weights, "
            "packed or not, and FP8)."
        )
    linears: dict[str, PackedLinear] = {}

    def record(prefix: str, q: np.ndarray, bits: int, scale: torch.Tensor, zero: np.ndarray | None) -> None:
        out, inputs = q.shape
        scales = scale.float().reshape(out if scale.numel() > 1 else 1, -1).expand(out, -1).numpy().copy()
        g_idx = tensors.pop(f"{prefix}.weight_g_idx", None)
        groups = None if g_idx is None else g_idx.numpy().astype(np.int64)
        size = _group_size(None, inputs, scales.shape[1], prefix)
        if groups is not None and np.array_equal(groups, np.arange(inputs) // size):
            groups = None
        zeros = None if zero is None else np.broadcast_to(zero.astype(np.int32), scales.shape).copy()
        linears[prefix] = PackedLinear(bits, size, q, scales, zeros, groups)

    for prefix in _prefixes(tensors, "weight_packed"):
        packed = _take(tensors, prefix, "weight_packed")  # [out, words]
        out, inputs = (int(v) for v in _take(tensors, prefix, "weight_shape").tolist())
        bits = _check_bits(round(32 * packed.shape[1] / inputs), "compressed-tensors")
        if -(-inputs * bits // 32) != packed.shape[1]:
            raise QuantizedCheckpointError(
                f"compressed-tensors: {prefix}.weight_packed {tuple(packed.shape)} does not hold {inputs} inputs."
            )
        scale = _take(tensors, prefix, "weight_scale")
        zero = tensors.pop(f"{prefix}.weight_zero_point", None)
        if zero is not None:  # packed along the outputs: [words, groups]
            zero = _unpack(zero.T.contiguous(), bits)[:, :out].T
        record(prefix, _unpack(packed, bits)[:, :inputs].copy(), bits, scale, zero)
    fp8: dict[str, torch.Tensor] = {}
    for prefix in _prefixes(tensors, "weight_scale"):
        weight = _take(tensors, prefix, "weight")
        scale = _take(tensors, prefix, "weight_scale")
        zero = tensors.pop(f"{prefix}.weight_zero_point", None)
        if weight.dtype == torch.int8:  # int-quantized: 8-bit levels stored signed
            levels = (weight.to(torch.int32) + 128).numpy().astype(np.uint8)
            record(prefix, levels, 8, scale, None if zero is None else (zero.to(torch.int32) + 128).numpy())
        elif weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            fp8[f"{prefix}.weight"] = _fp8_weight(weight, scale, None, prefix)
        else:
            raise QuantizedCheckpointError(f"compressed-tensors: {prefix}.weight is {weight.dtype}, not int8 or FP8.")
    for key in [k for k in tensors if k.endswith((".input_scale", ".input_zero_point", ".input_global_scale"))]:
        tensors.pop(key)  # activation quantisation: the fp32 program does not quantise activations
    return linears, fp8


def _fp8_weight(weight: torch.Tensor, scale: torch.Tensor, block: list[int] | None, prefix: str) -> torch.Tensor:
    """The fp32 weight of an FP8 one: weight * scale, the scale per [bn, bk] block (ragged at the edges), per output
    row ([out, 1]) or per tensor."""
    values, scale = weight.to(torch.float32), scale.to(torch.float32)
    out, inputs = values.shape
    if block:
        rows, cols = -(-out // block[0]), -(-inputs // block[1])
        if tuple(scale.shape) != (rows, cols):
            raise QuantizedCheckpointError(
                f"FP8 checkpoint: {prefix} scale has shape {tuple(scale.shape)}; blocks of {list(block)} over "
                f"{[out, inputs]} need {[rows, cols]}."
            )
        scale = scale.repeat_interleave(block[0], 0)[:out].repeat_interleave(block[1], 1)[:, :inputs]
    elif scale.numel() == out:
        scale = scale.reshape(out, 1)
    elif scale.numel() == 1:
        scale = scale.reshape(())
    else:
        raise QuantizedCheckpointError(f"FP8 checkpoint: {prefix} scale has shape {tuple(scale.shape)}.")
    return values * scale


def _fp8(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    block = config.get("weight_block_size")
    weights = {}
    for suffix in ("weight_scale_inv", "weight_scale"):
        for prefix in _prefixes(tensors, suffix):
            scale = tensors.pop(f"{prefix}.{suffix}")
            weights[f"{prefix}.weight"] = _fp8_weight(_take(tensors, prefix, "weight"), scale, block, prefix)
    for key in [k for k in tensors if k.endswith((".activation_scale", ".input_scale"))]:
        tensors.pop(key)  # static activation scales: the fp32 program does not quantise activations
    return weights


def read_quantized_checkpoint(
    folder: Path, quantization_config: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], QuantizedCheckpoint]:
    """The fp32 state dict of a pre-quantised checkpoint folder (each quantised Linear dequantised, every other tensor
    as it is, floats as fp32) and its `QuantizedCheckpoint`."""
    method = str(quantization_config.get("quant_method")).lower()
    tensors = read_safetensors(folder)
    fp32: dict[str, torch.Tensor] = {}
    linears: dict[str, PackedLinear] = {}
    if method == "gptq":
        linears = _gptq(tensors, quantization_config)
    elif method == "awq":
        linears = _awq(tensors, quantization_config)
    elif method == "compressed-tensors":
        linears, fp32 = _compressed_tensors(tensors, quantization_config)
    elif method == "fp8":
        fp32 = _fp8(tensors, quantization_config)
    else:
        raise QuantizedCheckpointError(
            f"quant_method {method!r}: QEfficient reads {', '.join(READABLE_METHODS)} checkpoints without "
            "transformers' quantisers."
        )
    if not linears and not fp32:
        raise QuantizedCheckpointError(f"{method} checkpoint in {folder} holds no quantised weights.")
    leftovers = [k for k, t in tensors.items() if t.dtype in (torch.int32, torch.float8_e4m3fn, torch.float8_e5m2)]
    if leftovers:
        raise QuantizedCheckpointError(
            f"{method} checkpoint: tensor {leftovers[0]!r} ({tensors[leftovers[0]].dtype}) belongs to no quantised "
            "Linear that QEfficient recognises (a scales or qweight tensor missing?)."
        )
    state = {k: t.to(torch.float32) if t.is_floating_point() else t for k, t in tensors.items()}
    state.update(fp32)
    state.update({f"{name}.weight": torch.from_numpy(record.dequantize()) for name, record in linears.items()})
    bits = sorted({r.bits for r in linears.values()})
    summary: dict[str, Any] = {
        "bits": bits or [8],
        "group_size": sorted({r.group_size for r in linears.values()}),
        "act_order": any(r.g_idx is not None for r in linears.values()),
        "quantized_linears": len(linears) or len(fp32),
    }
    if method == "fp8":
        summary["weight_block_size"] = quantization_config.get("weight_block_size")
    if method == "compressed-tensors" and fp32:
        method = "fp8" if not linears else method
    logger.info(
        "Read a %s checkpoint: %d quantised Linears, dequantised to fp32.", method, summary["quantized_linears"]
    )
    return state, QuantizedCheckpoint(method, summary, linears)


def _checkpoint_folder(source: str, is_local: bool, **extra: Any) -> Path:
    """The folder holding the checkpoint's files: `source` itself, or the hub snapshot (HF cache first)."""
    if is_local:
        return Path(source)
    from huggingface_hub import snapshot_download

    keys = {k: extra[k] for k in ("revision", "cache_dir", "local_files_only") if k in extra}
    return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors"], **keys))


def load_quantized_pretrained(
    model_class: type[PreTrainedModel],
    source: str,
    is_local: bool,
    config: PretrainedConfig,
    attention: str,
    **extra: Any,
) -> PreTrainedModel:
    """Build `model_class` from `config` without its `quantization_config`, load the checkpoint's dequantised fp32
    weights into it, and attach the `QuantizedCheckpoint` (as `ATTRIBUTE`)."""
    folder = _checkpoint_folder(source, is_local, **extra)
    quantization = config.quantization_config
    quantization = dict(quantization if isinstance(quantization, dict) else quantization.to_dict())
    plain = copy.deepcopy(config)
    del plain.quantization_config
    state, checkpoint = read_quantized_checkpoint(folder, quantization)
    model, info = model_class.from_pretrained(
        None,
        config=plain,
        state_dict=state,
        dtype=torch.float32,
        attn_implementation=attention,
        output_loading_info=True,
    )
    missing = [k for k in info.get("missing_keys", ()) if k.endswith("weight")]
    if missing:
        raise QuantizedCheckpointError(
            f"{checkpoint.method} checkpoint in {folder}: {len(missing)} weights of {model_class.__name__} are not in "
            f"it (e.g. {sorted(missing)[0]!r})."
        )
    if info.get("unexpected_keys"):
        logger.warning("Tensors of the checkpoint that the model does not use: %s", sorted(info["unexpected_keys"]))
    model.config._name_or_path = str(folder)
    model.name_or_path = str(folder)
    setattr(model, ATTRIBUTE, checkpoint)
    return model


# ---- writing GPTQ ---------------------------------------------------------------------------------------------------


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """uint [..., W * 32 / bits] -> int32 [..., W]: lowest bits first (GPTQ's packing, along the last axis)."""
    per_word = 32 // bits
    grouped = values.astype(np.uint64).reshape(*values.shape[:-1], -1, per_word)
    words = (grouped << (np.arange(per_word, dtype=np.uint64) * bits)).sum(axis=-1)
    return words.astype(np.uint32).view(np.int32)


def _quantize_group(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's quantiser over w [out, g]: (scale fp16-exact, zero) per output row, both [out, 1]."""
    maxq = (1 << bits) - 1
    low = torch.clamp(w.min(dim=1, keepdim=True).values, max=0)
    high = torch.clamp(w.max(dim=1, keepdim=True).values, min=0)
    if sym:
        high = torch.maximum(low.abs(), high)
        low = -high
    scale = torch.where(high > low, (high - low) / maxq, torch.ones_like(high))
    scale = scale.half().float()  # the stored scale is fp16: quantise with it
    zero = torch.full_like(scale, (maxq + 1) // 2) if sym else torch.round(-low / scale)
    return scale, torch.clamp(zero, 1, maxq)  # GPTQ v1 stores zero - 1, so a zero of 0 cannot be written


def _gptq_matrix(
    w: torch.Tensor, bits: int, group: int, act_order: bool, hessian: torch.Tensor | None, sym: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(q [out, in], scales [groups, out], zeros [groups, out], g_idx [in]) of w [out, in]: GPTQ with `hessian`
    (the error of each quantised column spread over the later ones, Cholesky form), else round-to-nearest. With
    `act_order`, columns go in decreasing Hessian diagonal (without a Hessian: decreasing column norm)."""
    w = w.detach().clone().float()
    out, inputs = w.shape
    maxq = (1 << bits) - 1
    importance = torch.diag(hessian) if hessian is not None else (w * w).sum(dim=0)
    order = torch.argsort(importance, descending=True) if act_order else torch.arange(inputs)
    w = w[:, order]
    inverse = None
    if hessian is not None:
        h = hessian[order][:, order].clone()
        dead = torch.diag(h) == 0
        h[dead, dead] = 1
        w[:, dead] = 0
        h += 0.01 * torch.mean(torch.diag(h)) * torch.eye(inputs)
        inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    scales, zeros = [], []
    if inverse is None:  # round to nearest, a group at a time
        for start in range(0, inputs, group):
            scale, zero = _quantize_group(w[:, start : start + group], bits, sym)
            scales.append(scale[:, 0])
            zeros.append(zero[:, 0])
            q[:, start : start + group] = torch.clamp(torch.round(w[:, start : start + group] / scale) + zero, 0, maxq)
    # GPTQ's lazy batches: within a block of columns (whole groups), each column's error updates the block's later
    # columns; the block's errors then update all later columns in one product
    block = group * max(1, 128 // group)
    for first in range(0, inputs if inverse is not None else 0, block):
        last = min(first + block, inputs)
        part, errors, local = w[:, first:last].clone(), torch.zeros(out, last - first), inverse[first:last, first:last]
        for j in range(last - first):
            if j % group == 0:
                scale, zero = _quantize_group(part[:, j : j + group], bits, sym)
                scales.append(scale[:, 0])
                zeros.append(zero[:, 0])
            column = part[:, j : j + 1]
            level = torch.clamp(torch.round(column / scale) + zero, 0, maxq)
            q[:, first + j : first + j + 1] = level
            error = (column - scale * (level - zero)) / local[j, j]
            part[:, j + 1 :] -= error @ local[j : j + 1, j + 1 :]
            errors[:, j : j + 1] = error
        w[:, last:] -= errors @ inverse[first:last, last:]
    g_idx = torch.empty(inputs, dtype=torch.int64)
    g_idx[order] = torch.arange(inputs) // group
    q_original = torch.empty_like(q)
    q_original[:, order] = q
    return (
        q_original.numpy().astype(np.uint8),
        torch.stack(scales).numpy(),
        torch.stack(zeros).numpy().astype(np.int64),
        g_idx.numpy(),
    )


def _calibration_hessians(
    model: PreTrainedModel, names: list[str], calibration_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """2 X^T X / n of each named Linear's inputs over the calibration tokens (one fp32 forward pass)."""
    hessians: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name in names:
        module = model.get_submodule(name)

        def hook(_module: torch.nn.Module, args: tuple, _output: Any, name: str = name) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            hessians[name] = hessians.get(name, 0) + 2 * x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(input_ids=calibration_ids)
    finally:
        for handle in hooks:
            handle.remove()
    return {name: hessians[name] / counts[name] for name in hessians}


def write_gptq_checkpoint(
    model: PreTrainedModel,
    folder: str | os.PathLike,
    bits: int = 4,
    group_size: int = 32,
    act_order: bool = False,
    sym: bool = True,
    calibration_ids: torch.Tensor | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write `model` (fp32 HF) as a GPTQ v1 checkpoint folder (`config.json` with its `quantization_config`,
    `model.safetensors`), as gptqmodel / AutoGPTQ write it: every Linear of the decoder layers quantised (the LM head
    and embeddings stay as they are).

    With `calibration_ids` ([B, S] token ids) the weights are quantised by GPTQ itself, each Linear from the Hessian of
    its inputs in the fp32 model (one pass; not layer-by-layer on the already-quantised model's activations, as
    gptqmodel does); without, by round-to-nearest. `act_order` (GPTQ's `desc_act`) quantises the columns in decreasing
    Hessian diagonal (or column norm) and writes the matching `g_idx`. Returns the folder."""
    from safetensors.torch import save_file

    _check_bits(bits, "GPTQ")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    head = model.get_output_embeddings()
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head and ".layers." in f".{name}"
    ]
    hessians = _calibration_hessians(model, names, calibration_ids) if calibration_ids is not None else {}
    state = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # a tied weight is written once
            continue
        seen.add(tensor.data_ptr())
        state[key] = tensor.detach().contiguous()
    per_word = 32 // bits
    for name in names:
        weight = state.pop(f"{name}.weight")
        out, inputs = weight.shape
        group = inputs if group_size == -1 else group_size
        if inputs % group or inputs % per_word or out % per_word:
            raise ValueError(f"{name} [{out}, {inputs}] does not divide into groups of {group} / words of {bits} bits.")
        q, scales, zeros, g_idx = _gptq_matrix(weight, bits, group, act_order, hessians.get(name), sym)
        state[f"{name}.qweight"] = torch.from_numpy(_pack(q, bits).T.copy())  # [in / per_word, out]
        state[f"{name}.qzeros"] = torch.from_numpy(_pack((zeros - 1) & ((1 << bits) - 1), bits))  # [groups, ...]
        state[f"{name}.scales"] = torch.from_numpy(scales).half()
        state[f"{name}.g_idx"] = torch.from_numpy(g_idx.astype(np.int32))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size,
        "desc_act": act_order,
        "sym": sym,
        "checkpoint_format": "gptq",
        "method": "gptq" if calibration_ids is not None else "rtn",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder
