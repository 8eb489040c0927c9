"""The vector index: FAISS behind a small interface. The only module that imports faiss.

Why FAISS is a cache and not the source of truth: the SQLite catalog stores every page's
vector, and a FAISS file records which catalog version it reflects. A crash between the
two writes therefore never loses or duplicates a vector: on open the index is brought back
in step with the catalog (missing ids added, stale ids removed). Ids are the catalog's page
ids (``IndexIDMap2``), so removal and re-adding are exact. Scores are inner products of unit
vectors, i.e. cosine similarities.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

#: Index kinds offered. "flat" is exact; "hnsw" is approximate (used past a size threshold).
INDEX_KINDS = ("flat", "hnsw")


def set_threads(n: int | None) -> None:
    """Limit FAISS's OpenMP threads (None keeps its default)."""
    if n:
        faiss.omp_set_num_threads(int(n))


class VectorIndex:
    """Inner-product search over unit vectors keyed by int64 page ids."""

    def __init__(self, dim: int, *, kind: str = "flat", hnsw_m: int = 32) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
        self.dim = int(dim)
        self.kind = kind
        if kind == "flat":
            base = faiss.IndexFlatIP(self.dim)
        else:
            base = faiss.IndexHNSWFlat(self.dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = 80
            base.hnsw.efSearch = 128
        self._index = faiss.IndexIDMap2(base)

    # -- persistence -------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        """Read an index written by :meth:`save` (``RuntimeError``/``OSError`` if unreadable)."""
        index = faiss.read_index(str(path))
        if not isinstance(index, faiss.IndexIDMap2):
            index = faiss.downcast_index(index)
        self = cls.__new__(cls)
        self._index = index
        self.dim = index.d
        base = faiss.downcast_index(index.index)
        self.kind = "hnsw" if isinstance(base, faiss.IndexHNSW) else "flat"
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: a temporary file in the same folder, then ``os.replace``."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            faiss.write_index(self._index, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- content -----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        """All stored ids (int64), in insertion order."""
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids: Iterable[int], vectors: np.ndarray) -> None:
        ids_arr = np.ascontiguousarray(np.fromiter(ids, dtype=np.int64))
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(ids_arr) != len(vecs):
            raise ValueError("ids and vectors differ in length")
        if len(ids_arr):
            self._index.add_with_ids(vecs, ids_arr)

    def remove(self, ids: Iterable[int]) -> int:
        ids_arr = np.fromiter(ids, dtype=np.int64)
        if not len(ids_arr):
            return 0
        if self.kind == "hnsw":
            # HNSW cannot delete in place: rebuild from the vectors we keep.
            keep = ~np.isin(self.ids(), ids_arr)
            kept_ids = self.ids()[keep]
            kept = (
                np.stack([self._index.reconstruct(int(i)) for i in kept_ids])
                if len(kept_ids)
                else np.zeros((0, self.dim), np.float32)
            )
            fresh = VectorIndex(self.dim, kind="hnsw")
            fresh.add(kept_ids, kept)
            removed = len(self) - len(fresh)
            self._index = fresh._index
            return removed
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids_arr)))

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: Iterable[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query row; ids are -1 where fewer than k exist.

        ``allowed_ids`` restricts the search to those ids (document and page-range filters).
        """
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(int(k), max(len(self), 1)))
        if len(self) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if allowed_ids is None:
            scores, ids = self._index.search(q, k)
            return scores, ids
        allowed = np.fromiter(allowed_ids, dtype=np.int64)
        if not len(allowed):
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if len(allowed) <= 4096:
            # Exact over the subset: reconstructing a few thousand vectors beats a selector
            # on HNSW, whose graph walk can starve under a selective filter.
            vecs = np.stack([self._index.reconstruct(int(i)) for i in allowed])
            sims = q @ vecs.T
            kk = min(k, len(allowed))
            order = np.argsort(-sims, axis=1)[:, :kk]
            return np.take_along_axis(sims, order, axis=1), allowed[order]
        selector = faiss.IDSelectorBatch(allowed)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=256)
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self._index.search(q, k, params=params)
        return scores, ids

    def reconstruct(self, page_id: int) -> np.ndarray:
        return self._index.reconstruct(int(page_id))
