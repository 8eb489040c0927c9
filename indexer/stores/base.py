"""The store interface: what the rest of PageLens may ask of a collection.

Indexer, Retriever, the CLI, the app, the API server, export and evaluation talk to a
collection only through :class:`Store`. Two engines implement it:

* :class:`indexer.stores.local.collection.LocalCollection`: one folder (SQLite catalog + FAISS +
  page images), the default, no extra dependency;
* :class:`indexer.stores.milvus.collection.MilvusCollection`: documents and pages in Milvus, page
  images in a shared folder or an S3-compatible bucket, for many processes on many machines.

A new engine (Qdrant, pgvector, ...) is one module implementing :class:`Store` plus a branch
in :func:`indexer.stores.open_collection`; the behavioural tests are parametrized over the
engines (``tests/conftest.py``: ``ENGINES``, fixtures ``store_spec`` and ``open_store``), and
``tests/test_engine_parity.py`` compares their answers, so it cannot quietly support less.

Beside :class:`Store`, two optional capabilities that an engine may implement and that
callers test with ``isinstance`` (never by engine class): :class:`StorageChecks` (checks and
repairs of what only the engine's own storage can suffer) and :class:`ImageAudit` (an image
store outside a local folder). The value types live in :mod:`indexer.stores.types` (and are
importable from here too). This module also holds the small pieces both engines share, so
that they rank and name models the same way (reciprocal rank fusion, model identity).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from indexer.errors import ModelMismatchError
from indexer.identity import ModelIdentity
from indexer.stores.binding import ModelBinding, _model_key, mismatch_message
from indexer.stores.types import (
    CollectionStats,
    Document,
    EncodedImage,
    Page,
    PageFilter,
    PageInput,
    StorageFindings,
    encode_png,
    page_input_parts,
)

if TYPE_CHECKING:
    from indexer.pages.words import Word

__all__ = [
    "RRF_K",
    "CollectionStats",
    "Document",
    "EncodedImage",
    "ImageAudit",
    "ModelBinding",
    "Page",
    "PageFilter",
    "PageInput",
    "StorageChecks",
    "Store",
    "_model_key",
    "atomic_write_bytes",
    "encode_png",
    "iter_chunks",
    "page_input_parts",
    "mismatch_message",
    "query_words",
    "reciprocal_rank_fusion",
    "utcnow",
    "vectors_to_store",
]

#: Reciprocal rank fusion constant (Cormack et al. 2009): ``1 / (RRF_K + rank)``. Both
#: engines fuse with it (Milvus through its ``RRFRanker(RRF_K)``), so they rank alike.
RRF_K = 60


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
        status: str = "indexing",
    ) -> Document:
        """A new document row; ``status="staged"`` keeps it out of searches until
        :meth:`replace_document` publishes it (``pagelens sync``'s atomic replace)."""
        ...

    def mark_ready(self, document_id: int) -> None: ...

    def replace_document(self, old_id: int, new_id: int) -> None:
        """In one write, make ``new_id`` ready (visible) and ``old_id`` ``replaced`` (hidden),
        so a search sees one version of a file, never both or neither; the caller then
        removes the old one (a crash before that leaves it hidden, removed by the next sync)."""
        ...

    def set_document_source(
        self, document_id: int, *, path: str, name: str, size: int, mtime_ns: int
    ) -> None:
        """Record where a document's file is now (a move or rename keeps pages and vectors)
        and its size and modification time, so the next sync need not hash it."""
        ...

    def source_stamps(self) -> dict[str, int]:
        """The modification times recorded by :meth:`set_document_source`, by SHA-256."""
        ...

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

    def page_words(self, page_id: int) -> list[Word] | None:
        """The page's words with their boxes on its stored image (0..1); None when none
        were recorded (a collection made before word boxes, until ``check --repair``)."""
        ...

    def page_words_many(self, page_ids: Iterable[int]) -> dict[int, list[Word]]:
        """:meth:`page_words` of many pages; pages with none recorded are left out."""
        ...

    def set_page_words(self, page_id: int, words: Sequence[Word]) -> None:
        """Record a stored page's words (``check --repair``); replaces any recorded."""
        ...

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


@runtime_checkable
class StorageChecks(Protocol):
    """Capability: an engine whose own storage can suffer more than :class:`Store` shows.

    The local engine has it: a damaged SQLite file, stored vectors of the wrong width, a
    FAISS cache out of step with the catalog, image files missing or named by no row.
    :mod:`indexer.maintenance` runs these beside its engine-neutral checks, placing each
    finding where the report has always listed it, and never names an engine.
    """

    def extra_checks(self, pages: Sequence[Page]) -> StorageFindings:
        """Check the engine's storage against these page rows (all of them, without text);
        read only."""
        ...

    def delete_orphan_files(self, files: Sequence[Path]) -> int:
        """Delete the files :meth:`extra_checks` found no row names; returns how many went."""
        ...

    def extra_repairs(self, findings: StorageFindings) -> list[dict]:
        """After the engine-neutral repairs: fix what ``findings`` says about the engine's
        own storage (e.g. rebuild a vector cache); returns what was done, as report notes
        (``{"kind", "detail", ...}``)."""
        ...


@runtime_checkable
class ImageAudit(Protocol):
    """Capability: an engine whose page images live outside a local collection folder (the
    Milvus engine: its image store, a folder or a bucket), so that a check can list them."""

    @property
    def image_location(self) -> str:
        """Where the page images live (a folder, ``s3://bucket/prefix``), for messages."""
        ...

    def image_sizes(self) -> dict[str, int]:
        """Every page image in the image store as ``{key: size}`` (one listing)."""
        ...

    def delete_images(self, keys: list[str]) -> int:
        """Delete these images no row names, except any too young to be sure another
        process is not about to write its row; returns how many were deleted."""
        ...


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
