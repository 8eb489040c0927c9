"""The store interface: what the rest of PageLens may ask of a collection.

Indexer, Retriever, the CLI, the app, the API server, export and evaluation talk to a
collection only through :class:`Store`. Two engines implement it:

* :class:`indexer.stores.local.LocalCollection`: one folder (SQLite catalog + FAISS +
  page images), the default, no extra dependency;
* :class:`indexer.stores.milvus.collection.MilvusCollection`: documents and pages in Milvus, page
  images in a shared folder or an S3-compatible bucket, for many processes on many machines.

A new engine (Qdrant, pgvector, ...) is one module implementing :class:`Store` plus a branch
in :func:`indexer.stores.open_collection`; the behavioural tests are parametrized over the
engines (``tests/conftest.py``: ``ENGINES``, fixtures ``store_spec`` and ``open_store``), and
``tests/test_engine_parity.py`` compares their answers, so it cannot quietly support less.

This module also holds the small pieces both engines share, so that they rank, name models
and encode images the same way (reciprocal rank fusion, model identity, PNG encoding).
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from indexer.catalog import Document, Page
from indexer.errors import ModelMismatchError
from indexer.identity import ModelIdentity

#: Reciprocal rank fusion constant (Cormack et al. 2009): ``1 / (RRF_K + rank)``. Both
#: engines fuse with it (Milvus through its ``RRFRanker(RRF_K)``), so they rank alike.
RRF_K = 60


@dataclass(frozen=True)
class CollectionStats:
    documents: int
    pages: int
    embedded: int

    @property
    def pending(self) -> int:
        return self.pages - self.embedded


@dataclass(frozen=True)
class PageFilter:
    """Which pages a search may return: document ids and/or a 1-based inclusive page range.

    Engines translate it into their own filter (SQLite ``WHERE`` over page ids, a Milvus
    boolean expression) and apply it *inside* the search, never to a top-k afterwards.
    """

    documents: tuple[int, ...] | None = None
    first: int | None = None
    last: int | None = None

    @property
    def empty(self) -> bool:
        return self.documents is None and self.first is None and self.last is None


PageInput = tuple[int, str, "Image.Image | EncodedImage"]
"""A page to store: (1-based number, text layer, image); an :class:`EncodedImage` is stored
as it is (Ray render tasks and migration hand over PNG bytes, never re-encoded)."""


@runtime_checkable
class Store(Protocol):
    """A collection of documents, their pages (text layer, image, vector) and its identity.

    Page and document ids are integers chosen by the engine; callers never invent them.
    Every write happens inside :meth:`writing`. Reads see everything committed.
    """

    read_only: bool

    # -- identity ----------------------------------------------------------------------
    @property
    def location(self) -> str:
        """Where the collection lives, for messages (a folder, or ``milvus://host:port/name``)."""
        ...

    @property
    def model_id(self) -> str | None: ...

    @property
    def dim(self) -> int | None: ...

    def meta(self, key: str) -> str | None: ...

    def all_meta(self) -> dict[str, str]: ...

    @property
    def model_fingerprint(self) -> str | None: ...

    def model_identity(self) -> ModelIdentity | None: ...

    def bind_model(
        self,
        model_id: str,
        dim: int | None,
        *,
        fingerprint: str | None = None,
        revision: str | None = None,
    ) -> None:
        """Record the embedding model, or raise :class:`ModelMismatchError` if another owns it."""
        ...

    def bind_embedder(self, embedder: object) -> None: ...

    def same_model(
        self, model_id: str, dim: int | None, *, fingerprint: str | None = None
    ) -> bool: ...

    def render_settings(self) -> dict | None: ...

    def set_render_settings(self, settings: dict) -> None: ...

    # -- writing -----------------------------------------------------------------------
    def writing(
        self, *, timeout: float = -1, on_wait: Callable[[str], None] | None = None
    ) -> AbstractContextManager[Store]:
        """Hold the right to write (local: a file lock; Milvus: nothing to hold, since
        deterministic ids make concurrent writers harmless)."""
        ...

    # -- documents ---------------------------------------------------------------------
    def documents(self) -> list[Document]: ...

    def document(self, ref: str | int) -> Document:
        """By id, name or path; unknown or ambiguous -> :class:`DocumentNotFoundError`."""
        ...

    def find_by_sha256(self, sha256: str) -> Document | None: ...

    def documents_by_id(self, ids: Iterable[int]) -> dict[int, Document]: ...

    def add_document(
        self,
        *,
        name: str,
        path: str,
        sha256: str,
        kind: str,
        page_count: int,
        title: str | None = None,
        size: int = 0,
    ) -> Document: ...

    def mark_ready(self, document_id: int) -> None: ...

    def mark_incomplete(self, document_id: int) -> None: ...

    def add_failed_page(self, document_id: int, number: int, reason: str) -> None:
        """A placeholder for a page that failed to render (no image, no vector)."""
        ...

    def clear_failed_page(self, document_id: int, number: int) -> None: ...

    def failed_pages(self, document_id: int | None = None) -> list[dict]:
        """``[{document_id, document, page, reason, failed_at}]`` by document and page."""
        ...

    def remove_document(self, ref: str | int) -> Document: ...

    # -- pages -------------------------------------------------------------------------
    def add_pages(self, document_id: int, pages: Sequence[PageInput]) -> list[int]:
        """Store pages (image first, then the row), returning their ids in order."""
        ...

    def stored_page_numbers(self, document_id: int) -> set[int]: ...

    def pages(self, document_id: int | None = None, *, with_text: bool = True) -> list[Page]: ...

    def page(self, page_id: int) -> Page: ...

    def pages_by_id(self, page_ids: Iterable[int]) -> dict[int, Page]: ...

    def page_ids(
        self,
        *,
        documents: Iterable[int] | None = None,
        first: int | None = None,
        last: int | None = None,
        embedded: bool | None = None,
    ) -> list[int]: ...

    def image_path(self, page: Page) -> Path:
        """A local file holding the page image (a cached copy for remote image stores)."""
        ...

    def image_bytes(self, page: Page) -> bytes: ...

    def load_image(self, page: Page) -> Image.Image: ...

    def pending_pages(self, limit: int | None = None) -> list[Page]: ...

    def vector_for_image_sha(self, image_sha256: str) -> np.ndarray | None: ...

    def stats(self) -> CollectionStats: ...

    # -- vectors and search ------------------------------------------------------------
    def set_vectors(self, page_ids: Sequence[int], vectors: np.ndarray) -> None: ...

    def clear_vectors(self, page_ids: Sequence[int]) -> None: ...

    def remove_pages(self, page_ids: Sequence[int]) -> None: ...

    def vector(self, page_id: int) -> np.ndarray | None: ...

    def vectors(self, page_ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored vectors of embedded pages (migration, checks); missing ids are left out."""
        ...

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        page_ids: Iterable[int] | None = None,
        where: PageFilter | None = None,
    ) -> list[tuple[int, float]]:
        """Nearest embedded pages to a unit vector: ``[(page_id, cosine), ...]`` best first."""
        ...

    def search_text(
        self,
        query: str,
        k: int,
        *,
        page_ids: Iterable[int] | None = None,
        where: PageFilter | None = None,
    ) -> list[tuple[int, float]]:
        """BM25 over the text layer: ``[(page_id, score), ...]`` best first."""
        ...

    def search_hybrid(
        self,
        query: np.ndarray | None,
        text: str,
        k: int,
        *,
        depth: int,
        where: PageFilter | None = None,
    ) -> tuple[list[tuple[int, float]], dict[int, dict[str, float]]]:
        """RRF (``RRF_K``) of the visual and text rankings, each taken to ``depth``.

        Returns the fused top ``k`` and, where the engine knows them, each page's
        per-ranking scores (``{"visual": .., "text": ..}``).
        """
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc: object) -> None: ...


# -- shared helpers ---------------------------------------------------------------------


def utcnow() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def vectors_to_store(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """``vectors`` as contiguous float32 rows, or :class:`ModelMismatchError` if their width is
    not the collection's ``dim`` (every engine checks this before it writes, so that one
    collection never mixes vector spaces)."""
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    if dim and vecs.shape[1] != dim:
        raise ModelMismatchError(f"Vectors of dim {vecs.shape[1]} do not fit collection dim {dim}.")
    return vecs


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class EncodedImage:
    """A page image already encoded as PNG (by :func:`encode_png`, e.g. in a Ray render task),
    so that the single writer stores the bytes as they are instead of decoding and re-encoding
    them; the bytes are exactly what :meth:`Collection.add_pages` would have written."""

    data: bytes
    width: int
    height: int

    @classmethod
    def of(cls, image: Image.Image) -> EncodedImage:
        return cls(encode_png(image), image.width, image.height)


def encode_png(image: Image.Image) -> bytes:
    """The PNG bytes a collection stores for a page image (lossless, fast compression)."""
    buf = io.BytesIO()
    # convert() copies even an image already in RGB (4 MiB a page at GME's budget).
    (image if image.mode == "RGB" else image.convert("RGB")).save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()


def mismatch_message(
    location: str | Path,
    stored: ModelIdentity,
    model_id: str,
    dim: int | None,
    fingerprint: str | None,
) -> str:
    """One sentence naming both models (by weights when both have a fingerprint)."""
    given = f"'{model_id}' (dim {dim}" + (f", weights {fingerprint})" if fingerprint else ")")
    had = f"'{stored.display}' (dim {stored.dim}" + (
        f", weights {stored.fingerprint})" if stored.fingerprint else ")"
    )
    return (
        f"Collection {location} was built with model {had}, but {given} was given. Use the same "
        "model (--model / PAGELENS_MODEL), or index into another collection (--collection)."
    )


def _model_key(model_id: str) -> str:
    """Name rule, only for models without a fingerprint: compare the last path component."""
    text = str(model_id).rstrip("/\\")
    return os.path.basename(text).lower()


class ModelBinding:
    """The model-identity rule, shared by every engine (it needs ``meta``, ``_set_meta`` and
    ``location``): vectors of two models live in different spaces, so the first model to
    embed a page owns the collection (see :mod:`indexer.identity`)."""

    read_only: bool

    def meta(self, key: str) -> str | None:  # pragma: no cover - provided by the engine
        raise NotImplementedError

    def _set_meta(self, values: dict[str, str]) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def location(self) -> str:  # pragma: no cover - provided by the engine
        raise NotImplementedError

    @property
    def model_id(self) -> str | None:
        return self.meta("model_id")

    @property
    def dim(self) -> int | None:
        value = self.meta("dim")
        return int(value) if value else None

    @property
    def model_fingerprint(self) -> str | None:
        """The recorded weights fingerprint (see :mod:`indexer.identity`); None in
        collections made before fingerprints, or by a model that has none."""
        return self.meta("model_fingerprint") or None

    def model_identity(self) -> ModelIdentity | None:
        """The model this collection records, or None before anything was embedded."""
        if self.model_id is None:
            return None
        return ModelIdentity(
            name=self.model_id,
            dim=self.dim,
            fingerprint=self.model_fingerprint,
            revision=self.meta("model_revision") or None,
        )

    def bind_model(
        self,
        model_id: str,
        dim: int | None,
        *,
        fingerprint: str | None = None,
        revision: str | None = None,
    ) -> None:
        """Record the model that embeds this collection, or fail if another one did.

        Vectors of two models live in different spaces: mixing them would return nonsense,
        so the first model to embed a page owns the collection. A collection recorded before
        fingerprints existed adopts the fingerprint of the first matching model (by name).
        """
        stored = self.model_identity()
        if stored is None:
            if not self.read_only:
                values = {"model_id": model_id, "dim": str(dim or "")}
                if fingerprint:
                    values["model_fingerprint"] = fingerprint
                if revision:
                    values["model_revision"] = revision
                self._set_meta(values)
            return
        if not self.same_model(model_id, dim, fingerprint=fingerprint):
            raise ModelMismatchError(
                mismatch_message(self.location, stored, model_id, dim, fingerprint)
            )
        if fingerprint and not stored.fingerprint and not self.read_only:
            self._set_meta({"model_fingerprint": fingerprint})

    def bind_embedder(self, embedder: object) -> None:
        """:meth:`bind_model` with an embedder's identity (name, dim, fingerprint)."""
        ident = ModelIdentity.of(embedder)
        self.bind_model(
            ident.name, ident.dim, fingerprint=ident.fingerprint, revision=ident.revision
        )

    def same_model(self, model_id: str, dim: int | None, *, fingerprint: str | None = None) -> bool:
        """Whether the given model is the one this collection records (True when none is).

        When both sides have a weights fingerprint, it decides alone: the same weights match
        from any folder or hub id, different weights never do. Otherwise (an old collection,
        or a model that cannot fingerprint itself) models compare by name.
        """
        stored = self.model_identity()
        if stored is None:
            return True
        if dim is not None and stored.dim is not None and stored.dim != dim:
            return False
        if fingerprint and stored.fingerprint:
            return fingerprint == stored.fingerprint
        return _model_key(stored.name) == _model_key(model_id)

    def render_settings(self) -> dict | None:
        value = self.meta("render_settings")
        return json.loads(value) if value else None

    def set_render_settings(self, settings: dict) -> None:
        self._set_meta({"render_settings": json.dumps(settings, sort_keys=True)})


def reciprocal_rank_fusion(
    rankings: dict[str, list[tuple[int, float]]], k: int, *, rrf_k: int = RRF_K
) -> tuple[list[tuple[int, float]], dict[int, dict[str, float]]]:
    """Fuse rankings by RRF; returns the top ``k`` and each page's per-ranking scores."""
    fused: dict[int, float] = {}
    parts: dict[int, dict[str, float]] = {}
    for name, ranking in rankings.items():
        for rank, (pid, score) in enumerate(ranking, start=1):
            fused[pid] = fused.get(pid, 0.0) + 1.0 / (rrf_k + rank)
            parts.setdefault(pid, {})[name] = score
    order = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    return order, parts


def query_words(text: str, limit: int = 64) -> list[str]:
    """The distinct lower-cased words of a query, in order (both engines' text search)."""
    seen: list[str] = []
    for w in re.findall(r"\w+", text.lower()):
        if w not in seen:
            seen.append(w)
    return seen[:limit]


def iter_chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
