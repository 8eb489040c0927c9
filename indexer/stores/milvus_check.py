"""``pagelens check [--repair]`` for a Milvus collection.

What can go wrong differs from a folder: there is no FAISS file to fall behind and no
half-written catalog, but a process can die between an image and its row, a document row can
outlive its pages, and a page row can outlive its document (another machine removed it while
this one was storing). Checked here:

* ``model-mismatch``: the model given is not the collection's (same rule as local);
* ``image-missing``: a page row whose image is not in the image store;
* ``orphan-pages``: page rows of a document that does not exist;
* ``document-incomplete``: a document marked ready with fewer stored pages than it has.

Repair drops orphan page rows, and marks incomplete documents (and those with a missing
image, whose page row it drops) as still indexing, so that ``pagelens index`` of the same
files completes them (ids are deterministic, so nothing is duplicated).
"""

from __future__ import annotations

from indexer.integrity import CheckReport, Problem, model_problem
from indexer.stores.milvus import MilvusCollection

_SAMPLE = 10


def check_milvus(
    store: MilvusCollection,
    *,
    model_id: str | None = None,
    dim: int | None = None,
    fingerprint: str | None = None,
    repair: bool = False,
) -> CheckReport:
    report = CheckReport(collection=store.location)
    report.meta = {k: v for k, v in store.all_meta().items()}
    stats = store.stats()
    report.stats = {
        "documents": stats.documents,
        "pages": stats.pages,
        "embedded": stats.embedded,
        "pending": stats.pending,
    }
    problem = model_problem(store, model_id, dim, fingerprint)
    if problem is not None:
        report.problems.append(problem)
    docs = {d.id: d for d in store.documents()}
    pages = store.pages(with_text=False)
    orphans = [p for p in pages if p.document_id not in docs]
    missing = [p for p in pages if p.document_id in docs and not store.images.exists(p.image)]
    incomplete = [d for d in docs.values() if d.ready and d.pages_stored < d.page_count]
    if missing:
        report.problems.append(
            Problem(
                "image-missing",
                f"{len(missing)} page(s) have no image in {store.images.url}",
                {"pages": [p.id for p in missing[:_SAMPLE]], "count": len(missing)},
            )
        )
    if orphans:
        report.problems.append(
            Problem(
                "orphan-pages",
                f"{len(orphans)} page row(s) belong to no document",
                {"pages": [p.id for p in orphans[:_SAMPLE]], "count": len(orphans)},
            )
        )
    if incomplete:
        report.problems.append(
            Problem(
                "document-incomplete",
                f"{len(incomplete)} document(s) marked ready miss pages: "
                + ", ".join(d.name for d in incomplete[:_SAMPLE]),
                {"documents": [d.id for d in incomplete[:_SAMPLE]]},
            )
        )
    if repair and (orphans or missing or incomplete):
        with store.writing():
            if orphans:
                store.remove_pages([p.id for p in orphans])
                report.repaired.append(
                    {"kind": "orphan-pages", "detail": f"dropped {len(orphans)} page row(s)"}
                )
            if missing:
                store.remove_pages([p.id for p in missing])
            redo = {d.id for d in incomplete} | {p.document_id for p in missing}
            for doc_id in sorted(redo):
                store.mark_incomplete(doc_id)
            if redo:
                report.repaired.append(
                    {
                        "kind": "document-incomplete",
                        "detail": f"{len(redo)} document(s) marked for re-indexing: run "
                        "'pagelens index' on the same files to complete them",
                    }
                )
        return check_milvus(store, model_id=model_id, dim=dim, fingerprint=fingerprint)
    return report
