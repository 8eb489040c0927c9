"""The Milvus engine's side of ``pagelens sync``: where each document's file is (moves keep
pages and vectors), the modification time it had (meta rows ``source:<sha256>``), the swap
of a changed file's new version for its old one in one upsert, and which documents every
search leaves out (staged or replaced versions)."""

from __future__ import annotations

import json

from indexer.errors import DocumentNotFoundError
from indexer.stores.milvus.query import quote
from indexer.stores.milvus.schema import DOC_FIELDS, DUMMY_VECTOR, MilvusSchema
from indexer.stores.types import HIDDEN_STATUSES

#: Meta keys of the recorded modification times: ``source:<sha256>`` -> nanoseconds. Keyed
#: by content, so a stale one (its document removed) can never describe another file.
STAMP_PREFIX = "source:"


class MilvusSources(MilvusSchema):
    """Document sources and the atomic replace, over ``NAME_documents`` and ``NAME_meta``."""

    def _doc_rows(self, ids: list[int]) -> dict[int, dict]:
        rows = self._query(self.docs_name, "reading documents", ids=ids, output_fields=DOC_FIELDS)
        return {int(r["id"]): dict(r, _v=DUMMY_VECTOR) for r in rows}

    def replace_document(self, old_id: int, new_id: int) -> None:
        """Both rows in one upsert: one request, so a search sees the old version or the
        new one, never both or neither."""
        rows = self._doc_rows([int(old_id), int(new_id)])
        if len(rows) != 2:
            raise DocumentNotFoundError(f"No documents {old_id} and {new_id} to swap.")
        rows[int(new_id)]["status"] = "ready"
        rows[int(old_id)]["status"] = "replaced"
        self._call("replacing a document", self.client.upsert, self.docs_name, list(rows.values()))

    def set_document_source(
        self, document_id: int, *, path: str, name: str, size: int, mtime_ns: int
    ) -> None:
        row = self._doc_rows([int(document_id)]).get(int(document_id))
        if row is None:
            raise DocumentNotFoundError(f"No document {document_id}.")
        row.update(path=path[:8000], name=name[:2000], bytes=int(size))
        self._call("updating a document", self.client.upsert, self.docs_name, [row])
        self._set_meta({STAMP_PREFIX + row["sha256"]: str(int(mtime_ns))})

    def source_stamps(self) -> dict[str, int]:
        rows = self._iter(self.meta_name, f"key like {quote(STAMP_PREFIX + '%')}", ["key", "value"])
        return {r["key"][len(STAMP_PREFIX) :]: int(r["value"]) for r in rows}

    def _hidden_documents(self) -> list[int]:
        """Documents no search returns (a sync's staged or replaced versions)."""
        rows = self._query(
            self.docs_name,
            "reading documents",
            filter=f"status in {json.dumps(list(HIDDEN_STATUSES))}",
            output_fields=["id"],
        )
        return sorted(int(r["id"]) for r in rows)
