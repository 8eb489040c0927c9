"""Repairing a collection: what :func:`indexer.maintenance.check.check` finds, fixed where it
can be (``pagelens check --repair``), and said where it cannot.

Engine-neutral through :class:`Store` (orphan rows, bad vectors cleared, pages rendered again
from their source files, documents finished, pending pages embedded); an engine's own storage
is repaired by the engine (:class:`~indexer.stores.base.StorageChecks`: orphan files, the
vector cache) or through its image store (:class:`~indexer.stores.base.ImageAudit`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.errors import PageLensError
from indexer.maintenance.check import CheckReport, Scan, check, image_audit, scan_collection
from indexer.maintenance.words import repair_words
from indexer.model import Embedder
from indexer.stores.base import StorageChecks, Store
from indexer.stores.types import Document, Page

if TYPE_CHECKING:
    from indexer.pages import RenderSettings

__all__ = ["EmbedderSource", "repair"]

log = logging.getLogger(__name__)

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
        scan = scan_collection(store, model_id=model_id, dim=None, fingerprint=fingerprint)
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
        elif scan.orphan_files:
            _repair_orphan_files(store, scan, note)
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
        repair_words(store, _render_settings(store), password, note)
        if isinstance(store, StorageChecks) and scan.findings is not None:
            done.extend(store.extra_repairs(scan.findings))
        _repair_pending(store, embedder, note)
        store.flush()  # the check below reads the saved file
    return _final(store, model_id, fingerprint, done)


def _repair_orphan_files(store: Store, scan: Scan, note) -> None:
    """Delete files no page names: by the engine itself, or in its image store."""
    if isinstance(store, StorageChecks):
        removed = store.delete_orphan_files([Path(p) for p in scan.orphan_files])
        note("orphan-files", f"deleted {removed} orphan file(s)", count=removed)
        return
    keys = [str(k) for k in scan.orphan_files]
    deleted = image_audit(store).delete_images(keys)
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


def _final(
    store: Store, model_id: str | None, fingerprint: str | None, done: list[dict]
) -> CheckReport:
    """A fresh check after a repair, with what the repair did."""
    final = check(store, model_id=model_id, fingerprint=fingerprint)
    final.repaired = done
    return final


def _still_orphan_rows(store: Store, scan: Scan) -> list[int]:
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


def _repair_pages(store: Store, scan: Scan, password: str | None, note) -> None:
    """Re-render missing images; finish stuck documents; fix page counts."""
    settings = _render_settings(store)
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


def _render_settings(store: Store) -> RenderSettings:
    """The render settings the collection was made with (the defaults where unrecorded)."""
    from indexer.pages import RenderSettings

    stored = store.render_settings() or {}
    return RenderSettings(
        **{k: v for k, v in stored.items() if k in RenderSettings.__dataclass_fields__}
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
        for item in batch:
            store.clear_failed_page(doc_id, item[0])

    while todo:
        batch: list = []
        try:
            for page in render_pages(path, settings=settings, password=password, pages=todo):
                batch.append((page.number, page.text, page.image, page.words))
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
