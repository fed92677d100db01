"""Reading a sentence-transformers folder's pooling settings (modules.json, 1_Pooling/config.json)."""

from __future__ import annotations

import json
from pathlib import Path

_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def sentence_transformers_pooling(folder: str | Path) -> tuple[str, bool] | None:
    """(pooling, normalize) that sentence-transformers would use for `folder`, or None if it is not one.

    Only the single-mode poolings QEfficient builds into the graph are recognised.
    """
    folder = Path(folder)
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    pooling_module = next((m for m in modules if m.get("type", "").endswith("models.Pooling")), None)
    if pooling_module is None:
        return None
    try:
        config = json.loads((folder / pooling_module["path"] / "config.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    modes = [name for key, name in _MODES.items() if config.get(key)]
    if len(modes) != 1:
        return None
    normalize = any(m.get("type", "").endswith("models.Normalize") for m in modules)
    return modes[0], normalize


def pooling_settings(
    model_path: str | Path, pooling: str | None = None, normalize: bool | None = None
) -> tuple[str | None, bool]:
    """(pooling, normalize) for an encoder: the given ones, else the folder's sentence-transformers settings, else
    mean pooling without normalisation. `pooling="none"` gives token embeddings (None)."""
    if pooling is None:
        found = sentence_transformers_pooling(model_path) if Path(model_path).is_dir() else None
        pooling, st_normalize = found or ("mean", False)
        normalize = st_normalize if normalize is None else normalize
    return (None if pooling == "none" else pooling), bool(normalize)
