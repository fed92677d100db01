"""Loading HF models for export: hub id (offline from the HF cache), local folder, or GGUF file.

A pre-quantised checkpoint (GPTQ, AWQ, compressed-tensors, FP8) is read by `quantized_checkpoints.py` instead of
transformers' quantisers: dequantised to fp32, its integers kept for `compile()`.

Export needs a model that is fp32, in eval mode, fully materialised (no meta tensors) and using an
attention implementation that traces to plain ONNX ops. `load_pretrained` forces those settings and logs
each one it changed, so nothing happens silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

# Attention implementations that the ONNX exporters can trace to standard ops.
EXPORTABLE_ATTENTION = ("sdpa", "eager")


class ModelNotFoundError(FileNotFoundError):
    """Raised when a model is neither a local folder nor available from the hub or its cache."""


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else with a slash, or starting like a path, is a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def resolve_model_source(name_or_path: str | os.PathLike) -> tuple[str, bool]:
    """Return (source, is_local). A path that does not exist raises `ModelNotFoundError` at once."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(
                f"'{text}' is a file, not a model folder. Pass the folder that holds config.json "
                f"(for a GGUF file: from_pretrained(folder, gguf_file='{path.name}'))."
            )
        return str(path), True
    if _looks_like_path(text):
        raise ModelNotFoundError(f"Model path '{text}' does not exist. Pass an existing local folder or a hub id.")
    return text, False


def _supports(model_class: type[PreTrainedModel], attention: str) -> bool:
    flag = {"sdpa": "_supports_sdpa", "eager": None}[attention]
    return flag is None or bool(getattr(model_class, flag, False))


def choose_attention(model_class: type[PreTrainedModel], requested: str | None) -> str:
    """The attention implementation to load with: the user's if exportable, else sdpa where supported, else eager."""
    if requested in EXPORTABLE_ATTENTION:
        return requested
    chosen = "sdpa" if _supports(model_class, "sdpa") else "eager"
    if requested is not None:
        logger.warning(
            "attn_implementation=%r cannot be exported to ONNX; QEfficient loads with %r instead.", requested, chosen
        )
    return chosen


_CONFIG_KWARGS = ("gguf_file", "trust_remote_code", "revision", "cache_dir", "subfolder")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """transformers' progress bars off for the block (and back on after it if they were on)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def local_then_hub(load: Callable[..., Any], source: str, is_local: bool) -> Any:
    """Call `load(**extra)` for a local folder; for a hub id, the HF cache first, then the hub.

    Failing both gives `ModelNotFoundError` with what to do; with `HF_HUB_OFFLINE` set the hub is not asked
    (HF would otherwise retry a missing network for about 30 s).
    """
    if is_local:
        return load()
    try:
        return load(local_files_only=True)
    except OSError:
        if _hub_offline():
            raise ModelNotFoundError(
                f"Model '{source}' is not a local folder and is not in the HF cache, and HF_HUB_OFFLINE is set. "
                f"Pass a local folder, or download it first (hf download {source})."
            ) from None
    try:
        return load()
    except OSError as exc:
        raise ModelNotFoundError(
            f"Model '{source}' is not a local folder, not in the HF cache, and the hub could not provide it "
            f"({str(exc).splitlines()[0]}). Pass a local folder path instead."
        ) from None


def load_pretrained(
    auto_class: Any,
    name_or_path: str | os.PathLike,
    *args: Any,
    check_config: Callable[[PretrainedConfig], None] | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """`auto_class.from_pretrained` with the settings export needs, from a local folder or the (offline) hub.

    Forced: `dtype=float32`, an exportable `attn_implementation`, no `device_map` offloading. A hub id is
    first looked up in the local HF cache; only if it is not there is the hub asked. `check_config(config)`
    runs before any weight is read, to reject an unsupported architecture early.
    """
    name_or_path, gguf = split_gguf_path(name_or_path, kwargs.pop("gguf_file", None))
    if gguf is not None:
        from QEfficient.transformers.gguf import gguf_folder

        name_or_path = gguf_folder(name_or_path, gguf, auto_class)
    source, is_local = resolve_model_source(name_or_path)
    requested_dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
    if requested_dtype not in (None, torch.float32, "float32"):
        logger.warning(
            "dtype=%s requested; QEfficient loads fp32 weights for export (precision is a compile option).",
            requested_dtype,
        )
    if kwargs.pop("device_map", None) is not None:
        logger.warning("device_map is ignored: export needs every weight materialised on the CPU.")
    requested_attention = kwargs.pop("attn_implementation", None)

    def load(**extra: Any) -> PreTrainedModel:
        config_kwargs = {k: kwargs[k] for k in _CONFIG_KWARGS if k in kwargs}
        config = AutoConfig.from_pretrained(source, **config_kwargs, **extra)
        if check_config is not None:
            check_config(config)
        model_class = model_class_for(auto_class, config)
        attention = choose_attention(model_class, requested_attention)
        if _is_readable_quantized(config):  # GPTQ / AWQ / compressed-tensors / FP8: read beside transformers
            from QEfficient.transformers.quantized_checkpoints import load_quantized_pretrained

            logger.info("Loading %s's quantised weights with QEfficient's own reader (dequantised to fp32).", source)
            hub_kwargs = {k: kwargs[k] for k in ("revision", "cache_dir") if k in kwargs}
            return load_quantized_pretrained(model_class, source, is_local, config, attention, **hub_kwargs, **extra)
        logger.info("Loading %s with dtype=float32, attn_implementation=%r (forced for export).", source, attention)
        try:
            return model_class.from_pretrained(
                source, *args, dtype=torch.float32, attn_implementation=attention, **kwargs, **extra
            )
        except ValueError as exc:
            # sdpa chosen for the model, but one of its sub-models (VibeVoice's audio tokenizer) has no sdpa path
            if attention != "sdpa" or requested_attention == "sdpa" or "support an attention" not in str(exc):
                raise
            logger.info("A sub-model of %s has no sdpa attention; loading with eager attention.", model_class.__name__)
            return model_class.from_pretrained(
                source, *args, dtype=torch.float32, attn_implementation="eager", **kwargs, **extra
            )

    with quiet_progress_bars():  # transformers' "Loading weights" bar: our callers show their own progress
        model = local_then_hub(load, source, is_local or bool(kwargs.get("local_files_only")))
    return prepare_for_export(model)


def _is_readable_quantized(config: PretrainedConfig) -> bool:
    """Whether the config names a pre-quantised checkpoint format that `quantized_checkpoints.py` reads."""
    if getattr(config, "quantization_config", None) is None:
        return False
    from QEfficient.transformers.quantized_checkpoints import READABLE_METHODS, quantization_method

    return quantization_method(config) in READABLE_METHODS


def model_class_for(auto_class: Any, config: PretrainedConfig) -> Any:
    """The class `auto_class` maps `config` to; for a config class the auto mapping does not list (e.g. the
    text config of a multimodal model, saved from its `...ForCausalLM`), the transformers class named in
    `config.architectures`. Otherwise `auto_class` itself, which raises HF's own error."""
    mapping = getattr(auto_class, "_model_mapping", {})
    if type(config) in mapping:
        return mapping[type(config)]
    import transformers

    for name in getattr(config, "architectures", None) or []:
        candidate = getattr(transformers, name, None)
        if isinstance(candidate, type) and getattr(candidate, "config_class", None) is type(config):
            return candidate
    return auto_class


def split_gguf_path(name_or_path: str | os.PathLike, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder, gguf file name): a path to a `.gguf` file is split; otherwise `gguf_file` is kept."""
    path = Path(str(name_or_path)).expanduser()
    if gguf_file is None and path.suffix == ".gguf" and path.is_file():
        return str(path.parent), path.name
    return str(name_or_path), gguf_file


# A folder holding any of these has a tokenizer; without them AutoTokenizer would try to build the config's
# tokenizer class from nothing (and fail on its optional dependencies).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs: Any) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model (same local-first rule as `load_pretrained`).

    A local folder without tokenizer files raises `OSError` at once.
    """
    source, is_local = resolve_model_source(name_or_path)
    if is_local and not any((Path(source) / name).exists() for name in TOKENIZER_FILES):
        raise OSError(f"No tokenizer files in {source}.")
    return local_then_hub(lambda **extra: AutoTokenizer.from_pretrained(source, **kwargs, **extra), source, is_local)


def prepare_for_export(model: PreTrainedModel) -> PreTrainedModel:
    """eval mode, fp32, and a clear error if any weight is still on the meta device."""
    meta = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if meta:
        raise ValueError(
            f"{len(meta)} weights are on the meta device (e.g. {meta[0]}); load the model without device_map/"
            "offloading so that every weight is materialised."
        )
    return model.eval()
