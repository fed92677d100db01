"""PyTorch transforms specific to HF transformers models."""

from __future__ import annotations

from torch import nn

from QEfficient.base.pytorch_transforms import PytorchTransform
from QEfficient.transformers.embeddings.pooling import EncoderForExport, PoolingFn, pooling_name, resolve_pooling
from QEfficient.transformers.models.causal_lm_wrapper import CausalLMForExport


class PoolingTransform(PytorchTransform):
    """Wrap an encoder as `(input_ids, attention_mask) -> pooled embedding | last_hidden_state`.

    With `pooling=None` the graph returns `last_hidden_state`; otherwise the pooling (and the optional L2
    normalisation) become part of the exported graph.
    """

    def __init__(self, pooling: str | PoolingFn | None = None, normalize: bool = False) -> None:
        self.pooling = pooling
        self.pooling_fn = resolve_pooling(pooling)
        self.normalize = normalize
        if normalize and pooling is None:
            raise ValueError(
                "normalize=True needs a pooling (e.g. pooling='mean'): token embeddings are not normalised."
            )

    @property
    def name(self) -> str:
        return f"PoolingTransform(pooling={pooling_name(self.pooling)}, normalize={self.normalize})"

    def apply(self, model: nn.Module) -> tuple[nn.Module, bool]:  # type: ignore[override]
        if isinstance(model, EncoderForExport):
            raise ValueError("The model is already wrapped for export.")
        return EncoderForExport(model, self.pooling_fn, self.normalize), True


class KVCacheTransform(PytorchTransform):
    """Put a HF causal LM behind the fixed-size retained-state KV-cache contract (`CausalLMForExport`)."""

    def __init__(self, continuous_batching: bool = False, image_token_id: int | None = None) -> None:
        self.continuous_batching = continuous_batching
        self.image_token_id = image_token_id

    @property
    def name(self) -> str:
        image = "" if self.image_token_id is None else f", image_token_id={self.image_token_id}"
        return f"KVCacheTransform(continuous_batching={self.continuous_batching}{image})"

    def apply(self, model: nn.Module) -> tuple[nn.Module, bool]:  # type: ignore[override]
        wrapper = CausalLMForExport(model, self.continuous_batching, self.image_token_id)
        return wrapper, True
