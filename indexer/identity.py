"""Which model made a collection's vectors: identity by weights, not by folder name.

A collection may only be searched with the model that embedded it. Names are a poor key:
the hub id ``Alibaba-NLP/gme-Qwen2-VL-2B-Instruct`` and a ``--local-dir`` download of it in
``~/models/gme-2b`` are the same weights, while two different checkpoints in folders both
called ``model`` are not. So a model is identified by a *fingerprint* of what determines its
vectors (the config, canonicalised, and the SHA-256 of every weight file), and named for
people by its hub id (plus revision where known) or its folder.

Hashing a 4.5 GB checkpoint on every start would cost seconds, so the weight files' SHA-256
come, cheapest first, from:

1. the Hugging Face cache, whose LFS blobs are *named* by their SHA-256;
2. a ``huggingface-cli download --local-dir`` folder's ``.cache/huggingface/download/*.metadata``
   (the file's etag, which is its SHA-256, valid while the file is not modified after it);
3. our own cache of earlier results, keyed by (real path, size, mtime), under
   :func:`indexer.config.cache_dir`; only a file seen for the first time is read in full
   (about 6 s for 4.5 GB on a 2-core Xeon).

Every route gives the same SHA-256 for the same bytes, hence the same fingerprint for the
same weights from any path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Bumped if the fingerprint's definition ever changes (old fingerprints then never match).
FINGERPRINT_VERSION = "w1"
#: Config keys that say nothing about the vectors (where it was loaded from, which library
#: version saved it, the storage dtype, whose bytes the weight hashes already cover).
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "_commit_hash",
    "torch_dtype",
    "dtype",
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelIdentity:
    """A model as a collection records it: ``name`` for people, ``fingerprint`` for matching.

    ``fingerprint`` is None for models that cannot say (e.g. an embedder written before
    fingerprints); such models are matched by name.
    """

    name: str
    dim: int | None = None
    fingerprint: str | None = None
    revision: str | None = None

    @classmethod
    def of(cls, embedder: Any) -> ModelIdentity:
        """The identity of any :class:`~indexer.embedder.Embedder` (``fingerprint`` and
        ``revision`` are optional attributes)."""
        return cls(
            name=str(embedder.model_id),
            dim=getattr(embedder, "dim", None),
            fingerprint=getattr(embedder, "fingerprint", None) or None,
            revision=getattr(embedder, "revision", None) or None,
        )

    @property
    def display(self) -> str:
        """``name@revision`` (revision shortened) or just the name."""
        return f"{self.name}@{self.revision[:12]}" if self.revision else self.name


def identify(source: str | os.PathLike[str], *, revision: str | None = None) -> ModelIdentity:
    """The identity of a model given as a folder or a hub id, without loading it.

    Reads only local files (the folder, or the Hugging Face cache for a hub id; never the
    network). ``fingerprint`` is None when the weights are not on this machine. ``dim`` is
    left unknown: it needs the config's interpretation, which the loader owns.
    """
    text = os.fspath(source)
    folder = Path(text).expanduser()
    if folder.is_dir():
        name = str(folder.resolve())
        revision = revision or local_dir_revision(folder)
    else:
        name = text
        folder_or_none = hub_snapshot(text, revision)
        if folder_or_none is None:
            return ModelIdentity(name=name, revision=revision)
        folder = folder_or_none
        revision = revision or folder.name
    try:
        fingerprint: str | None = weights_fingerprint(folder)
    except (OSError, ValueError):
        fingerprint = None
    return ModelIdentity(name=name, fingerprint=fingerprint, revision=revision)


def declared_dim(source: str | os.PathLike[str], *, revision: str | None = None) -> int | None:
    """The vector width a local GME checkpoint declares (its text model's hidden size: GME
    pools the last token's hidden state), read from ``config.json`` without loading it.

    None when the checkpoint is not on this machine or says no width (a remote endpoint,
    another architecture). Used where a store must know the width before any vector exists
    (a Milvus collection's text-only first index).
    """
    text = os.fspath(source)
    folder: Path | None = Path(text).expanduser()
    if folder is None or not folder.is_dir():
        folder = hub_snapshot(text, revision)
    if folder is None:
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        inner = config.get("text_config") or {}
        width = int(inner.get("hidden_size") or config.get("hidden_size") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return width or None


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The local snapshot folder of a hub model in the Hugging Face cache, if there is one."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply "not cached"
        return None
    return Path(found).parent if isinstance(found, str) else None


def canonical_config(config: dict[str, Any]) -> bytes:
    """The config's bytes as the fingerprint sees them: volatile keys dropped, keys sorted."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in sorted(value.items()) if k not in _VOLATILE_CONFIG_KEYS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(config), sort_keys=True, separators=(",", ":")).encode()


def weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The files holding a checkpoint's weights (safetensors, else PyTorch .bin), by name."""
    root = Path(folder)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        files = sorted(root.glob("pytorch_model*.bin"))
    return files


def weights_fingerprint(folder: str | os.PathLike[str]) -> str:
    """The fingerprint of the checkpoint in ``folder``: ``w1:`` + 32 hex digits.

    Equal for the same config and weight bytes wherever they lie; different as soon as one
    weight byte or a meaningful config value differs. Raises FileNotFoundError when the
    folder has no config.json or no weight files.
    """
    root = Path(folder)
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    files = weight_files(root)
    if not files:
        raise FileNotFoundError(f"no weight files in {root}")
    digest = hashlib.sha256()
    digest.update(f"pagelens-weights-{FINGERPRINT_VERSION}\n".encode())
    digest.update(canonical_config(config))
    for path in files:
        digest.update(b"\n" + file_sha256_cached(path, local_dir=root).encode())
    return f"{FINGERPRINT_VERSION}:{digest.hexdigest()[:32]}"


def local_dir_revision(folder: str | os.PathLike[str]) -> str | None:
    """The hub commit a ``--local-dir`` download came from, if it recorded one."""
    meta = Path(folder) / ".cache" / "huggingface" / "download" / "config.json.metadata"
    try:
        commit = meta.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError):
        return None
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


def file_sha256_cached(path: Path, *, local_dir: Path | None = None) -> str:
    """SHA-256 of ``path``, from the hub's own records or our cache when they are valid."""
    real = path.resolve()
    # 1. Hugging Face cache: .../blobs/<sha256> (LFS files are named by their SHA-256).
    if real.parent.name == "blobs" and _SHA256.match(real.name):
        return real.name
    stat = real.stat()
    # 2. huggingface-cli download --local-dir: the etag recorded when the file was written.
    if local_dir is not None:
        etag = _local_dir_etag(local_dir, path.name, stat.st_mtime)
        if etag:
            return etag
    # 3. Our own cache, keyed by where the file is and what it looks like.
    key = f"{real}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = _cache_file()
    with _CACHE_LOCK:
        known = _read_cache(cache)
        if key in known:
            return known[key]
    value = _sha256_file(real)
    with _CACHE_LOCK:
        known = _read_cache(cache)
        known[key] = value
        _write_cache(cache, known)
    return value


def _local_dir_etag(local_dir: Path, filename: str, mtime: float) -> str | None:
    meta = local_dir / ".cache" / "huggingface" / "download" / f"{filename}.metadata"
    try:
        lines = meta.read_text(encoding="utf-8").splitlines()
        etag, timestamp = lines[1].strip().strip('"'), float(lines[2])
    except (OSError, IndexError, ValueError):
        return None
    # huggingface_hub's own validity rule: the file was not modified after the download.
    if _SHA256.match(etag) and mtime - 1 <= timestamp:
        return etag
    return None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_file() -> Path:
    from indexer.config import cache_dir

    return cache_dir() / "weights-sha256.json"


def _read_cache(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, str]) -> None:
    """Best effort: a cache that cannot be written only costs a re-hash next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


__all__ = [
    "FINGERPRINT_VERSION",
    "ModelIdentity",
    "canonical_config",
    "hub_snapshot",
    "identify",
    "local_dir_revision",
    "weight_files",
    "weights_fingerprint",
]
