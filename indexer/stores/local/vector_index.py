"""The vector index: FAISS behind a small interface. The only module that imports faiss.

Why FAISS is a cache and not the source of truth: the SQLite catalog stores every page's
vector, and a FAISS file records which catalog version it reflects. A crash between the
two writes therefore never loses or duplicates a vector: on open the index is brought back
in step with the catalog (missing ids added, stale ids removed). Ids are the catalog's page
ids (``IndexIDMap2``, or the IVF index's own ids), so removal and re-adding are exact. Scores
are inner products of unit vectors, i.e. cosine similarities.

Two kinds; the store picks one by collection size (``store.APPROX_THRESHOLD``). Numbers are
from ``bench/results/xeon-amx-2core-index-2026-11-26.json`` (2-core Xeon, clustered 1536-d
unit vectors, one query at a time), as in the README's Performance section:

* ``flat``: exact. 4.1 ms at 10k vectors, 51 ms at 100k, 550 ms at 1M. 6 KB/page.
* ``ivf``: IVF1024 with 8-bit scalar quantisation (IVF-SQ8), nprobe 24; the store re-ranks
  its candidates exactly with the catalog's vectors: 7.1 ms at 1M with recall@10 1.00 after
  the re-rank (110 s to build). 1.5 KB/page. Trained once, when a collection outgrows exact
  search; adds and removals after that are incremental and cheap.

(HNSW was measured too, by the benchmark on its own: it builds slowly and cannot delete in
place, so the store does not offer it.)
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np

#: faiss is a SWIG binding whose bundled type stubs reject calls it accepts (keyword search
#: parameters, downcast indexes): typed as Any here, the one module that uses it.
faiss: Any = _faiss

log = logging.getLogger(__name__)

#: Index kinds offered: "flat" is exact; "ivf" (IVF-SQ8) approximate, for large collections.
INDEX_KINDS = ("flat", "ivf")
IVF_NLIST = 1024
IVF_NPROBE = 24


def set_threads(n: int | None) -> None:
    """Limit FAISS's OpenMP threads (None keeps its default)."""
    if n:
        faiss.omp_set_num_threads(int(n))


class VectorIndex:
    """Inner-product search over unit vectors keyed by int64 page ids."""

    #: The object faiss.read_index returned, kept alive while ``_index`` (a downcast view
    #: of it) is in use.
    _raw: Any = None
    #: Vectors a flat index holds without reallocating, as far as :meth:`reserve` knows.
    _room: int = 0

    def __init__(
        self,
        dim: int,
        *,
        kind: str = "flat",
        nlist: int = IVF_NLIST,
        nprobe: int = IVF_NPROBE,
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
        self.dim = int(dim)
        self.kind = kind
        if kind == "ivf":
            # Ids live in the IVF lists themselves (an IDMap over IVF cannot remove safely);
            # a hash-table direct map makes reconstruct(id) and remove_ids(id) work.
            self._quantizer = faiss.IndexFlatIP(self.dim)
            ivf = faiss.IndexIVFScalarQuantizer(
                self._quantizer,
                self.dim,
                int(nlist),
                faiss.ScalarQuantizer.QT_8bit,
                faiss.METRIC_INNER_PRODUCT,
            )
            ivf.nprobe = int(nprobe)
            self._index = ivf
            return
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    # -- persistence -------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        """Read an index written by :meth:`save` (``RuntimeError``/``OSError`` if unreadable)."""
        raw = faiss.read_index(str(path))  # already of its concrete type in faiss >= 1.7
        index = (
            raw
            if isinstance(raw, faiss.IndexIDMap2 | faiss.IndexIVF)
            else (faiss.downcast_index(raw))
        )
        self = cls.__new__(cls)
        self._raw = raw  # owns the C++ object: keep it alive as long as the wrapper
        self._index = index
        self.dim = index.d
        if isinstance(index, faiss.IndexIVF):
            self.kind = "ivf"
            return self
        base = faiss.downcast_index(index.index)
        if not isinstance(base, faiss.IndexFlatIP):
            raise RuntimeError(f"{path}: not a PageLens vector index ({type(base).__name__})")
        self.kind = "flat"
        return self

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def train(self, sample: np.ndarray) -> None:
        """Fit the IVF centroids and quantiser ranges (no-op for other kinds)."""
        if self.kind != "ivf":
            return
        x = np.ascontiguousarray(sample, dtype=np.float32).reshape(-1, self.dim)
        ivf = self._index
        if len(x) < ivf.nlist:  # too few points for the lists asked: use fewer lists
            raise ValueError(f"IVF needs at least {ivf.nlist} training vectors, got {len(x)}")
        ivf.train(x)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)

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
        """All stored ids (int64)."""
        if self.kind == "ivf":
            invlists = self._index.invlists
            parts = [
                faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                for i in range(self._index.nlist)
                if invlists.list_size(i)
            ]
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def reserve(self, n: int) -> bool:
        """Make room for ``n`` vectors in all (flat kind; False for IVF, whose lists grow
        on their own), so that adding up to that many never reallocates.

        Why: a flat index keeps its vectors in one ``std::vector``, which grows by doubling:
        at each growth the old and the new buffer are both alive while one is copied into
        the other, a moment at which the vectors take twice their room. A long PDF embedded
        batch by batch crosses that moment at 1,024 pages, 2,048, ... (measured: the peak
        RSS of a 2,000-page run jumped by 5.6 MiB at page 1,032). Growing once, to the size
        the collection will have, takes the vectors' room at once and never twice. The
        room is zero-filled (``std::vector`` has no reserve in FAISS's bindings, so this
        resizes up and back: the capacity stays), so it costs its memory at once.
        """
        if self.kind != "flat":
            return False
        flat = faiss.downcast_index(self._index.index)
        size = int(flat.ntotal) * int(flat.code_size)
        want = int(n) * int(flat.code_size)
        if want > size:
            flat.codes.resize(want)
            flat.codes.resize(size)
        self._room = max(self._room, int(n))
        return True

    @property
    def room(self) -> int:
        """How many vectors fit without a reallocation that :meth:`reserve` could have
        avoided: what was reserved for a flat index (0 if nothing), unbounded for IVF."""
        return self._room if self.kind == "flat" else sys.maxsize

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
        if self.kind == "ivf":  # the hash-table direct map removes only by explicit array
            ids_arr = np.ascontiguousarray(ids_arr)
            selector = faiss.IDSelectorArray(len(ids_arr), faiss.swig_ptr(ids_arr))
            return int(self._index.remove_ids(selector))
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
            # Score a small subset directly: reconstructing a few thousand vectors is cheap
            # and needs no probing (an IVF selector only sees the lists it probes).
            vecs = np.stack([self._index.reconstruct(int(i)) for i in allowed])
            sims = q @ vecs.T
            kk = min(k, len(allowed))
            order = np.argsort(-sims, axis=1)[:, :kk]
            return np.take_along_axis(sims, order, axis=1), allowed[order]
        selector = faiss.IDSelectorBatch(allowed)
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self._index.nprobe)
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self._index.search(q, k, params=params)
        return scores, ids

    def reconstruct(self, page_id: int) -> np.ndarray:
        return self._index.reconstruct(int(page_id))
