"""PyTorch transforms: small, named rewrites applied in order to a model before export.

A transform is a class (or an instance, when it carries options) with `apply(model) -> (model, applied)`.
Its `name` goes into the export hash, so changing the list of transforms changes the cache key.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn


class PytorchTransform:
    """Base of all PyTorch transforms. Subclasses implement `apply`."""

    @classmethod
    def apply(cls, model: nn.Module) -> tuple[nn.Module, bool]:
        raise NotImplementedError

    @property
    def name(self) -> str:  # instances with options override this to include them
        return type(self).__name__


def transform_name(transform: PytorchTransform | type[PytorchTransform]) -> str:
    """The name under which a transform (class or configured instance) enters hashes and logs."""
    return transform.__name__ if isinstance(transform, type) else transform.name


class ModuleMappingTransform(PytorchTransform):
    """Swap the class of every module whose type is a key of `_module_mapping`, keeping its parameters.

    After the swap the module's `__qeff_init__()` runs if the new class defines one. This is how an adapter
    replaces a HF module's `forward` without copying weights.
    """

    _module_mapping: ClassVar[dict[type[nn.Module], type[nn.Module]]] = {}

    @classmethod
    def apply(cls, model: nn.Module) -> tuple[nn.Module, bool]:
        applied = False
        for module in model.modules():
            replacement = cls._module_mapping.get(type(module))
            if replacement is not None:
                module.__class__ = replacement
                if hasattr(module, "__qeff_init__"):
                    module.__qeff_init__()
                applied = True
        return model, applied

    @classmethod
    def register(cls, source: type[nn.Module], target: type[nn.Module]) -> None:
        cls._module_mapping = {**cls._module_mapping, source: target}


class FloatTransform(PytorchTransform):
    """Cast floating-point parameters and buffers to fp32, the precision the export is validated at."""

    @classmethod
    def apply(cls, model: nn.Module) -> tuple[nn.Module, bool]:
        import torch

        changed = any(t.is_floating_point() and t.dtype != torch.float32 for t in model.state_dict().values())
        if changed:
            model = model.float()
        return model, changed
