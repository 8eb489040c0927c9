"""Checking a collection, and repairing what can be repaired (``pagelens check [--repair]``).

A healthy collection keeps three things in step: the catalog's page rows (the source of
truth), the FAISS ids (a cache of the catalog's vectors) and the page image files. A crash,
a full disk or a hand-deleted file can leave them out of step; :func:`check` says how, one
:class:`Problem` per kind, and :func:`repair` fixes what it can and says what it could not.

Problem kinds (stable, used in ``--json`` output):

``catalog-corrupt``      SQLite's own integrity check failed (restore a backup; not repairable,
                         and ``repair`` then changes nothing at all: nothing is provably orphaned)
``model-mismatch``       the collection was built with another model than the one given
``vector-bad``           a stored vector has the wrong size (cleared, then embedded again)
``vectors-pending``      pages without a vector (embedded again: needs the model)
``faiss-unreadable``     ``vectors.faiss`` cannot be read or has the wrong dimension (rebuilt)
``faiss-missing-ids``    vectors in the catalog that the FAISS file lacks (rebuilt)
``faiss-orphan-ids``     FAISS ids with no vector in the catalog (rebuilt)
``faiss-stale-vectors``  FAISS vectors that differ from the catalog's (rebuilt)
``image-missing``        page rows whose image file is missing or empty (re-rendered from the
                         source file when it still exists unchanged, else those pages dropped)
``orphan-files``         page images no row names, and temporary files left by a crash (deleted)
``page-orphan-rows``     page rows of no document (deleted)
``document-stuck``       documents left in status 'indexing' by an interrupted job (finished
                         from the source file when it still exists unchanged)
``page-count``           a document whose stored pages differ from its page count (pages
                         beyond the count dropped, missing ones rendered from the source)
``page-failed``          pages that failed to render when indexed (placeholders with the
                         reason; rendered again, and stored if they now render)

Nothing here deletes a document: when a document cannot be completed the problem stays,
with the command that would fix it.

Both engines are checked by the same code through the :class:`Store` interface (documents,
pages, vectors pending, images, failed pages; repair renders from the source files and
embeds). What only a folder can suffer (``catalog-corrupt``, ``vector-bad`` and the
``faiss-*`` kinds) is checked on local collections; a Milvus collection's images live in
its image store (a folder or a bucket), where ``image-missing`` and ``orphan-files`` look.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from indexer.catalog import Document, Page
from indexer.embedder import Embedder
from indexer.errors import PageLensError
from indexer.store import PAGES_DIR, VECTORS, Collection
from indexer.stores.base import Store

if TYPE_CHECKING:
    from indexer.pages import RenderSettings

log = logging.getLogger(__name__)

#: Problem kinds that a rebuild of the FAISS file fixes.
FAISS_KINDS = frozenset(
    {"faiss-unreadable", "faiss-missing-ids", "faiss-orphan-ids", "faiss-stale-vectors"}
)

_SAMPLE = 10  # how many examples a problem lists


@dataclass
class Problem:
    """One kind of problem; ``extra`` holds machine-readable details (counts, ids, names)."""

    kind: str
    detail: str
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "detail": self.detail, **self.extra}


@dataclass
class CheckReport:
    collection: str
    problems: list[Problem] = field(default_factory=list)
    repaired: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "collection": self.collection,
            "problems": [p.as_dict() for p in self.problems],
            "repaired": list(self.repaired),
            "meta": self.meta,
            "stats": self.stats,
        }


# --------------------------------------------------------------------------------------
# Check


@dataclass
class _Scan:
    """What check found, kept for repair."""

    report: CheckReport
    docs: dict[int, Document]
    pages: list[Page]
    missing_images: list[Page]
    orphan_files: list[Path] | list[str]
    orphan_rows: list[int]
    bad_vectors: list[int]
    stuck: list[Document]
    count_mismatch: list[Document]
    #: Placeholders of pages that failed to render (``Collection.failed_pages``).
    failed: list[dict] = field(default_factory=list)
    #: The engine's image store holds none of the collection's page images: most likely the
    #: wrong location (``?images=``, ``PAGELENS_MILVUS_IMAGES``), so repair deletes nothing
    #: there and drops no page for a missing image.
    images_elsewhere: bool = False


def check(
    store: Store,
    *,
    model_id: str | None = None,
    dim: int | None = None,
    fingerprint: str | None = None,
) -> CheckReport:
    """Inspect a collection without changing it.

    ``model_id``/``fingerprint``: the model the user means to use (``fingerprint`` from
    :func:`indexer.identity.identify`); a different one is a ``model-mismatch`` problem.
    """
    return _scan(store, model_id=model_id, dim=dim, fingerprint=fingerprint).report


def model_problem(
    store: Store,
    model_id: str | None,
    dim: int | None = None,
    fingerprint: str | None = None,
) -> Problem | None:
    """The ``model-mismatch`` problem if ``model_id`` is not the collection's model.

    One rule for ``pagelens check`` and the web app: :meth:`Collection.same_model` (by
    weights fingerprint when both sides have one, else by name).
    """
    if model_id is None or store.same_model(model_id, dim, fingerprint=fingerprint):
        return None
    stored = store.model_identity()
    assert stored is not None  # same_model is True for a collection without a model
    return Problem(
        "model-mismatch",
        f"the collection was built with '{stored.display}' (dim {stored.dim}), not "
        f"'{model_id}'"
        + (f" (dim {dim})" if dim is not None else "")
        + (
            " (different weights)"
            if fingerprint and stored.fingerprint and fingerprint != stored.fingerprint
            else ""
        )
        + ": use that model, or index into another collection",
        {
            "collection_model": stored.name,
            "given_model": model_id,
            "collection_fingerprint": stored.fingerprint,
            "given_fingerprint": fingerprint,
        },
    )


def _scan(
    store: Store, *, model_id: str | None, dim: int | None, fingerprint: str | None = None
) -> _Scan:
    """Every check, in order: catalog file, model, vectors, FAISS cache, images, documents."""
    report = CheckReport(collection=str(store.location))
    meta = store.all_meta()
    report.meta = {
        k: meta[k]
        for k in (
            "model_id",
            "dim",
            "model_fingerprint",
            "model_revision",
            "schema_version",
            "created_at",
        )
        if k in meta
    }
    add = report.problems.append

    local = store if isinstance(store, Collection) else None
    rows = local.quick_check() if local is not None else ["ok"]
    if rows != ["ok"]:
        add(
            Problem(
                "catalog-corrupt",
                "SQLite integrity check failed: "
                + "; ".join(rows[:_SAMPLE])
                + ". Restore the collection from a backup, or index the files again "
                "into a new collection.",
            )
        )
    mismatch = model_problem(store, model_id, dim, fingerprint)
    if mismatch is not None:
        add(mismatch)

    docs = {d.id: d for d in store.documents()}
    # Page rows without their text (a big collection's text would not fit in memory).
    pages = store.pages(with_text=False)
    embedded = np.array(sorted(p.id for p in pages if p.embedded), dtype=np.int64)
    report.stats = {
        "documents": len(docs),
        "pages": len(pages),
        "embedded": int(len(embedded)),
    }
    bad_vectors = _check_catalog_vectors(store, pages, add)
    if local is not None:
        good = np.setdiff1d(embedded, np.array(bad_vectors, dtype=np.int64))
        _check_faiss(local, good, store.dim, add)
    missing_images, orphan_files = _check_images(store, docs, pages, add)
    orphan_rows, stuck, failed, count_mismatch = _check_documents(store, docs, pages, add)
    elsewhere = local is None and bool(pages) and len(missing_images) == len(pages)
    return _Scan(
        report,
        docs,
        pages,
        missing_images,
        orphan_files,
        orphan_rows,
        bad_vectors,
        stuck,
        count_mismatch,
        failed,
        elsewhere,
    )


def _check_catalog_vectors(store: Store, pages: list[Page], add) -> list[int]:
    """Vectors of the wrong length, and pages still waiting for one; returns the bad ids.
    (A Milvus vector field has the collection's width by schema: only pending is checked.)"""
    stored_dim = store.dim
    bad_vectors: list[int] = []
    if stored_dim and isinstance(store, Collection):
        bad_vectors = store.pages_with_vector_not_of_dim(stored_dim)
        if bad_vectors:
            add(
                Problem(
                    "vector-bad",
                    f"{len(bad_vectors)} stored vector(s) are not of dim {stored_dim}",
                    {"count": len(bad_vectors), "pages": bad_vectors[:_SAMPLE]},
                )
            )
    pending = [p for p in pages if not p.embedded]
    if pending:
        add(
            Problem(
                "vectors-pending",
                f"{len(pending)} page(s) have no vector yet (searchable by text only)",
                {"count": len(pending)},
            )
        )
    return bad_vectors


class ImageAudit(Protocol):
    """What an engine whose page images live outside a local collection folder offers the
    check (the Milvus engine: its image store, a folder or a bucket)."""

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


def _check_images(
    store: Store, docs: dict[int, Document], pages: list[Page], add
) -> tuple[list[Page], list[Path] | list[str]]:
    """Page images missing or empty, and files no page names; returns both lists
    (orphans: paths in a local folder, else keys of the engine's image store)."""
    named = set()
    missing_images = []
    audit: ImageAudit | None = None if isinstance(store, Collection) else _audit(store)
    sizes = audit.image_sizes() if audit is not None else {}
    for page in pages:
        named.add(page.image)
        if audit is not None:
            if not sizes.get(page.image):
                missing_images.append(page)
            continue
        assert isinstance(store, Collection)
        path = store.path / page.image
        try:
            if path.stat().st_size == 0:
                missing_images.append(page)
        except OSError:
            missing_images.append(page)
    if missing_images:
        none_there = audit is not None and len(missing_images) == len(pages)
        add(
            Problem(
                "image-missing",
                f"{len(missing_images)} page image(s) are missing or empty"
                + (f" in {audit.image_location}/pages" if audit is not None else "")
                + (
                    ": none of the collection's images is there; if they live elsewhere, "
                    "name that location (?images= in the address, or PAGELENS_MILVUS_IMAGES)"
                    if none_there
                    else ""
                ),
                {
                    "count": len(missing_images),
                    "pages": [_page_name(docs, p) for p in missing_images[:_SAMPLE]],
                },
            )
        )
    orphan_files: list[Path] | list[str]
    if audit is not None:
        orphan_files = sorted(k for k in sizes if k not in named)
        names = list(orphan_files[:_SAMPLE])
    else:
        assert isinstance(store, Collection)
        orphan_files = _orphan_files(store, named)
        names = [str(f.relative_to(store.path)) for f in orphan_files[:_SAMPLE]]
    if orphan_files:
        add(
            Problem(
                "orphan-files",
                f"{len(orphan_files)} file(s) belong to no page (left by an interrupted job)",
                {"count": len(orphan_files), "files": names},
            )
        )
    return missing_images, orphan_files


def _audit(store: Store) -> ImageAudit:
    if not all(hasattr(store, m) for m in ("image_location", "image_sizes", "delete_images")):
        raise PageLensError(f"Collection {store.location} cannot list its page images.")
    return store  # type: ignore[return-value]


def _check_documents(
    store: Store, docs: dict[int, Document], pages: list[Page], add
) -> tuple[list[int], list[Document], list[dict], list[Document]]:
    """Rows without a document, incomplete documents, pages that failed to render, and
    documents whose stored pages differ from their page count."""
    orphan_rows = [p.id for p in pages if p.document_id not in docs]
    if orphan_rows:
        add(
            Problem(
                "page-orphan-rows",
                f"{len(orphan_rows)} page row(s) belong to no document",
                {"count": len(orphan_rows)},
            )
        )
    by_doc: dict[int, list[Page]] = defaultdict(list)
    for page in pages:
        by_doc[page.document_id].append(page)
    stuck = [d for d in docs.values() if d.status != "ready"]
    if stuck:
        add(
            Problem(
                "document-stuck",
                f"{len(stuck)} document(s) are incomplete (an interrupted job, or pages dropped "
                "by a repair): "
                + ", ".join(
                    f"{d.name} ({len(by_doc[d.id])}/{d.page_count} pages)" for d in stuck[:_SAMPLE]
                )
                + "; run 'pagelens index' on them again, or 'pagelens check --repair'",
                {"documents": [d.name for d in stuck[:_SAMPLE]], "count": len(stuck)},
            )
        )
    failed = [f for f in store.failed_pages() if f["document_id"] in docs]
    failed_numbers: dict[int, set[int]] = defaultdict(set)
    for f in failed:
        failed_numbers[f["document_id"]].add(f["page"])
    if failed:
        add(
            Problem(
                "page-failed",
                f"{len(failed)} page(s) could not be rendered when indexed (placeholders, not "
                "searchable): "
                + ", ".join(f"{f['document']} p.{f['page']}" for f in failed[:_SAMPLE])
                + "; 'pagelens check --repair' tries them again",
                {"pages": failed[:_SAMPLE], "count": len(failed)},
            )
        )
    count_mismatch = []
    for d in docs.values():
        if d.status != "ready":
            continue
        numbers = {p.number for p in by_doc[d.id]} | failed_numbers[d.id]
        if numbers != set(range(1, d.page_count + 1)):
            count_mismatch.append(d)
    if count_mismatch:
        add(
            Problem(
                "page-count",
                "stored pages differ from the page count: "
                + ", ".join(
                    f"{d.name} ({len(by_doc[d.id])}/{d.page_count} pages)"
                    for d in count_mismatch[:_SAMPLE]
                ),
                {
                    "documents": [d.name for d in count_mismatch[:_SAMPLE]],
                    "count": len(count_mismatch),
                },
            )
        )
    return orphan_rows, stuck, failed, count_mismatch


def _check_faiss(store: Collection, want: np.ndarray, dim: int | None, add) -> None:
    from indexer.vectors import VectorIndex

    path = store.path / VECTORS
    if not path.exists():
        if len(want):
            add(
                Problem(
                    "faiss-missing-ids",
                    f"no {VECTORS} file, but {len(want)} vector(s) in the catalog",
                    {"count": int(len(want))},
                )
            )
        return
    try:
        index = VectorIndex.load(path)
    except Exception as exc:  # any failure to read the cache means: rebuild it
        add(Problem("faiss-unreadable", f"{VECTORS} cannot be read ({exc})"))
        return
    if dim and index.dim != dim and (len(index) or len(want)):
        add(Problem("faiss-unreadable", f"{VECTORS} has dim {index.dim}, the collection {dim}"))
        return
    have = index.ids()
    unique = np.unique(have)
    if len(unique) != len(have):
        add(
            Problem(
                "faiss-orphan-ids",
                f"{len(have) - len(unique)} duplicate id(s) in {VECTORS}",
                {"count": int(len(have) - len(unique))},
            )
        )
    missing = np.setdiff1d(want, unique)
    orphans = np.setdiff1d(unique, want)
    if len(missing):
        add(
            Problem(
                "faiss-missing-ids",
                f"{len(missing)} vector(s) of the catalog are not in {VECTORS}",
                {"count": int(len(missing)), "pages": missing[:_SAMPLE].tolist()},
            )
        )
    if len(orphans):
        add(
            Problem(
                "faiss-orphan-ids",
                f"{len(orphans)} id(s) in {VECTORS} have no vector in the catalog",
                {"count": int(len(orphans)), "ids": orphans[:_SAMPLE].tolist()},
            )
        )
    both = np.intersect1d(want, unique)
    stale = []
    for start in range(0, len(both), 1024):
        chunk = [int(i) for i in both[start : start + 1024]]
        for pid, ours in store.vectors(chunk).items():
            if ours.shape != (index.dim,) or not np.allclose(
                index.reconstruct(int(pid)), ours, atol=1e-5
            ):
                stale.append(int(pid))
    if stale:
        add(
            Problem(
                "faiss-stale-vectors",
                f"{len(stale)} vector(s) in {VECTORS} differ from the catalog's",
                {"count": len(stale), "pages": stale[:_SAMPLE]},
            )
        )


def _orphan_files(store: Collection, named: set[str]) -> list[Path]:
    """Files under pages/ that no row names, and temporary files of interrupted writes."""
    out: list[Path] = []
    root = store.path / PAGES_DIR
    if root.is_dir():
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                if path.relative_to(store.path).as_posix() not in named:
                    out.append(path)
    for path in store.path.iterdir():
        if (
            path.is_file()
            and path.name.endswith(".tmp")
            and (path.name.startswith(VECTORS + ".") or path.name.startswith("."))
        ):
            out.append(path)
    return sorted(out)


def _page_name(docs: dict[int, Document], page: Page) -> str:
    doc = docs.get(page.document_id)
    return f"{doc.name if doc else page.document_id} p.{page.number}"


