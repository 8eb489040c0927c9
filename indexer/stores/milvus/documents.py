"""Documents of a Milvus collection (``NAME_documents``), their page counts, and the
placeholders of pages that failed to render (meta rows ``failed:<doc>:<page>``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime, timezone

from indexer.errors import DocumentNotFoundError
from indexer.stores.base import utcnow
from indexer.stores.milvus.images import ImageStore
from indexer.stores.milvus.query import quote
from indexer.stores.milvus.schema import DOC_FIELDS, DUMMY_VECTOR, MilvusSchema, document_id_for
from indexer.stores.types import Document

_FRACTION = re.compile(r"\.\d+(?=[+-]\d\d:\d\d$|Z$)")  # an ISO time's fraction of a second


class MilvusDocuments(MilvusSchema):
    """The document rows, their status, failed pages and removal."""

    images: ImageStore

    def _counts(self, doc_ids: Iterable[int] | None = None) -> dict[int, tuple[int, int]]:
        """Stored and embedded page counts per document."""
        if not self._ensure_pages(create=False):
            return {}
        wanted = None if doc_ids is None else sorted({int(d) for d in doc_ids})
        out: dict[int, list[int]] = {}
        if wanted is not None and len(wanted) <= 16:
            for d in wanted:
                total = self._count(f"document_id == {d}")
                done = self._count(f"document_id == {d} and embedded == true") if total else 0
                out[d] = [total, done]
            return {k: (v[0], v[1]) for k, v in out.items()}
        expr = "id >= 0" if wanted is None else f"document_id in {wanted}"
        for row in self._iter(self.pages_name, expr, ["document_id", "embedded"]):
            c = out.setdefault(int(row["document_id"]), [0, 0])
            c[0] += 1
            c[1] += bool(row["embedded"])
        return {k: (v[0], v[1]) for k, v in out.items()}

    def _document(self, row: dict, counts: dict[int, tuple[int, int]]) -> Document:
        stored, embedded = counts.get(int(row["id"]), (0, 0))
        return Document(
            id=int(row["id"]),
            name=row["name"],
            path=row["path"],
            sha256=row["sha256"],
            kind=row["kind"],
            page_count=int(row["page_count"]),
            title=row["title"] or None,
            bytes=int(row["bytes"]),
            status=row["status"],
            added_at=_FRACTION.sub("", row["added_at"]),  # shown to the second, as local
            pages_stored=stored,
            pages_embedded=embedded,
        )

    def documents(self) -> list[Document]:
        """In the order they were added (``added_at`` to the microsecond), as local lists
        them (by its increasing ids)."""
        rows = list(self._iter(self.docs_name, "id >= 0", DOC_FIELDS))
        counts = self._counts(None) if rows else {}
        rows.sort(key=lambda r: (r["added_at"], r["id"]))
        return [self._document(r, counts) for r in rows]

    def document(self, ref: str | int) -> Document:
        text = str(ref)
        if text.isdigit():
            found = self.documents_by_id([int(text)])
            if found:
                return found[int(text)]
        rows = self._query(
            self.docs_name,
            "finding a document",
            filter=f"name == {quote(text)} or path == {quote(text)}",
            output_fields=DOC_FIELDS,
        )
        if not rows:
            folded = text.casefold()
            rows = [
                r
                for r in self._iter(self.docs_name, "id >= 0", DOC_FIELDS)
                if r["name"].casefold() == folded
            ]
        if len(rows) == 1:
            return self._document(rows[0], self._counts([rows[0]["id"]]))
        if len(rows) > 1:
            ids = ", ".join(str(r["id"]) for r in sorted(rows, key=lambda r: r["id"]))
            raise DocumentNotFoundError(
                f"More than one document is named '{text}' (ids {ids}); name it by id."
            )
        raise DocumentNotFoundError(f"No document '{text}' in collection {self.location}.")

    def find_by_sha256(self, sha256: str) -> Document | None:
        doc = self.documents_by_id([document_id_for(sha256)]).get(document_id_for(sha256))
        return doc if doc is not None and doc.sha256 == sha256 else None

    def documents_by_id(self, ids: Iterable[int]) -> dict[int, Document]:
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return {}
        rows = self._query(
            self.docs_name, "reading documents", ids=wanted, output_fields=DOC_FIELDS
        )
        counts = self._counts([r["id"] for r in rows]) if rows else {}
        return {int(r["id"]): self._document(r, counts) for r in rows}

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
        doc_id = document_id_for(sha256)
        existing = self.documents_by_id([doc_id]).get(doc_id)
        if existing is not None:  # another process added the same file a moment ago
            return existing
        row = {
            "id": doc_id,
            "name": name[:2000],
            "path": path[:8000],
            "sha256": sha256,
            "kind": kind,
            "page_count": int(page_count),
            "title": (title or "")[:4000],
            "bytes": int(size),
            "status": status,
            # to the microsecond: documents() lists them in the order they were added
            "added_at": datetime.now(timezone.utc).isoformat(),
            "_v": DUMMY_VECTOR,
        }
        self._call("adding a document", self.client.upsert, self.docs_name, [row])
        return self.document(doc_id)

    def _set_status(self, document_id: int, status: str) -> None:
        rows = self._query(
            self.docs_name, "reading documents", ids=[int(document_id)], output_fields=DOC_FIELDS
        )
        if not rows:
            return
        row = dict(rows[0], status=status, _v=DUMMY_VECTOR)
        self._call("updating a document", self.client.upsert, self.docs_name, [row])

    def mark_ready(self, document_id: int) -> None:
        self._set_status(document_id, "ready")

    def mark_incomplete(self, document_id: int) -> None:
        self._set_status(document_id, "indexing")

    # Placeholders of pages that failed to render live in meta as ``failed:<doc>:<page>``.
    def add_failed_page(self, document_id: int, number: int, reason: str) -> None:
        value = json.dumps({"reason": reason, "failed_at": utcnow()})
        self._set_meta({f"failed:{int(document_id)}:{int(number)}": value})

    def clear_failed_page(self, document_id: int, number: int) -> None:
        self._call(
            "writing meta",
            self.client.delete,
            self.meta_name,
            ids=[f"failed:{int(document_id)}:{int(number)}"],
        )

    def failed_pages(self, document_id: int | None = None) -> list[dict]:
        prefix = "failed:" if document_id is None else f"failed:{int(document_id)}:"
        rows = self._query(
            self.meta_name,
            "reading meta",
            filter=f"key like {quote(prefix + '%')}",
            output_fields=["key", "value"],
        )
        out = []
        docs = self.documents_by_id({int(r["key"].split(":")[1]) for r in rows}) if rows else {}
        for r in rows:
            _, doc_id, number = r["key"].split(":")
            doc = docs.get(int(doc_id))
            if doc is None:
                continue
            info = json.loads(r["value"])
            out.append(
                {
                    "document_id": doc.id,
                    "document": doc.name,
                    "page": int(number),
                    "reason": info["reason"],
                    "failed_at": info["failed_at"],
                }
            )
        return sorted(out, key=lambda f: (f["document_id"], f["page"]))

    def remove_document(self, ref: str | int) -> Document:
        """Pages first (they stop being searchable), then the document row, then images."""
        doc = self.document(ref)
        if self._ensure_pages(create=False):
            self._call(
                "removing pages",
                self.client.delete,
                self.pages_name,
                filter=f"document_id == {doc.id}",
            )
        self._call("removing a document", self.client.delete, self.docs_name, ids=[doc.id])
        self.images.delete_prefix(f"pages/{doc.id}")
        self.images.delete_prefix(f"words/{doc.id}")
        return doc
