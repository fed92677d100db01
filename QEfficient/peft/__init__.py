"""LoRA adapters as inputs of the compiled program (docs/lora.md): switch or mix adapters with no recompile."""

from QEfficient.peft.adapters import AdapterError, LoraAdapter, read_adapter
from QEfficient.peft.auto import QEFFAutoLoraModelForCausalLM, QEFFAutoPeftModelForCausalLM

__all__ = [
    "AdapterError",
    "LoraAdapter",
    "QEFFAutoLoraModelForCausalLM",
    "QEFFAutoPeftModelForCausalLM",
    "read_adapter",
]
