"""Reading peft LoRA adapter folders (`adapter_config.json` + `adapter_model.safetensors`) into the matrices the graph
takes, and checking them against a base model.

Only what inference needs is read: per targeted module, `A^T` `[in, r]` and `scaling * B^T` `[r, out]` (peft computes
`base(x) + lora_B(lora_A(x)) * scaling`, `scaling = alpha / r`, or `alpha / sqrt(r)` with rsLoRA, `alpha` from
`alpha_pattern` where it names the module). peft itself is not needed to read a folder.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."
# config flags of LoRA variants whose computation is not `x @ A^T @ B^T * scaling`
_VARIANTS = {
    "use_dora": "DoRA (use_dora=True)",
    "lora_bias": "a bias on lora_B (lora_bias=True)",
    "use_qalora": "QALoRA (use_qalora=True)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "layer_replication": "layer replication (layer_replication)",
    "modules_to_save": "fully trained modules saved with the adapter (modules_to_save)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
}


class AdapterError(ValueError):
    """An adapter that cannot be used with this model or program."""


@dataclass(frozen=True)
class LoraAdapter:
    """One LoRA adapter, ready for the graph: per targeted module (its name in the HF model, e.g.
    `model.layers.0.self_attn.q_proj`), `A^T [in, r]` and `scaling * B^T [r, out]`."""

    name: str
    path: Path
    base_model: str | None
    weights: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def rank(self) -> int:
        """The largest rank over the targeted modules."""
        return max(a.shape[1] for a, _ in self.weights.values())

    @property
    def modules(self) -> list[str]:
        return list(self.weights)


def read_adapter_config(path: str | Path) -> dict:
    """The adapter folder's `adapter_config.json`, checked to be a plain LoRA adapter."""
    path = Path(path)
    file = path / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"No {CONFIG_FILE} in {path}: pass a peft adapter folder (what PeftModel.save_pretrained writes)."
        )
    config = json.loads(file.read_text())
    kind = config.get("peft_type")
    if kind != "LORA":
        raise AdapterError(
            f"{path} holds a {kind} adapter (peft_type {kind!r}); only LoRA adapters (peft_type 'LORA') are supported."
        )
    if config.get("target_parameters"):
        raise AdapterError(
            f"{path} puts LoRA on parameters (target_parameters {config['target_parameters']}: MoE experts or "
            "routers fused into parameters, which peft's target_modules='all-linear' adds on MoE models); "
            "QEfficient's LoRA graph applies LoRA to linear modules only: target those (e.g. the attention "
            "projections) with target_modules and no target_parameters."
        )
    for flag, what in _VARIANTS.items():
        if config.get(flag):
            raise AdapterError(f"{path} uses {what}, which QEfficient's LoRA graph does not implement.")
    return config


def read_adapter(path: str | Path, name: str) -> LoraAdapter:
    """Read a peft LoRA adapter folder."""
    path = Path(path)
    config = read_adapter_config(path)
    tensors = _load_tensors(path)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if match is None:
            raise AdapterError(
                f"{path}: weight {key!r} is not a LoRA A/B matrix of a linear module (embedding LoRA, DoRA magnitudes "
                "and biases are not supported)."
            )
        pairs.setdefault(match.group(1), {})[match.group(2)] = tensor
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{path}: module {module!r} has lora_{next(iter(pair))} but not its partner.")
        a, b = pair["A"].float(), pair["B"].float()  # [r, in], [out, r]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"{path}: module {module!r} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, which are not "
                "a linear LoRA pair ([r, in] and [out, r])."
            )
        rank = a.shape[0]
        alpha = config.get("lora_alpha", 8)
        for pattern, value in (config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = value
                break
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        weights[module] = (a.T.contiguous().numpy(), (b.T * scaling).contiguous().numpy())
    if not weights:
        raise AdapterError(f"{path} holds no LoRA weights.")
    return LoraAdapter(name, path, config.get("base_model_name_or_path"), weights)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    for file in WEIGHT_FILES:
        if (path / file).is_file():
            if file.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(path / file))
            return torch.load(path / file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"No adapter weights in {path} (looked for {', '.join(WEIGHT_FILES)}).")


def module_features(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a linear module (nn.Linear, or transformers' Conv1D with its `[in, out]` weight), else
    None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and isinstance(getattr(module, "weight", None), torch.Tensor):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


def check_adapter(adapter: LoraAdapter, model: nn.Module) -> dict[str, tuple[int, int]]:
    """Each targeted module exists in `model` (the HF causal LM) as a linear module with the adapter's shapes; returns
    module -> (in, out). A mismatch names the module: the adapter was trained for another base model."""
    trained_for = f" (it was trained for {adapter.base_model})" if adapter.base_model else ""
    features = {}
    for module, (a, b) in adapter.weights.items():
        try:
            target = model.get_submodule(module)
        except AttributeError:
            raise AdapterError(
                f"Adapter {adapter.name!r} targets module {module!r}, which {type(model).__name__} does not have: "
                f"the adapter belongs to another base model{trained_for}."
            ) from None
        shape = module_features(target)
        if shape is None:
            raise AdapterError(
                f"Adapter {adapter.name!r} targets {module!r}, a {type(target).__name__}; LoRA is supported on linear "
                "modules only."
            )
        if shape != (a.shape[0], b.shape[1]):
            raise AdapterError(
                f"Adapter {adapter.name!r} does not fit module {module!r}: its LoRA maps {a.shape[0]} -> {b.shape[1]} "
                f"features, the base module {shape[0]} -> {shape[1]}; the adapter belongs to another base "
                f"model{trained_for}."
            )
        features[module] = shape
    return features
