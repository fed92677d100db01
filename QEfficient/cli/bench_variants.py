"""`qeff bench` rows made from the bench's own model, compiled with the same settings as the others:

- `fp32-lora`: the fp32 program with a LoRA adapter (`QEFFAutoPeftModelForCausalLM`, docs/lora.md): rank 16 on every
  linear layer of the decoder (peft's `all-linear`), A and B random (`init_lora_weights=False`, seed 0), alpha 32.
  Its row against the `fp32` row is the cost of serving through an adapter.
- `gptq-int4`: the model written as a GPTQ checkpoint (4 bits, groups of 32, asymmetric: integer zero points, no
  act-order) by `write_gptq_checkpoint`, GPTQ itself calibrated on `CALIBRATION_TEXT` (not the perplexity text; 384
  tokens), then loaded as
  any GPTQ checkpoint is (docs/quantized_checkpoints.md): its integers compile to `MatMulNBits` as they are, and the LM
  head, which GPTQ leaves in full precision, is quantised to 8 bits as a GGUF Q8_0 head is (`weights="int8"`).

The adapter and the checkpoint are made once and cached next to the bench's HF folder; the adapter's graph inputs are
saved beside them (`...-bench-lora-r16.npz`), so that the engine's process binds them without PyTorch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from QEfficient.utils.cache import build_artifact

VARIANTS = ("fp32-lora", "gptq-int4")
LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear", "init_lora_weights": False}
# measured on SmolLM2 (perplexity of the fp32 model 40.69): groups of 32, asymmetric 42.5; groups of 64 with act-order,
# symmetric 47.3 (asymmetric 49.2); round-to-nearest, groups of 64, symmetric 56.3
GPTQ = {"bits": 4, "group_size": 32, "act_order": False, "sym": False}
CALIBRATION_ROWS = 64  # tokens per calibration row


def _artefact(hf_folder: str, suffix: str) -> Path:
    folder = Path(hf_folder)
    return folder.parent / f"{folder.name}-bench-{suffix}"


def _lora_inputs(hf_folder: str) -> Path:
    return _artefact(hf_folder, f"lora-r{LORA['r']}.npz")


def make_lora_adapter(hf_folder: str) -> Path:
    """The bench's LoRA adapter on the model in `hf_folder` (cached): a peft adapter folder."""

    def build(tmp: Path) -> dict[str, Any]:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
        get_peft_model(model, LoraConfig(**LORA)).save_pretrained(tmp)
        return {"lora": LORA}

    return build_artifact(_artefact(hf_folder, f"lora-r{LORA['r']}"), build, description="bench LoRA adapter")[0]


def make_gptq_checkpoint(hf_folder: str, tokenizer: Any) -> Path:
    """The bench's GPTQ checkpoint of the model in `hf_folder` (cached): a folder `from_pretrained` loads."""

    def build(tmp: Path) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForCausalLM

        from QEfficient.generation.eval_text import CALIBRATION_TEXT
        from QEfficient.transformers.quantized_checkpoints import write_gptq_checkpoint

        model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
        ids = tokenizer(CALIBRATION_TEXT)["input_ids"]
        rows = len(ids) // CALIBRATION_ROWS
        calibration = torch.tensor(ids[: rows * CALIBRATION_ROWS]).reshape(rows, CALIBRATION_ROWS)
        write_gptq_checkpoint(model, tmp, calibration_ids=calibration, tokenizer=tokenizer, **GPTQ)
        return {"gptq": GPTQ, "calibration_tokens": rows * CALIBRATION_ROWS}

    flags = [key for key in ("sym", "act_order") if GPTQ[key]]
    name = "-".join(["gptq", f"w{GPTQ['bits']}", f"g{GPTQ['group_size']}", *flags])
    return build_artifact(_artefact(hf_folder, name), build, description="bench GPTQ checkpoint")[0]


def compile_variant(kind: str, source: str, hf_folder: str, tokenizer: Any, compile_kwargs: dict[str, Any]) -> str:
    """Make and compile one of `VARIANTS` for the model `source` (its HF folder `hf_folder`); returns the program's
    directory."""
    if kind == "fp32-lora":
        from QEfficient import QEFFAutoPeftModelForCausalLM

        adapter = make_lora_adapter(hf_folder)
        model = QEFFAutoPeftModelForCausalLM.from_pretrained(adapter, base_model=source)
        model.compile(**compile_kwargs)
        inputs = _lora_inputs(hf_folder)
        partial = inputs.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, **model.lora_slots.arrays)
        os.replace(partial, inputs)  # the same values on every run: a reader sees the old file or the new one
        return str(model.program_path)
    if kind == "gptq-int4":
        from QEfficient import QEFFAutoModelForCausalLM

        model = QEFFAutoModelForCausalLM.from_pretrained(make_gptq_checkpoint(hf_folder, tokenizer))
        model.compile(weights="int8", **compile_kwargs)
        return str(model.program_path)
    raise ValueError(f"Unknown bench variant {kind!r}; expected one of {VARIANTS}.")


def bind_variant_inputs(kind: str, generator: Any, hf_folder: str) -> None:
    """What a variant's program needs besides the text generator's own inputs: the LoRA adapter in slot 0."""
    if kind == "fp32-lora":
        with np.load(_lora_inputs(hf_folder)) as arrays:
            generator.program.bind_constants({name: arrays[name] for name in arrays.files})
        generator.adapter_ids = [0]


def step_inputs(kind: str) -> dict[str, np.ndarray]:
    """A variant's inputs of a bare decode step besides ids and positions (`perplexity`)."""
    return {"adapter_ids": np.zeros((1, 1), dtype=np.int64)} if kind == "fp32-lora" else {}
