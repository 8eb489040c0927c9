"""The local engine's full-text side: BM25 over the catalog's FTS5 index, page filters as id
sets, and hybrid search fused by RRF in this process (Milvus fuses server-side)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from indexer.stores.base import query_words, reciprocal_rank_fusion
from indexer.stores.types import PageFilter

log = logging.getLogger(__name__)


T = TypeVar("T")


class TextSearch:
    """Mixin of :class:`~indexer.stores.local.collection.LocalCollection`: text and hybrid
    search (it relies on the engine's ``_query``, ``page_ids`` and vector ``search``)."""

    if TYPE_CHECKING:  # provided by LocalCollection

        def _query(self, sql: str, args: Sequence = ()) -> list[tuple]: ...

        def page_ids(
            self,
            *,
            documents: Iterable[int] | None = None,
            first: int | None = None,
            last: int | None = None,
            embedded: bool | None = None,
        ) -> list[int]: ...

        def _hidden_documents(self) -> list[int]: ...

        def _search_once(
            self,
            query: np.ndarray,
            k: int,
            page_ids: Iterable[int] | None,
            where: PageFilter | None,
        ) -> list[tuple[int, float]]: ...

        def _without_hidden(self, run: Callable[[], T]) -> T: ...

        def _visible_page_ids(
            self, documents: list[int] | None, first: int | None, last: int | None
        ) -> list[int]: ...

        def search(
            self,
            query: np.ndarray,
            k: int,
            *,
            page_ids: Iterable[int] | None = None,
            where: PageFilter | None = None,
        ) -> list[tuple[int, float]]: ...

    def search_text(
        self,
        query: str,
        k: int,
        *,
        page_ids: Iterable[int] | None = None,
        where: PageFilter | None = None,
    ) -> list[tuple[int, float]]:
        """BM25 over the pages' text layer (SQLite FTS5): ``[(page_id, score), ...]``."""
        return self._without_hidden(lambda: self._search_text_once(query, k, page_ids, where))

    def _search_text_once(
        self,
        query: str,
        k: int,
        page_ids: Iterable[int] | None,
        where: PageFilter | None,
    ) -> list[tuple[int, float]]:
        page_ids = self._filter_ids(page_ids, where)
        match = fts_query(query)
        if not match:
            return []
        sql = "SELECT rowid, -bm25(pages_fts) FROM pages_fts WHERE pages_fts MATCH ?"
        args: list = [match]
        if page_ids is not None:
            allowed = [int(i) for i in page_ids]
            if not allowed:
                return []
            sql += f" AND rowid IN ({','.join('?' * len(allowed))})"
            args.extend(allowed)
        sql += " ORDER BY bm25(pages_fts) LIMIT ?"
        args.append(int(k))
        try:
            return [(int(r[0]), float(r[1])) for r in self._query(sql, args)]
        except sqlite3.OperationalError as exc:
            log.warning("full-text query %r failed: %s", match, exc)
            return []

    def search_hybrid(
        self,
        query: np.ndarray | None,
        text: str,
        k: int,
        *,
        depth: int,
        where: PageFilter | None = None,
    ) -> tuple[list[tuple[int, float]], dict[int, dict[str, float]]]:
        """Both rankings to ``depth``, fused by RRF here (Milvus fuses server-side)."""
        return self._without_hidden(lambda: self._hybrid_once(query, text, k, depth, where))

    def _hybrid_once(
        self,
        query: np.ndarray | None,
        text: str,
        k: int,
        depth: int,
        where: PageFilter | None,
    ) -> tuple[list[tuple[int, float]], dict[int, dict[str, float]]]:
        allowed = self._filter_ids(None, where)
        if allowed is not None and not allowed:
            return [], {}
        # The "once" forms: this whole call already runs inside _without_hidden.
        vis = self._search_once(query, depth, allowed, None) if query is not None else []
        txt = self._search_text_once(text, depth, allowed, None) if text else []
        return reciprocal_rank_fusion({"visual": vis, "text": txt}, k)

    def _filter_ids(
        self, page_ids: Iterable[int] | None, where: PageFilter | None
    ) -> list[int] | None:
        """A :class:`PageFilter` as the page ids it allows (SQLite filters by id sets);
        the pages of hidden documents (a sync's staged or replaced versions) never."""
        hidden = self._hidden_documents()
        if (where is None or where.empty) and not hidden:
            return None if page_ids is None else [int(i) for i in page_ids]
        where = where or PageFilter()
        docs = list(where.documents) if where.documents is not None else None
        if hidden:  # one statement: a sync's swap is seen whole (one version, never none)
            allowed = self._visible_page_ids(docs, where.first, where.last)
        else:
            allowed = self.page_ids(documents=docs, first=where.first, last=where.last)
        if page_ids is not None:
            keep = {int(i) for i in page_ids}
            allowed = [i for i in allowed if i in keep]
        return allowed


def fts_query(text: str) -> str:
    """Turn free text into a safe FTS5 query: every word quoted, joined by OR.

    Quoting makes user input (quotes, colons, hyphens) harmless; OR with BM25 ranking lets
    pages that contain more of the words rank first.
    """
    return " OR ".join(f'"{w}"' for w in query_words(text))
