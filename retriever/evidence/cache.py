"""Scores of visual evidence kept per (page, query, model, settings): a second request is free.

Why only the scores: they are a dozen floats, while the heat map is a page-sized array that
:func:`retriever.evidence.visual.heatmap` rebuilds from them in milliseconds. An in-memory
LRU serves one process (the API server, the app); the optional folder (the CLI passes
``<cache dir>/evidence``) serves the next process. A file is written whole under a temporary
name and renamed, so a killed process leaves either the entry or nothing; an unreadable
entry is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def image_digest(image: Image.Image) -> str:
    """SHA-256 of the decoded page (mode, size, pixels): the same page gives the same key
    however its file was compressed."""
    h = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def vector_digest(vector: np.ndarray) -> str:
    """SHA-256 of a query vector's float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float32).tobytes()).hexdigest()


def model_key(embedder: Any) -> str:
    """The model's identity: its weights fingerprint where known, else its name and size."""
    fingerprint = getattr(embedder, "fingerprint", None)
    return str(fingerprint) if fingerprint else f"{embedder.model_id}:{embedder.dim}"


class EvidenceCache:
    """Region scores by key; thread-safe; ``capacity`` entries in memory, optionally all of
    them under ``folder``. ``hits`` and ``misses`` count lookups (the bench and tests read
    them)."""

    def __init__(self, capacity: int = 256, *, folder: str | Path | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = int(capacity)
        self.folder = Path(folder) if folder is not None else None
        self.hits = 0
        self.misses = 0
        self._memory: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(page: str, query: str, model: str, settings: str) -> str:
        """One key from the page digest, query digest, model identity and grid settings."""
        return hashlib.sha256("\n".join((page, query, model, settings)).encode()).hexdigest()

    def get(self, key: str) -> list[float] | None:
        with self._lock:
            scores = self._memory.get(key)
            if scores is not None:
                self._memory.move_to_end(key)
        if scores is None:
            scores = self._read(key)
            if scores is not None:
                self._remember(key, scores)
        with self._lock:
            if scores is None:
                self.misses += 1
            else:
                self.hits += 1
        return scores

    def put(self, key: str, scores: Sequence[float]) -> None:
        values = [float(s) for s in scores]
        self._remember(key, values)
        self._write(key, values)

    def _remember(self, key: str, scores: list[float]) -> None:
        with self._lock:
            self._memory[key] = scores
            self._memory.move_to_end(key)
            while len(self._memory) > self.capacity:
                self._memory.popitem(last=False)

    def _path(self, key: str) -> Path | None:
        return self.folder / key[:2] / f"{key}.json" if self.folder is not None else None

    def _read(self, key: str) -> list[float] | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            scores = json.loads(path.read_text())["scores"]
            return [float(s) for s in scores]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged entry is recomputed and rewritten

    def _write(self, key: str, scores: list[float]) -> None:
        path = self._path(key)
        if path is None:
            return
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "w") as out:
                json.dump({"scores": scores}, out)
            os.replace(tmp, path)
        except OSError:  # a full or read-only disk: the memory copy still serves
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


__all__ = ["EvidenceCache", "image_digest", "model_key", "vector_digest"]
