"""Checking a collection, and repairing what can be repaired (``pagelens check [--repair]``).

A healthy collection keeps three things in step: the catalog's page rows (the source of
truth), the FAISS ids (a cache of the catalog's vectors) and the page image files. A crash,
a full disk or a hand-deleted file can leave them out of step; :func:`check` says how, one
:class:`Problem` per kind, and :func:`indexer.maintenance.repair.repair` fixes what it can
and says what it could not.

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

``repair`` also records the word boxes of pages stored without them (collections made
before word boxes; :mod:`indexer.maintenance.words`), from the source file when it still
exists unchanged, noted as ``word-boxes``; a check does not count their absence as a problem.

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
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import CollectionError, PageLensError
from indexer.stores import catalog_file, describe_unopenable, open_collection
from indexer.stores.base import ImageAudit, StorageChecks, Store
from indexer.stores.types import Document, Page, Problem, StorageFindings

__all__ = [
    "CheckReport",
    "Problem",
    "Scan",
    "check",
    "image_audit",
    "model_problem",
    "open_for_check",
    "scan_collection",
]

log = logging.getLogger(__name__)

_SAMPLE = 10  # how many examples a problem lists


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
class Scan:
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
    #: What the engine's own checks found (:class:`StorageChecks`), for its repairs.
    findings: StorageFindings | None = None
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
    return scan_collection(store, model_id=model_id, dim=dim, fingerprint=fingerprint).report


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


def scan_collection(
    store: Store, *, model_id: str | None, dim: int | None, fingerprint: str | None = None
) -> Scan:
    """Every check, in order: catalog file, model, vectors, vector cache, images, documents
    (an engine with :class:`StorageChecks` adds its own findings in their places)."""
    report = CheckReport(collection=str(store.location))
    meta = store.all_meta()
    report.meta = {k: meta[k] for k in _META_KEYS if k in meta}
    add = report.problems.append
    docs = {d.id: d for d in store.documents()}
    # Page rows without their text (a big collection's text would not fit in memory).
    pages = store.pages(with_text=False)
    own = store.extra_checks(pages) if isinstance(store, StorageChecks) else None
    for problem in own.catalog if own is not None else []:
        add(problem)
    mismatch = model_problem(store, model_id, dim, fingerprint)
    if mismatch is not None:
        add(mismatch)
    report.stats = {
        "documents": len(docs),
        "pages": len(pages),
        "embedded": sum(1 for p in pages if p.embedded),
    }
    for problem in own.vectors if own is not None else []:
        add(problem)
    _check_pending(pages, add)
    for problem in own.cache if own is not None else []:
        add(problem)
    if own is not None:
        missing_images: list[Page] = own.missing_images
        orphan_files: list[Path] | list[str] = own.orphan_files
        _report_images(missing_images, orphan_files, own.orphan_names, docs, pages, None, add)
    else:
        missing_images, orphan_files = _check_image_store(image_audit(store), docs, pages, add)
    orphan_rows, stuck, failed, count_mismatch = _check_documents(store, docs, pages, add)
    elsewhere = own is None and bool(pages) and len(missing_images) == len(pages)
    return Scan(
        report,
        docs,
        pages,
        missing_images,
        orphan_files,
        orphan_rows,
        own.bad_vectors if own is not None else [],
        stuck,
        count_mismatch,
        failed,
        own,
        elsewhere,
    )


_META_KEYS = (
    "model_id",
    "dim",
    "model_fingerprint",
    "model_revision",
    "schema_version",
    "created_at",
)


def _check_pending(pages: list[Page], add) -> None:
    """Pages still waiting for a vector. (Vectors of the wrong length are the engine's own
    check: a Milvus vector field has the collection's width by schema.)"""
    pending = [p for p in pages if not p.embedded]
    if pending:
        add(
            Problem(
                "vectors-pending",
                f"{len(pending)} page(s) have no vector yet (searchable by text only)",
                {"count": len(pending)},
            )
        )


def _check_image_store(
    audit: ImageAudit, docs: dict[int, Document], pages: list[Page], add
) -> tuple[list[Page], list[str]]:
    """Page images missing or empty in an engine's image store, and keys no page names."""
    sizes = audit.image_sizes()
    named = {page.image for page in pages}
    missing_images = [page for page in pages if not sizes.get(page.image)]
    orphan_files = sorted(k for k in sizes if k not in named)
    names = list(orphan_files[:_SAMPLE])
    _report_images(missing_images, orphan_files, names, docs, pages, audit, add)
    return missing_images, orphan_files


def _report_images(
    missing_images: list[Page],
    orphan_files: list[Path] | list[str],
    names: list[str],
    docs: dict[int, Document],
    pages: list[Page],
    audit: ImageAudit | None,
    add,
) -> None:
    """The ``image-missing`` and ``orphan-files`` problems (orphans: paths in a local
    folder, else keys of the engine's image store)."""
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
    if orphan_files:
        add(
            Problem(
                "orphan-files",
                f"{len(orphan_files)} file(s) belong to no page (left by an interrupted job)",
                {"count": len(orphan_files), "files": names},
            )
        )


def image_audit(store: Store) -> ImageAudit:
    """The store as an :class:`ImageAudit`, or :class:`PageLensError` when it is not one."""
    if not isinstance(store, ImageAudit):
        raise PageLensError(f"Collection {store.location} cannot list its page images.")
    return store


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


def _page_name(docs: dict[int, Document], page: Page) -> str:
    doc = docs.get(page.document_id)
    return f"{doc.name if doc else page.document_id} p.{page.number}"


def open_for_check(path: Path) -> tuple[Store | None, CheckReport | None]:
    """Open a local collection folder for checking; a catalog that SQLite cannot read is a
    problem to report (with ``ok`` false), not a crash."""
    try:
        return open_collection(Path(path), create=False), None
    except CollectionError:
        if not catalog_file(path).is_file():
            raise
        report = CheckReport(collection=str(path))
        report.problems.append(
            Problem(
                "catalog-corrupt",
                describe_unopenable(path) + ": restore the collection from a backup, or index "
                "the files again into a new collection",
            )
        )
        return None, report
