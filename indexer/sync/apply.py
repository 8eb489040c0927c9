"""Carrying out a :class:`~indexer.sync.plan.SyncPlan` with an :class:`Indexer`.

Order, chosen so that a ``kill -9`` anywhere leaves a collection a re-run finishes: hidden
leftovers of an interrupted sync go first; moves and new times are single row writes; the
added files and the new versions of changed files are indexed in one job, the new versions
``staged`` (no search sees them); each is then published with the old version hidden in one
write (:meth:`Store.replace_document`) and the old one removed; ``prune`` removes last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from indexer.model import Embedder
from indexer.pages import RenderSettings
from indexer.pipeline import FileResult, Indexer, IndexReport, ProgressFn
from indexer.stores import Store
from indexer.stores.types import Document
from indexer.sync.plan import SourceFile, SyncPlan, inside
from indexer.sync.report import SyncReport


def apply_plan(
    store: Store,
    embedder: Embedder | None,
    plan: SyncPlan,
    *,
    prune: bool = False,
    progress: ProgressFn | None = None,
    settings: RenderSettings | None = None,
    on_file: Callable[[FileResult], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> SyncReport:
    """Apply ``plan`` (from :func:`~indexer.sync.plan.plan_sync`) under the write lock."""
    started = time.perf_counter()
    report = SyncReport(unchanged=plan.unchanged)
    with store.writing(on_wait=on_wait):
        for doc in plan.leftovers:
            store.remove_document(doc.id)
            report.cleaned.append(doc.path)
        for doc, file in plan.moved:
            _stamp(store, doc.id, file, name=file.path.name)
            report.moved.append({"from": doc.path, "to": str(file.path)})
        for doc, file in plan.restamp:
            _stamp(store, doc.id, file, name=doc.name)
        for file, doc in plan.duplicates:
            report.duplicates.append({"path": str(file.path), "stored_as": doc.path})
        report.index = _index(store, embedder, plan, progress, settings, on_file, on_wait)
        results = {Path(r.path).resolve(): r for r in report.index.files}
        published: set[int] = set()
        for file in plan.added + plan.resumed:
            _record_added(store, file, results.get(file.path), report)
        for file, old in plan.changed:
            new_id = _publish(store, embedder, file, old, results.get(file.path), report)
            if new_id is not None:
                published.add(new_id)
        _sweep_staged(store, plan, published, report)
        for doc in plan.missing:
            if prune:
                store.remove_document(doc.id)
                report.removed.append(doc.path)
            else:
                report.missing.append(doc.path)
    report.seconds = time.perf_counter() - started
    return report


def _stamp(store: Store, doc_id: int, file: SourceFile, *, name: str) -> None:
    store.set_document_source(
        doc_id, path=str(file.path), name=name, size=file.size, mtime_ns=file.mtime_ns
    )


def _index(
    store: Store,
    embedder: Embedder | None,
    plan: SyncPlan,
    progress: ProgressFn | None,
    settings: RenderSettings | None,
    on_file: Callable[[FileResult], None] | None,
    on_wait: Callable[[str], None] | None,
) -> IndexReport:
    """One indexing job for the added and changed files (changed ones staged), or, with
    nothing to index, the vectors an interrupted run left pending."""
    staged = [f.path for f, _old in plan.changed]
    todo = [f.path for f in plan.added + plan.resumed] + staged
    indexer = Indexer(store, embedder, settings=settings)
    if todo:
        return indexer.add(
            todo,
            staged=staged,
            embed=embedder is not None,
            progress=progress,
            on_wait=on_wait,
            on_file=on_file,
        )
    report = IndexReport()
    if embedder is not None and store.stats().pending:
        indexer.embed_pending(progress=progress, report=report)
    report.pending = store.stats().pending
    return report


def _record_added(
    store: Store, file: SourceFile, result: FileResult | None, report: SyncReport
) -> None:
    if result is None or result.status == "refused":
        report.refused.append(
            result.as_dict() if result else {"path": str(file.path), "status": "refused"}
        )
        return
    if result.status == "skipped":  # the same bytes are stored under another path
        report.duplicates.append({"path": str(file.path), "stored_as": _stored_as(store, result)})
        return
    if result.status == "partial":
        report.partial.append(result.as_dict())
    assert result.document_id is not None  # added, resumed or partial: stored
    _stamp(store, result.document_id, file, name=result.name or file.path.name)
    report.added.append(str(file.path))


def _publish(
    store: Store,
    embedder: Embedder | None,
    file: SourceFile,
    old: Document,
    result: FileResult | None,
    report: SyncReport,
) -> int | None:
    """Swap a changed file's staged new version for the old one; returns the new id, or
    None when there is nothing to publish (the old version then stays as it was)."""
    if result is None or result.status == "refused":
        report.refused.append(
            result.as_dict() if result else {"path": str(file.path), "status": "refused"}
        )
        return None
    if result.status == "skipped":  # the new bytes are stored already, under another path
        store.remove_document(old.id)
        report.duplicates.append({"path": str(file.path), "stored_as": _stored_as(store, result)})
        report.changed.append(str(file.path))
        return None
    assert result.document_id is not None
    new = store.documents_by_id([result.document_id]).get(result.document_id)
    if new is None:
        report.errors.append(f"{file.path}: its new version vanished while indexing")
        return None
    if embedder is not None and new.pages_embedded < new.pages_stored:
        report.errors.append(
            f"{file.path}: {new.pages_stored - new.pages_embedded} page(s) of its new version "
            "wait for vectors; the old version stays searchable until a re-run finishes it"
        )
        return new.id
    if result.status == "partial":
        report.partial.append(result.as_dict())
    store.replace_document(old.id, new.id)
    store.remove_document(old.id)
    _stamp(store, new.id, file, name=new.name)
    report.changed.append(str(file.path))
    return new.id


def _stored_as(store: Store, result: FileResult) -> str:
    """The path under which a skipped file's bytes are stored (or the skip's message)."""
    if result.document_id is not None:
        doc = store.documents_by_id([result.document_id]).get(result.document_id)
        if doc is not None:
            return doc.path
    return result.message or ""


def _sweep_staged(store: Store, plan: SyncPlan, keep: set[int], report: SyncReport) -> None:
    """Remove staged versions under the folders that no change of this run published or
    still waits on (a version an interrupted sync began of content the file no longer has)."""
    for doc in store.documents():
        if doc.status == "staged" and doc.id not in keep and inside(doc.path, plan.folders):
            store.remove_document(doc.id)
            report.cleaned.append(doc.path)
