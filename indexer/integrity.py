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
from indexer.model import Embedder
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


# --------------------------------------------------------------------------------------
# Repair

EmbedderSource = Embedder | Callable[[], Embedder] | None


def repair(
    store: Store,
    *,
    embedder: EmbedderSource = None,
    password: str | None = None,
    model_id: str | None = None,
    fingerprint: str | None = None,
) -> CheckReport:
    """Fix what :func:`check` finds; returns a fresh check with ``repaired`` filled in.

    ``embedder`` (an embedder, or a function that loads one, called only when pages need
    vectors) embeds pending pages; ``password`` opens encrypted source files for re-rendering.
    Holds the collection's write lock throughout.
    """
    done: list[dict] = []

    def note(kind: str, detail: str, **extra) -> None:
        done.append({"kind": kind, "detail": detail, **extra})

    with store.writing():
        scan = _scan(store, model_id=model_id, dim=None, fingerprint=fingerprint)
        kinds = scan.report.kinds()
        if "catalog-corrupt" in kinds:
            # Nothing is provably orphaned when the source of truth is itself damaged: a file
            # the damaged catalog does not name may be named by the backup the user restores,
            # and every other repair writes into the damaged file. So nothing is changed.
            note(
                "catalog-corrupt",
                "not repaired: the catalog itself is damaged, so nothing was changed (no file "
                "or row deleted); restore the collection from a backup",
            )
            return _final(store, model_id, fingerprint, done)
        if scan.orphan_files and scan.images_elsewhere:
            note(
                "not-repaired",
                f"kept {len(scan.orphan_files)} file(s) no page names: the image store holds "
                "none of this collection's images, so they are most likely another "
                "collection's (or the location is wrong)",
                count=len(scan.orphan_files),
            )
        elif scan.orphan_files and not isinstance(store, Collection):
            keys = [str(k) for k in scan.orphan_files]
            deleted = _audit(store).delete_images(keys)
            kept = len(keys) - deleted
            note(
                "orphan-files",
                f"deleted {deleted} orphan file(s)"
                + (
                    f"; kept {kept} written too recently to be sure no other process is "
                    "about to store their rows (PAGELENS_MILVUS_ORPHAN_GRACE)"
                    if kept
                    else ""
                ),
                count=deleted,
            )
        elif scan.orphan_files:
            assert isinstance(store, Collection)
            removed = 0
            for path in scan.orphan_files:
                try:
                    Path(path).unlink()
                    removed += 1
                except OSError as exc:
                    log.warning("cannot delete %s: %s", path, exc)
            _prune_empty_dirs(store.path / PAGES_DIR)
            note("orphan-files", f"deleted {removed} orphan file(s)", count=removed)
        orphan_rows = _still_orphan_rows(store, scan)
        if orphan_rows:
            store.remove_pages(orphan_rows)
            note(
                "page-orphan-rows",
                f"deleted {len(orphan_rows)} page row(s)",
                count=len(orphan_rows),
            )
        if scan.bad_vectors:
            store.clear_vectors(scan.bad_vectors)
            note(
                "vector-bad",
                f"cleared {len(scan.bad_vectors)} bad vector(s); they are embedded again",
                count=len(scan.bad_vectors),
            )
        _repair_pages(store, scan, password, note)
        if isinstance(store, Collection) and (kinds & FAISS_KINDS or scan.bad_vectors):
            size = store.rebuild_index()
            note("faiss", f"rebuilt {VECTORS} from the catalog ({size} vectors)", count=size)
        _repair_pending(store, embedder, note)
        store.flush()  # the check below reads the saved file
    return _final(store, model_id, fingerprint, done)


def _final(
    store: Store, model_id: str | None, fingerprint: str | None, done: list[dict]
) -> CheckReport:
    """A fresh check after a repair, with what the repair did."""
    final = check(store, model_id=model_id, fingerprint=fingerprint)
    final.repaired = done
    return final


def _still_orphan_rows(store: Store, scan: _Scan) -> list[int]:
    """The page rows of no document, asking for their documents once more.

    Why: an engine without a lock (Milvus) may get a new document and its pages from another
    machine between the check's listing of the documents and its listing of the pages. A
    writer stores the document row before its pages, so a row whose document is there now
    was never an orphan; only rows whose document is still absent are deleted."""
    if not scan.orphan_rows:
        return []
    doc_of = {p.id: p.document_id for p in scan.pages}
    present = store.documents_by_id({doc_of[i] for i in scan.orphan_rows})
    return [i for i in scan.orphan_rows if doc_of[i] not in present]


def _repair_pages(store: Store, scan: _Scan, password: str | None, note) -> None:
    """Re-render missing images; finish stuck documents; fix page counts."""
    from indexer.pages import RenderSettings

    stored = store.render_settings() or {}
    settings = RenderSettings(
        **{k: v for k, v in stored.items() if k in RenderSettings.__dataclass_fields__}
    )
    missing_by_doc: dict[int, list[Page]] = defaultdict(list)
    for page in scan.missing_images:
        if page.document_id in scan.docs:
            missing_by_doc[page.document_id].append(page)
    todo = set(missing_by_doc) | {d.id for d in scan.stuck} | {d.id for d in scan.count_mismatch}
    todo |= {f["document_id"] for f in scan.failed}
    for doc_id in sorted(todo):
        _repair_document(
            store,
            scan.docs[doc_id],
            missing_by_doc.get(doc_id, []),
            settings,
            password,
            note,
            may_drop=not scan.images_elsewhere,
        )


def _repair_document(
    store: Store,
    doc: Document,
    missing: list[Page],
    settings: RenderSettings,
    password: str | None,
    note,
    *,
    may_drop: bool = True,
) -> None:
    """One document: drop pages past its count, render missing or absent pages again from
    the source file, drop those that cannot be (unless ``may_drop`` is False: the images may
    only be elsewhere), and mark it ready once complete."""
    from indexer.pages import file_sha256

    doc_id = doc.id
    current = {p.number: p for p in store.pages(doc_id)}
    extra = [p.id for n, p in current.items() if not 1 <= n <= doc.page_count]
    if extra:
        store.remove_pages(extra)
        note(
            "page-count",
            f"{doc.name}: dropped {len(extra)} page(s) beyond its {doc.page_count} pages",
            document=doc.name,
            count=len(extra),
        )
    broken = {p.number: p for p in missing}
    absent = [n for n in range(1, doc.page_count + 1) if n not in current]
    wanted = sorted(set(broken) | set(absent))
    why = _source_problem(doc, file_sha256)
    if wanted and why is None:
        try:
            failures = _render_wanted(store, doc_id, doc.path, wanted, settings, password, broken)
        except PageLensError as exc:
            why = str(exc)
        else:
            done = len(wanted) - len(failures)
            if done:
                note(
                    "image-missing" if broken else "page-count",
                    f"{doc.name}: rendered {done} page(s) again from {doc.path}",
                    document=doc.name,
                    count=done,
                )
            for number, reason in failures.items():
                store.add_failed_page(doc_id, number, reason)
            if failures:
                why = next(iter(failures.values()))
                note(
                    "page-failed",
                    f"{doc.name}: page(s) {', '.join(map(str, failures))} still cannot be "
                    f"rendered ({why})",
                    document=doc.name,
                    count=len(failures),
                )
            broken = {n: p for n, p in broken.items() if n in failures}
            absent = [n for n in absent if n in failures]
    if broken:
        _drop_broken(store, doc, list(broken.values()), why, note, may_drop=may_drop)
    placeholders = {f["page"] for f in store.failed_pages(doc_id)}
    covered = store.stored_page_numbers(doc_id) | placeholders
    complete = covered == set(range(1, doc.page_count + 1))
    if doc.status != "ready" and complete:
        store.mark_ready(doc_id)
        note(
            "document-stuck",
            f"{doc.name}: finished (all {doc.page_count} pages stored)",
            document=doc.name,
        )
    elif not complete:
        note(
            "not-repaired",
            f"{doc.name}: {len(store.stored_page_numbers(doc_id))} of "
            f"{doc.page_count} pages stored and the rest cannot be rendered ({why}); "
            f"index the file again, or remove the document with "
            f"'pagelens remove {doc.id}'",
            document=doc.name,
        )


def _drop_broken(
    store: Store, doc: Document, broken: list[Page], why: str | None, note, *, may_drop: bool
) -> None:
    """Pages whose image is gone and cannot be made again: a row naming no image would break
    every hit and export that reaches it, so the page goes (the document is then incomplete)
    unless ``may_drop`` is False (the images may only be elsewhere)."""
    if not may_drop:
        note(
            "not-repaired",
            f"{doc.name}: kept {len(broken)} page(s) whose image is not in the image store "
            f"and cannot be rendered again ({why}): the store holds none of the collection's "
            "images, so its location is most likely wrong",
            document=doc.name,
            count=len(broken),
        )
        return
    store.remove_pages([p.id for p in broken])
    store.mark_incomplete(doc.id)  # so that indexing the file again resumes it
    note(
        "image-missing",
        f"{doc.name}: dropped {len(broken)} page(s) whose image is "
        f"gone ({why}); index {doc.path} again to restore them",
        document=doc.name,
        count=len(broken),
    )


def _render_wanted(
    store: Store,
    doc_id: int,
    path: str,
    wanted: list[int],
    settings,
    password: str | None,
    old: dict[int, Page],
) -> dict[int, str]:
    """Render and store ``wanted`` pages; a page that fails is skipped (rendering goes on
    after it) and returned as ``{number: reason}``. A page stored clears its placeholder."""
    from indexer.pages import PageRenderError, render_pages

    failures: dict[int, str] = {}
    todo = list(wanted)

    def commit(batch: list) -> None:
        _store_rendered(store, doc_id, batch, old)
        for number, _text, _image in batch:
            store.clear_failed_page(doc_id, number)

    while todo:
        batch: list = []
        try:
            for page in render_pages(path, settings=settings, password=password, pages=todo):
                batch.append((page.number, page.text, page.image))
                if len(batch) >= 16:
                    commit(batch)
                    batch = []
            todo = []
        except PageRenderError as exc:
            failures[exc.page] = str(exc)
            todo = [n for n in todo if n > exc.page]  # rendered in the order asked
        if batch:
            commit(batch)
    return failures


def _source_problem(doc: Document, file_sha256) -> str | None:
    """Why the document's source file cannot be used to render pages again (None: it can)."""
    path = Path(doc.path)
    if not path.is_file():
        return f"source file {doc.path} no longer exists"
    try:
        if file_sha256(path) != doc.sha256:
            return f"source file {doc.path} has changed since it was indexed"
    except OSError as exc:
        return f"source file {doc.path} cannot be read ({exc})"
    return None


def _store_rendered(store: Store, doc_id: int, batch: list, old: dict[int, Page]) -> None:
    ids = store.add_pages(doc_id, batch)
    # A page whose image came out different from the one that was embedded needs a new vector.
    by_id = store.pages_by_id(ids)
    changed = [
        pid
        for pid in ids
        if by_id[pid].number in old
        and by_id[pid].image_sha256 != old[by_id[pid].number].image_sha256
    ]
    if changed:
        store.clear_vectors(changed)


def _repair_pending(store: Store, embedder: EmbedderSource, note) -> None:
    pending = store.stats().pending
    if not pending:
        return
    try:
        model = embedder
        if model is not None and not isinstance(model, Embedder):
            model = model()  # a loader: called only now that vectors are needed
        if model is None:
            raise PageLensError("no model was given (--model or PAGELENS_MODEL)")
        from indexer.pipeline import Indexer

        count = Indexer(store, model).embed_pending()
    except PageLensError as exc:
        note(
            "not-repaired",
            f"{pending} page(s) still need vectors and no model could embed them: {exc}",
            count=pending,
        )
        return
    note("vectors-pending", f"embedded {count} page(s)", count=count)


def _prune_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for dirpath, dirs, files in os.walk(root, topdown=False):
        if not dirs and not files and Path(dirpath) != root:
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def open_for_check(path: Path) -> tuple[Collection | None, CheckReport | None]:
    """Open a collection for checking; a catalog that SQLite cannot read is a problem to
    report (with ``ok`` false), not a crash."""
    from indexer.errors import CollectionError
    from indexer.store import CATALOG

    try:
        return Collection(path, create=False), None
    except CollectionError:
        if not (Path(path) / CATALOG).is_file():
            raise
        report = CheckReport(collection=str(path))
        try:
            sqlite3.connect(f"file:{Path(path) / CATALOG}?mode=ro", uri=True).execute(
                "SELECT COUNT(*) FROM sqlite_master"
            ).fetchone()
            detail = "the catalog cannot be opened"
        except sqlite3.DatabaseError as exc:
            detail = f"the catalog cannot be read ({exc})"
        report.problems.append(
            Problem(
                "catalog-corrupt",
                detail + ": restore the collection from a backup, or index the files again into "
                "a new collection",
            )
        )
        return None, report
