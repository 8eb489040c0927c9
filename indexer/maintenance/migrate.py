"""Copy a collection between engines (local folder <-> Milvus) without re-embedding.

Everything a collection holds goes across as it is: documents, pages (text layer, PNG bytes,
size), vectors, the model's identity (name, dim, weights fingerprint, revision) and the
render settings. Documents are matched by content hash and pages by number, so the copy is
idempotent: interrupt it at any point and run it again, and it continues where it stopped
(documents already complete on the destination are skipped; a page stored without its vector
gets the vector). Afterwards counts are compared and a sample of vectors is checked to be
bit-identical on both sides.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from indexer.errors import CollectionError
from indexer.stores.base import Store
from indexer.stores.types import EncodedImage

log = logging.getLogger(__name__)

BATCH = 32


@dataclass
class MigrateReport:
    source: str
    destination: str
    documents_copied: int = 0
    documents_skipped: int = 0
    pages_copied: int = 0
    vectors_copied: int = 0
    counts: dict = field(default_factory=dict)
    sampled_vectors: int = 0
    ok: bool = False
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def migrate(
    src: Store,
    dst: Store,
    *,
    sample: int = 64,
    progress: Callable[[str], None] | None = None,
) -> MigrateReport:
    """Copy ``src`` into ``dst`` (see module docs); returns what was done and verified."""
    say = progress or (lambda _msg: None)
    report = MigrateReport(source=src.location, destination=dst.location)
    ident = src.model_identity()
    with dst.writing(on_wait=say):
        if ident is not None:
            dst.bind_model(
                ident.name, ident.dim, fingerprint=ident.fingerprint, revision=ident.revision
            )
        settings = src.render_settings()
        if settings and dst.render_settings() is None:
            dst.set_render_settings(settings)
        docs = src.documents()
        for n, doc in enumerate(docs, start=1):
            copied = _copy_document(src, dst, doc, report)
            if copied:
                report.documents_copied += 1
                say(f"[{n}/{len(docs)}] {doc.name}: {copied} page(s) copied")
            else:
                report.documents_skipped += 1
    verify(src, dst, report, sample=sample)
    return report


def _copy_document(src: Store, dst: Store, doc, report: MigrateReport) -> int:
    target = dst.find_by_sha256(doc.sha256)
    if (
        target is not None
        and target.status == doc.status
        and target.pages_stored == doc.pages_stored
        and target.pages_embedded == doc.pages_embedded
    ):
        return 0  # complete already (an earlier run)
    if target is None:
        target = dst.add_document(
            name=doc.name,
            path=doc.path,
            sha256=doc.sha256,
            kind=doc.kind,
            page_count=doc.page_count,
            title=doc.title,
            size=doc.bytes,
        )
    have = {p.number: p for p in dst.pages(target.id)}
    pages = src.pages(doc.id)
    todo = [
        p for p in pages if p.number not in have or have[p.number].image_sha256 != p.image_sha256
    ]
    copied = 0
    for start in range(0, len(todo), BATCH):
        batch = todo[start : start + BATCH]
        words = src.page_words_many([p.id for p in batch])
        items = [
            (p.number, p.text, EncodedImage(src.image_bytes(p), p.width, p.height), words.get(p.id))
            for p in batch
        ]
        new_ids = dst.add_pages(target.id, items)
        copied += len(batch)
        report.pages_copied += len(batch)
        _copy_vectors(src, dst, batch, new_ids, report)
    # pages stored by an interrupted run, before their vectors were
    have = {p.number: p for p in dst.pages(target.id)}
    missing = [p for p in pages if p.embedded and p.number in have and not have[p.number].embedded]
    if missing:
        _copy_vectors(src, dst, missing, [have[p.number].id for p in missing], report)
        copied += len(missing)
    if doc.ready:
        dst.mark_ready(target.id)
    else:
        dst.mark_incomplete(target.id)
    return copied or 1


def _copy_vectors(src: Store, dst: Store, pages, new_ids: list[int], report) -> None:
    vectors = src.vectors([p.id for p in pages])
    keep = [(new, vectors[p.id]) for p, new in zip(pages, new_ids, strict=True) if p.id in vectors]
    if keep:
        dst.set_vectors([i for i, _ in keep], np.stack([v for _, v in keep]))
        report.vectors_copied += len(keep)


def verify(src: Store, dst: Store, report: MigrateReport, *, sample: int = 64) -> None:
    """Counts equal on both sides, and ``sample`` random vectors bit-identical."""
    a, b = src.stats(), dst.stats()
    report.counts = {
        "source": {"documents": a.documents, "pages": a.pages, "embedded": a.embedded},
        "destination": {"documents": b.documents, "pages": b.pages, "embedded": b.embedded},
    }
    if (a.documents, a.pages, a.embedded) != (b.documents, b.pages, b.embedded):
        report.problems.append(
            f"counts differ: source {a.documents} documents / {a.pages} pages / {a.embedded} "
            f"vectors, destination {b.documents} / {b.pages} / {b.embedded} (the destination "
            "held other documents before, or the copy was interrupted: run it again)"
        )
    embedded = src.page_ids(embedded=True)
    chosen = random.Random(0).sample(embedded, min(sample, len(embedded)))
    src_pages = src.pages_by_id(chosen)
    src_vecs = src.vectors(chosen)
    docs = src.documents_by_id({p.document_id for p in src_pages.values()})
    for pid in chosen:
        page = src_pages[pid]
        target = dst.find_by_sha256(docs[page.document_id].sha256)
        match = None
        if target is not None:
            match = next((p for p in dst.pages(target.id) if p.number == page.number), None)
        other = dst.vector(match.id) if match is not None else None
        if other is None or not np.array_equal(other, src_vecs[pid]):
            report.problems.append(
                f"vector of {docs[page.document_id].name} page {page.number} differs or is missing"
            )
        report.sampled_vectors += 1
    report.ok = not report.problems


def check_distinct(src: Store, dst: Store) -> None:
    if src.location == dst.location:
        raise CollectionError(f"Source and destination are the same collection ({src.location}).")
