"""Content-addressed artefact directories: hashing, `$QEFF_HOME`, atomic and locked builds.

Every artefact (an exported graph, a compiled program) lives in a directory whose name carries a hash of
everything that determines its content. A directory is built in a temporary sibling, sealed with a
manifest that lists each file's size and SHA-256, and renamed into place while a file lock is held. A
directory whose manifest is missing or does not match its files is treated as corrupt: it is removed and
rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

logger = logging.getLogger(__name__)

MANIFEST_NAME = "qeff_manifest.json"
HASH_LENGTH = 16


def qeff_home() -> Path:
    """Root of QEfficient's cache: `$QEFF_HOME`, else `$XDG_CACHE_HOME/qeff_models`, else `~/.cache/qeff_models`."""
    if os.environ.get("QEFF_HOME"):
        return Path(os.environ["QEFF_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "qeff_models"


def _jsonable(value: Any) -> Any:
    """Turn hash parameters into plain JSON values (sets sorted, paths and classes as strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def hash_params(params: dict[str, Any]) -> str:
    """A short, stable hash of a dict of parameters (sorted-key JSON, SHA-256, 16 hex digits)."""
    text = json.dumps(_jsonable(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class CorruptArtifactError(RuntimeError):
    """An artefact directory whose files do not match its manifest."""


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and verify a sealed artefact directory; raise `CorruptArtifactError` if anything is off."""
    path = Path(directory) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptArtifactError(f"{directory}: missing or unreadable {MANIFEST_NAME} ({exc})") from exc
    for name, expected in files.items():
        file = Path(directory) / name
        if not file.is_file():
            raise CorruptArtifactError(f"{directory}: file {name} is missing")
        if file.stat().st_size != expected["size"]:
            raise CorruptArtifactError(
                f"{directory}: file {name} has {file.stat().st_size} bytes, expected {expected['size']}"
            )
        if file_sha256(file) != expected["sha256"]:
            raise CorruptArtifactError(f"{directory}: file {name} does not match its recorded SHA-256")
    return manifest


def _seal(directory: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    files = {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
    manifest = {**metadata, "files": files}
    manifest = _jsonable(manifest)
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def build_artifact(
    directory: Path,
    build: Callable[[Path], dict[str, Any]],
    *,
    description: str = "artefact",
) -> tuple[Path, dict[str, Any]]:
    """Return `directory` (and its manifest), building it first if it is absent or corrupt.

    `build(tmp_dir)` writes every file of the artefact into `tmp_dir` and returns metadata to record in
    the manifest. The build runs under a lock on `directory`, in a temporary sibling that is renamed into
    place only once complete, so an interrupted or concurrent run never leaves a directory a later run
    would trust.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        if directory.exists():
            try:
                manifest = read_manifest(directory)
                logger.info("Reusing cached %s at %s", description, directory)
                return directory, manifest
            except CorruptArtifactError as exc:
                logger.warning("Cached %s is corrupt and will be rebuilt: %s", description, exc)
                shutil.rmtree(directory)
        tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".tmp-", dir=directory.parent))
        try:
            manifest = _seal(tmp, build(tmp))
            os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory, manifest
