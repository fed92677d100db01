"""GGUF checkpoints: converted once into a plain HF folder under `$QEFF_HOME`, so later loads take seconds.

transformers reads GGUF (with the `gguf` and `accelerate` packages) by dequantising every tensor, which
takes about 20 s for a 135M model. The converted folder is an ordinary cached artefact: keyed by the GGUF
file's identity, built atomically, verified before reuse.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from QEfficient.utils.cache import build_artifact, hash_params, qeff_home

logger = logging.getLogger(__name__)

# Config entries that describe the GGUF source rather than the model.
_SOURCE_KEYS = ("quantization_config", "_name_or_path", "transformers_version")


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' progress bars while a GGUF converts: its own (behind `disable_progress_bar`) and the bar of
    its GGUF reader, a plain tqdm that no switch of transformers reaches. Our callers show their own progress."""
    import transformers.modeling_gguf_pytorch_utils as gguf_reader

    from QEfficient.transformers.loading import quiet_progress_bars

    reader_bar = gguf_reader.tqdm
    gguf_reader.tqdm = functools.partial(reader_bar, disable=True)
    try:
        with quiet_progress_bars():
            yield
    finally:
        gguf_reader.tqdm = reader_bar


def gguf_folder(folder: str | Path, gguf_file: str, auto_class: Any) -> Path:
    """A HF folder (fp32 safetensors, config, tokenizer) converted from `folder/gguf_file`; cached."""
    from transformers import AutoTokenizer

    path = (Path(folder) / gguf_file).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist.")
    stat = path.stat()
    key = hash_params(
        {"gguf": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "auto_class": auto_class.__name__}
    )
    directory = qeff_home() / "gguf" / f"{path.stem}-{key}"

    def build(tmp: Path) -> dict[str, Any]:
        try:
            with _quiet_progress_bars():
                model = auto_class.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        except ImportError as exc:
            raise ImportError(f"Reading GGUF needs extra packages: pip install 'qefficient[gguf]' ({exc}).") from exc
        # A GGUF-loaded model is marked quantised and refuses to save: rebuild it plainly from its config.
        config = model.config.to_dict()
        for key in _SOURCE_KEYS:
            config.pop(key, None)
        plain = type(model)(type(model.config).from_dict(config))
        plain.load_state_dict(model.state_dict())
        plain.tie_weights()
        plain.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(tmp)
        return {"kind": "gguf-conversion", "source": str(path), "source_size": stat.st_size}

    logger.info("Using the HF folder converted from %s (converted once, then cached).", path.name)
    directory, _ = build_artifact(directory, build, description="GGUF conversion")
    return directory
