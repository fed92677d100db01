"""Pre-quantised checkpoints (GPTQ, AWQ, compressed-tensors, FP8) load without transformers' quantisers, and compile
to `MatMulNBits` holding the checkpoint's own integers (`QEfficient/transformers/quantized_checkpoints.py`,
`QEfficient/backends/checkpoint_weights.py`).

Each checkpoint is written here, in code, from a tiny random llama with its format's own packing (compressed-tensors
by the `compressed-tensors` package itself); the reference is that llama with its Linear weights replaced by this
file's own dequantisation of the packed values, independent of the library's reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from QEfficient import QEFFAutoModelForCausalLM
from QEfficient.transformers.quantized_checkpoints import QuantizedCheckpointError, write_gptq_checkpoint
from QEfficient.validation import validate_causal_lm
from tests.program_checks import PROMPT, last_logits, op_counts
from tests.tiny_models import tiny_decoder

GROUP = 32
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
COMPILE = dict(prefill_seq_len=16, ctx_len=64)


def linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The decoder layers' Linears (what the checkpoints quantise; not the LM head)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}


def save_checkpoint(
    folder: Path, hf: torch.nn.Module, quantization_config: dict, tensors: dict[str, torch.Tensor]
) -> Path:
    """config.json with `quantization_config`, and model.safetensors: `tensors` for the quantised Linears, the rest
    of `hf`'s weights as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    quantized = {f"{name}.weight" for name in linears(hf)}
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k not in quantized}
    save_file({**state, **{k: v.contiguous() for k, v in tensors.items()}}, str(folder / "model.safetensors"))
    config = hf.config.to_dict()
    config["quantization_config"] = quantization_config
    (folder / "config.json").write_text(json.dumps(config, default=str))
    return folder


def reference_with(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The tiny llama with these Linear weights (the test's own dequantisation)."""
    reference = tiny_decoder("llama")
    with torch.no_grad():
        for name, module in linears(reference).items():
            module.weight.copy_(weights[name])
    return reference


def rtn(w: torch.Tensor, bits: int, group: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round to nearest per group of inputs: (levels [out, in] in 0..2^bits-1, fp16-exact scales [out, groups],
    zeros [out, groups])."""
    maxq = (1 << bits) - 1
    blocks = w.reshape(w.shape[0], -1, group)
    low, high = blocks.amin(-1).clamp(max=0), blocks.amax(-1).clamp(min=0)
    if sym:
        high = torch.maximum(-low, high)
        low = -high
    scale = ((high - low) / maxq).half().float()
    zero = torch.full_like(scale, (maxq + 1) // 2) if sym else torch.round(-low / scale).clamp(1, maxq)
    q = torch.clamp(torch.round(blocks / scale[..., None]) + zero[..., None], 0, maxq)
    return q.reshape(w.shape).to(torch.int64), scale, zero.to(torch.int64)


def pack_rows(q: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ's packing along dim 0: [rows, cols] -> int32 [rows * bits / 32, cols], low bits first."""
    per = 32 // bits
    q = q.reshape(-1, per, q.shape[1]).to(torch.int64)
    words = sum(q[:, i] << (bits * i) for i in range(per))
    return torch.from_numpy((words.numpy() & 0xFFFFFFFF).astype(np.uint32).view(np.int32))


def unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    values = (words.to(torch.int64)[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)
    return values.reshape(words.shape[0] * per, words.shape[1])


def gptq_dequantize(tensors: dict[str, torch.Tensor], prefix: str, bits: int) -> torch.Tensor:
    """GPTQ v1, as gptqmodel's torch kernel dequantises: w[i, o] = scales[g_idx[i], o] * (q[i, o] - (qzeros + 1))."""
    q = unpack_rows(tensors[f"{prefix}.qweight"], bits)  # [in, out]
    zeros = unpack_rows(tensors[f"{prefix}.qzeros"].T, bits).T + 1  # [groups, out]
    g = tensors[f"{prefix}.g_idx"].long()
    return (tensors[f"{prefix}.scales"].float()[g] * (q - zeros[g]).float()).T


# ---- checkpoint builders: (folder, reference model) ------------------------------------------------------------------


def gptq_checkpoint(folder: Path, bits: int = 4, act_order: bool = False, calibrated: bool = False) -> Path:
    hf = tiny_decoder("llama")
    ids = torch.randint(0, 2000, (2, 32), generator=torch.Generator().manual_seed(0)) if calibrated else None
    write_gptq_checkpoint(hf, folder, bits=bits, group_size=GROUP, act_order=act_order, calibration_ids=ids)
    return folder


def gptq_reference(folder: Path, bits: int) -> torch.nn.Module:
    tensors = load_file(str(folder / "model.safetensors"))
    return reference_with({name: gptq_dequantize(tensors, name, bits) for name in linears(tiny_decoder("llama"))})


def awq_checkpoint(folder: Path) -> tuple[Path, torch.nn.Module]:
    """AWQ GEMM: qweight [in, out/8] and qzeros [groups, out/8] packed along the outputs in AWQ's interleaved order."""
    hf = tiny_decoder("llama")

    def pack_columns(values: torch.Tensor) -> torch.Tensor:  # [rows, out] -> [rows, out / 8]
        v = values.to(torch.int64).reshape(values.shape[0], -1, 8)
        words = sum(v[:, :, AWQ_ORDER[j]] << (4 * j) for j in range(8))
        return torch.from_numpy((words.numpy() & 0xFFFFFFFF).astype(np.uint32).view(np.int32))

    tensors, weights = {}, {}
    for name, module in linears(hf).items():
        q, scale, zero = rtn(module.weight.detach(), 4, GROUP, sym=False)
        tensors[f"{name}.qweight"] = pack_columns(q.T)
        tensors[f"{name}.qzeros"] = pack_columns(zero.T)
        tensors[f"{name}.scales"] = scale.T.contiguous().half()
        weights[name] = scale.repeat_interleave(GROUP, 1) * (q - zero.repeat_interleave(GROUP, 1)).float()
    config = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm"}
    return save_checkpoint(folder, hf, config, tensors), reference_with(weights)


def compressed_tensors_checkpoint(folder: Path, bits: int, strategy: str, sym: bool) -> tuple[Path, torch.nn.Module]:
    """pack-quantized, packed and unpacked by the compressed-tensors package itself (its compressor quantises with
    our scales and zero points and packs; its decompressor is the reference dequantisation)."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    args = QuantizationArgs(
        num_bits=bits,
        type="int",
        symmetric=sym,
        strategy=strategy,
        group_size=GROUP if strategy == "group" else None,
    )
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    hf = tiny_decoder("llama")
    tensors, weights = {}, {}
    for name, module in linears(hf).items():
        w = module.weight.detach()
        group = GROUP if strategy == "group" else w.shape[1]
        _, scale, zero = rtn(w, bits, group, sym)
        params = {"weight": w, "weight_scale": scale}
        if not sym:
            params["weight_zero_point"] = (zero - (1 << (bits - 1))).to(torch.int8)  # signed, as compressed-tensors
        compressed = PackedQuantizationCompressor.compress(params, scheme)
        for key, value in compressed.items():
            tensors[f"{name}.{key}"] = value.half() if key == "weight_scale" else value
        restored = PackedQuantizationCompressor.decompress({**compressed, "weight_scale": scale}, scheme)
        weights[name] = restored["weight"].float()
    config = QuantizationConfig(
        config_groups={"group_0": scheme}, format="pack-quantized", quantization_status="compressed", ignore=["lm_head"]
    ).to_dict()
    config["quant_method"] = "compressed-tensors"
    return save_checkpoint(folder, hf, json.loads(json.dumps(config, default=str)), tensors), reference_with(weights)


def fp8_checkpoint(folder: Path, block: list[int] | None) -> tuple[Path, torch.nn.Module]:
    """float8_e4m3fn weights with `weight_scale_inv` per [128, 128] block (ragged here: 64- and 128-wide layers) or
    per tensor, as DeepSeek / Qwen FP8 checkpoints."""
    hf = tiny_decoder("llama")
    tensors, weights = {}, {}
    for name, module in linears(hf).items():
        w = module.weight.detach()
        if block:
            rows, cols = -(-w.shape[0] // block[0]), -(-w.shape[1] // block[1])
            scale = torch.zeros(rows, cols)
            for r in range(rows):
                for c in range(cols):
                    tile = w[r * block[0] : (r + 1) * block[0], c * block[1] : (c + 1) * block[1]]
                    scale[r, c] = tile.abs().max() / 448
            full = scale.repeat_interleave(block[0], 0)[: w.shape[0]].repeat_interleave(block[1], 1)[:, : w.shape[1]]
        else:
            scale = w.abs().max() / 448
            full = scale
        fp8 = (w / full).to(torch.float8_e4m3fn)
        tensors[f"{name}.weight"] = fp8
        tensors[f"{name}.weight_scale_inv"] = scale
        weights[name] = fp8.float() * full
    config = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": block}
    return save_checkpoint(folder, hf, config, tensors), reference_with(weights)


# ---- checks --------------------------------------------------------------------------------------------------------


def check_exact(folder: Path, reference: torch.nn.Module, method: str, matmul_nbits: int, greedy: bool = True) -> None:
    """The loaded model's Linears are the reference's bit for bit; the program compiled with fp32 compute gives the
    reference's logits (1e-4 relative) and greedy tokens, with `matmul_nbits` MatMulNBits nodes."""
    model = QEFFAutoModelForCausalLM.from_pretrained(str(folder))
    for name, module in linears(reference).items():
        assert torch.equal(model.hf_model.get_submodule(name).weight, module.weight), name
    model.compile(**COMPILE, accuracy_level=0)
    manifest = model.program.manifest
    assert manifest["options"]["weights"] == "checkpoint" and manifest["checkpoint_weights"]["method"] == method
    assert op_counts(model.program_path)["MatMulNBits"] == matmul_nbits
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        expected = reference(ids).logits[0, -1].numpy()
    got = last_logits(model)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    if greedy:
        tokens = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
        assert model.generate(None, [PROMPT], generation_len=8).generated_ids[0] == tokens[0, len(PROMPT) :].tolist()


# 2 layers: packed q/k/v, o, packed gate/up, down (14 quantised Linears in 8 MatMuls)
PACKED_MATMULS = 8


def test_gptq_4bit_compiles_to_its_own_integers(tmp_path: Path) -> None:
    folder = gptq_checkpoint(tmp_path / "gptq")
    check_exact(folder, gptq_reference(folder, 4), "gptq", PACKED_MATMULS)
    # the default program: the checkpoint's weights with int8 compute (accuracy_level 4, as every MatMulNBits program);
    # weights="fp32" is the dequantised model, a program of its own
    model = QEFFAutoModelForCausalLM.from_pretrained(str(folder))
    model.compile(**COMPILE)
    default = model.program_path
    assert model.program.manifest["options"]["accuracy_level"] == 4
    assert model.program.manifest["checkpoint_weights"]["matmul_nbits"] == {"4-bit": 14}
    model.compile(**COMPILE, weights="fp32")
    assert model.program_path != default and op_counts(model.program_path)["MatMulNBits"] == 0
    # weights="int4": the checkpoint's weights kept, the rest (the LM head) quantised
    model.compile(**COMPILE, weights="int4")
    assert model.program.manifest["checkpoint_weights"]["matmul_nbits"] == {"4-bit": 14}
    assert op_counts(model.program_path)["MatMulNBits"] == PACKED_MATMULS + 1


def test_gptq_8bit(tmp_path: Path) -> None:
    folder = gptq_checkpoint(tmp_path / "gptq8", bits=8)
    check_exact(folder, gptq_reference(folder, 8), "gptq", PACKED_MATMULS, greedy=False)


def test_gptq_act_order_permutes_the_inputs(tmp_path: Path) -> None:
    """desc_act: g_idx is not i // group_size; GPTQ itself (a Hessian from calibration tokens) picks the order."""
    folder = gptq_checkpoint(tmp_path / "gptq-act", act_order=True, calibrated=True)
    g_idx = load_file(str(folder / "model.safetensors"))["model.layers.0.self_attn.q_proj.g_idx"]
    assert not torch.equal(g_idx, torch.arange(64, dtype=torch.int32) // GROUP)
    check_exact(folder, gptq_reference(folder, 4), "gptq", PACKED_MATMULS)
    model = QEFFAutoModelForCausalLM.from_pretrained(str(folder))
    model.compile(**COMPILE, accuracy_level=0)
    # one Gather per permuted input (q/k/v share one, gate/up share one): 4 per layer
    assert model.program.manifest["checkpoint_weights"]["permuted_inputs"] == 8
    # `qeff validate` compiles the checkpoint's weights with fp32 compute: every stage equals HF's greedy tokens
    report = validate_causal_lm(str(folder), prompts=[PROMPT, PROMPT[:3]], generation_len=8)
    assert report.passed, report


def test_awq(tmp_path: Path) -> None:
    folder, reference = awq_checkpoint(tmp_path / "awq")
    check_exact(folder, reference, "awq", PACKED_MATMULS)


@pytest.mark.parametrize(
    ("bits", "strategy", "sym"), [(4, "group", True), (4, "group", False), (8, "channel", True)], ids=str
)
def test_compressed_tensors_pack_quantized(tmp_path: Path, bits: int, strategy: str, sym: bool) -> None:
    pytest.importorskip("compressed_tensors")
    folder, reference = compressed_tensors_checkpoint(tmp_path / "ct", bits, strategy, sym)
    check_exact(folder, reference, "compressed-tensors", PACKED_MATMULS, greedy=bits == 4 and sym)


@pytest.mark.parametrize("block", [[128, 128], None], ids=["block", "tensor"])
def test_fp8_is_dequantized_to_fp32_compute(tmp_path: Path, block: list[int] | None) -> None:
    folder, reference = fp8_checkpoint(tmp_path / "fp8", block)
    check_exact(folder, reference, "fp8", 0, greedy=block is not None)
    model = QEFFAutoModelForCausalLM.from_pretrained(str(folder))
    model.compile(**COMPILE)
    assert "fp32" in model.program.manifest["checkpoint_weights"]["note"]


def test_group_size_without_a_block_size_stays_fp32(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A group of 8 inputs has no MatMulNBits block size: those weights are computed in fp32, and the log says so."""
    hf = tiny_decoder("llama")
    folder = write_gptq_checkpoint(hf, tmp_path / "gptq-g8", group_size=8)
    model = QEFFAutoModelForCausalLM.from_pretrained(str(folder))
    model.compile(**COMPILE)
    assert op_counts(model.program_path)["MatMulNBits"] == 0
    assert len(model.program.manifest["checkpoint_weights"]["fp32"]) == 14
    assert "group size 8 is no multiple of a MatMulNBits block size" in caplog.text


def test_bad_checkpoints_raise_clear_errors(tmp_path: Path) -> None:
    folder = gptq_checkpoint(tmp_path / "gptq")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["bits"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantizedCheckpointError, match="GPTQ checkpoint with 3-bit weights"):
        QEFFAutoModelForCausalLM.from_pretrained(str(folder))

    folder = gptq_checkpoint(tmp_path / "gptq-no-scales")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.scales"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(QuantizedCheckpointError, match="'model.layers.1.mlp.up_proj.scales' is missing"):
        QEFFAutoModelForCausalLM.from_pretrained(str(folder))

    plain = QEFFAutoModelForCausalLM(tiny_decoder("llama"))
    with pytest.raises(ValueError, match="weights='checkpoint' keeps a pre-quantised checkpoint's own"):
        plain.compile(**COMPILE, weights="checkpoint")


def test_gptq_beats_round_to_nearest_on_its_calibration_tokens() -> None:
    """`write_gptq_checkpoint(calibration_ids=...)` is GPTQ: its layer outputs on the calibration activations are
    closer to fp32 than round-to-nearest's."""
    from QEfficient.transformers.quantized_checkpoints import _gptq_matrix

    torch.manual_seed(0)
    w = torch.randn(64, 128)
    x = torch.randn(256, 128) * torch.linspace(0.1, 3, 128)  # uneven input channels, as real activations
    hessian = 2 * x.T @ x / x.shape[0]
    errors = {}
    for name, h in (("rtn", None), ("gptq", hessian)):
        q, scales, zeros, g_idx = _gptq_matrix(w, 4, GROUP, True, h, sym=True)
        g = torch.from_numpy(g_idx)
        dequantized = torch.from_numpy(scales).T[:, g] * (torch.from_numpy(q).float() - torch.from_numpy(zeros).T[:, g])
        errors[name] = float(((x @ (dequantized - w).T) ** 2).mean())
    assert errors["gptq"] < 0.8 * errors["rtn"], errors
