"""Searching a Milvus collection: filters as Milvus boolean expressions (applied inside
the search, never after a top-k), dense HNSW, BM25 and hybrid (RRF) searches, and hits as
PageLens's ``[(page_id, score)]``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.stores.base import (
    RRF_K,
    PageFilter,
    query_words,
    reciprocal_rank_fusion,
)
from indexer.stores.milvus.schema import MilvusSchema, text_terms


def quote(text: str) -> str:
    """A string literal for a Milvus boolean expression."""
    return json.dumps(str(text), ensure_ascii=False)


def expression(
    where: PageFilter | None,
    page_ids: Iterable[int] | None,
    embedded: bool | None,
    hidden: Sequence[int] = (),
) -> str:
    """A filter as a Milvus boolean expression (applied inside the search); ``hidden``:
    documents whose pages it leaves out (a sync's staged or replaced versions)."""
    parts = []
    if hidden:
        parts.append(f"document_id not in {[int(d) for d in hidden]}")
    if embedded is True:
        parts.append("embedded == true")
    elif embedded is False:
        parts.append("embedded == false")
    if where is not None:
        if where.documents is not None:
            parts.append(f"document_id in {[int(d) for d in where.documents]}")
        if where.first is not None:
            parts.append(f"number >= {int(where.first)}")
        if where.last is not None:
            parts.append(f"number <= {int(where.last)}")
    if page_ids is not None:
        parts.append(f"id in {[int(i) for i in page_ids]}")
    return " and ".join(parts)


def _ranked(res: Any, *, bm25: bool = False) -> list[tuple[int, float]]:
    """Hits as ``[(page_id, score)]``, best first, ties by id (as the local RRF breaks them).

    BM25 scores are reported positive (Milvus gives the score; milvus-lite its negation as
    a distance, in the same order), so both servers give the local engine's sign."""
    hits = [(int(h["id"]), float(h["distance"])) for h in (res[0] if res else [])]
    if bm25 and hits and all(score <= 0 for _, score in hits):
        hits = [(pid, -score) for pid, score in hits]
    return sorted(hits, key=lambda item: (-item[1], item[0]))


class MilvusSearch(MilvusSchema):
    """Dense, text and hybrid search over ``NAME_pages``."""

    if TYPE_CHECKING:  # provided by the collection

        def vectors(self, page_ids: Sequence[int]) -> dict[int, np.ndarray]: ...

        def _hidden_documents(self) -> list[int]: ...

    def _dense_params(self, k: int) -> dict:
        return {"metric_type": "IP", "params": {"ef": max(64, int(k))}}

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        page_ids: Iterable[int] | None = None,
        where: PageFilter | None = None,
    ) -> list[tuple[int, float]]:
        """HNSW (IP = cosine on unit vectors) with the filter inside the search."""
        if not self._ensure_pages(create=False):
            return []

        def run(hidden: list[int]) -> Any:
            return self._call(
                "searching",
                self.client.search,
                self.pages_name,
                data=[np.asarray(query, np.float32).tolist()],
                anns_field="vector",
                limit=int(k),
                filter=expression(where, page_ids, True, hidden),
                search_params=self._dense_params(k),
                output_fields=["id"],
            )

        return _ranked(self._without_hidden(run))

    def _without_hidden(self, run: Callable[[list[int]], Any]) -> Any:
        """``run(hidden)``: a search leaving out the documents a sync holds hidden, run
        again if they changed meanwhile (one planned before a sync's swap and run after it
        would miss both versions of the file)."""
        hidden = self._hidden_documents()
        for _ in range(3):
            out = run(hidden)
            now = self._hidden_documents()
            if now == hidden:
                break
            hidden = now
        return out

    def search_text(
        self,
        query: str,
        k: int,
        *,
        page_ids: Iterable[int] | None = None,
        where: PageFilter | None = None,
    ) -> list[tuple[int, float]]:
        """Milvus's BM25 function over the text layer, with the filter inside the search."""
        words = query_words(query)
        if not words or not self._ensure_pages(create=False):
            return []

        def run(hidden: list[int]) -> Any:
            return self._call(
                "searching text",
                self.client.search,
                self.pages_name,
                data=[text_terms(" ".join(words))],
                anns_field="sparse",
                limit=int(k),
                filter=expression(where, page_ids, None, hidden),
                search_params={"metric_type": "BM25"},
                output_fields=["id"],
            )

        return _ranked(self._without_hidden(run), bm25=True)

    def search_hybrid(
        self,
        query: np.ndarray | None,
        text: str,
        k: int,
        *,
        depth: int,
        where: PageFilter | None = None,
    ) -> tuple[list[tuple[int, float]], dict[int, dict[str, float]]]:
        """``hybrid_search`` of the dense and BM25 requests, fused by ``RRFRanker(RRF_K)``.

        Per-ranking scores: the visual cosine of each returned page that has a vector (the
        local engine: of those within the visual ranking's ``depth``) and its BM25 score
        when it is in the text ranking to ``depth``, as the local engine reports.
        """
        if not self._ensure_pages(create=False):
            return [], {}
        words = query_words(text)
        if query is None or not words:  # one ranking only: RRF of it, as the local engine
            vis = self.search(query, depth, where=where) if query is not None else []
            txt = self.search_text(text, depth, where=where) if words else []
            return reciprocal_rank_fusion({"visual": vis, "text": txt}, k)
        q = np.asarray(query, np.float32)
        ranked = _ranked(
            self._without_hidden(lambda hidden: self._hybrid(q, words, k, depth, where, hidden))
        )
        ids = [pid for pid, _ in ranked]
        vectors = self.vectors(ids)
        parts: dict[int, dict[str, float]] = {
            pid: {"visual": float(vectors[pid] @ q)} for pid in ids if pid in vectors
        }
        # The fused result carries only RRF scores: each page's BM25 score comes from the
        # text ranking to ``depth`` (the one fused; a page outside it has none, as local).
        # (A search limited to the returned ids would score with other statistics.)
        if ids:
            wanted = set(ids)
            for pid, score in self.search_text(text, depth, where=where):
                if pid in wanted:
                    parts.setdefault(pid, {})["text"] = score
        return ranked, parts

    def _hybrid(
        self,
        q: np.ndarray,
        words: list[str],
        k: int,
        depth: int,
        where: PageFilter | None,
        hidden: list[int],
    ) -> Any:
        """One ``hybrid_search``: the dense and BM25 requests, fused by ``RRFRanker(RRF_K)``."""
        from pymilvus import AnnSearchRequest, RRFRanker

        dense = AnnSearchRequest(
            data=[q.tolist()],
            anns_field="vector",
            param=self._dense_params(depth),
            limit=int(depth),
            expr=expression(where, None, True, hidden),
        )
        sparse = AnnSearchRequest(
            data=[text_terms(" ".join(words))],
            anns_field="sparse",
            param={"metric_type": "BM25"},
            limit=int(depth),
            expr=expression(where, None, None, hidden),
        )
        return self._call(
            "searching (hybrid)",
            self.client.hybrid_search,
            self.pages_name,
            [dense, sparse],
            RRFRanker(RRF_K),
            limit=int(k),
            output_fields=["id"],
        )
