"""Phase D: vector search on clustered synthetic unit vectors: exact (flat), HNSW, IVF-SQ8
and the store's own index (IVF-SQ8 + exact re-rank), recall@10 against exact search,
single-query latency, build time and memory per vector. Imports faiss and
indexer.stores.local.vector_index."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import log, pct, rounded

if TYPE_CHECKING:
    from bench.bench import BenchConfig

#: A search over a batch of query rows: (scores or None, ids of the top 10 per row).
Search = Callable[[np.ndarray], tuple[Any, np.ndarray]]
DIM = 1536
QUERY_COUNT = 200


def _faiss() -> Any:
    """faiss, imported when a phase needs it and typed Any: a SWIG binding whose bundled
    stubs reject calls it accepts (as indexer/stores/local/vector_index.py says)."""
    import faiss

    return faiss


def clustered_vectors(
    n: int, nq: int, dim: int, *, seed: int = 0, centres: int = 1000, noise: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` data and ``nq`` query unit vectors around ``centres`` random unit centres.

    Each point is a centre plus isotropic Gaussian noise of total norm ~``noise``
    (per-coordinate sigma ``noise/sqrt(dim)``), renormalised; queries are drawn the same way
    (from the same centres, fresh noise). Uniform random vectors in 1536-D are nearly
    equidistant, which makes any ANN index look broken; clustered ones behave like real
    embeddings (topics).
    """
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    sigma = np.float32(noise / np.sqrt(dim))

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for s in range(0, count, 65536):
            m = min(65536, count - s)
            x = rng.standard_normal((m, dim), dtype=np.float32)
            x *= sigma
            x += c[rng.integers(0, centres, m)]
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s : s + m] = x
        return out

    return draw(n), draw(nq)


def time_single(search: Search, queries: np.ndarray, reps: int) -> list[float]:
    times = []
    for i in range(reps):
        q = queries[i % len(queries) : i % len(queries) + 1]
        t = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - t)
    return times


def run_vectors(cfg: BenchConfig, report: dict) -> None:
    section: dict[str, Any] = {
        "dim": DIM,
        "method": "clustered: 1000 Gaussian centres on the unit sphere; point = centre + "
        "N(0, 0.6^2/dim) noise per coordinate, renormalised; 200 queries drawn the "
        "same way; recall@10 = |ANN top-10 & exact top-10| / 10, mean over queries; "
        "latency = one query per call, single process, FAISS threads as reported",
        "hnsw": {
            "M": cfg.hnsw_m,
            "efConstruction": cfg.hnsw_ef_construction,
            "efSearch": cfg.hnsw_ef_search,
        },
        "ivf": {"kind": "IVF-SQ8", "nprobe": cfg.ivf_nprobe},
        "sizes": {},
    }
    report["vectors"] = section
    for n in cfg.vectors:
        log(f"vectors: {n}")
        section["sizes"][str(n)] = _size_row(cfg, n)
        gc.collect()


def _size_row(cfg: BenchConfig, n: int) -> dict[str, Any]:
    """Every index kind of ``cfg.index_kinds`` on ``n`` vectors."""
    faiss = _faiss()
    data, queries = clustered_vectors(n, QUERY_COUNT, DIM, seed=cfg.seed + n)
    # Exact ground truth (batched flat search).
    flat = faiss.IndexFlatIP(DIM)
    flat.add(data)
    _, truth = flat.search(queries, 10)
    row: dict[str, Any] = {}
    for kind in cfg.index_kinds:
        if kind == "hnsw" and n > cfg.hnsw_max_n:
            row[kind] = {"skipped": f"n > --hnsw-max-n {cfg.hnsw_max_n} (build time)"}
            continue
        row[kind] = _measure(cfg, kind, flat, data, queries, truth)
        gc.collect()
    return row


def _measure(
    cfg: BenchConfig, kind: str, flat: Any, data: np.ndarray, queries: np.ndarray, truth: Any
) -> dict[str, Any]:
    """Build one index kind over ``data``; its recall@10 and single-query latency."""
    n = len(data)
    if kind == "flat":
        entry: dict[str, Any] = {}
        search, build, bytes_per_vec = _searcher(flat, None), 0.0, DIM * 4
    elif kind == "hnsw":
        search, build, bytes_per_vec, entry = _hnsw(cfg, data)
    elif kind == "ivf":
        search, build, bytes_per_vec, entry = _ivf(cfg, data)
    elif kind == "store":
        search, build, bytes_per_vec, entry = _store(data)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    _, found = search(queries)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    reps = 20 if kind == "flat" and n >= 500_000 else 100
    times = time_single(search, queries, reps)
    entry.update(
        {
            "recall_at_10": rounded(float(recall), 4),
            "p50_ms": rounded(1000 * pct(times, 50), 3),
            "p95_ms": rounded(1000 * pct(times, 95), 3),
            "build_s": rounded(build, 2),
            "bytes_per_vector": bytes_per_vec,
            "memory_mib": rounded(n * bytes_per_vec / 2**20, 1),
        }
    )
    return entry


#: What each builder returns: the search, its build seconds, bytes per vector, report extras.
Built = tuple[Search, float, int, dict[str, Any]]


def _searcher(index: Any, params: Any) -> Search:
    def search(q: np.ndarray) -> tuple[Any, np.ndarray]:
        return index.search(q, 10, params=params) if params else index.search(q, 10)

    return search


def _hnsw(cfg: BenchConfig, data: np.ndarray) -> Built:
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(DIM, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = cfg.hnsw_ef_construction
    t = time.perf_counter()
    index.add(data)
    build = time.perf_counter() - t
    params = faiss.SearchParametersHNSW(efSearch=cfg.hnsw_ef_search)
    return _searcher(index, params), build, DIM * 4 + cfg.hnsw_m * 2 * 4, {}


def _ivf(cfg: BenchConfig, data: np.ndarray) -> Built:
    faiss = _faiss()
    n = len(data)
    nlist = max(16, min(1024, int(4 * np.sqrt(n))))
    quant = faiss.IndexFlatIP(DIM)
    index = faiss.IndexIVFScalarQuantizer(
        quant, DIM, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    t = time.perf_counter()
    train = data[np.random.default_rng(1).choice(n, min(n, 30 * nlist), replace=False)]
    index.train(train)
    index.add(data)
    build = time.perf_counter() - t
    params = faiss.SearchParametersIVF(nprobe=cfg.ivf_nprobe)
    return _searcher(index, params), build, DIM + 8, {"nlist": nlist}


def _store(data: np.ndarray) -> Built:
    """What a collection actually uses past APPROX_THRESHOLD: the store's own
    VectorIndex("ivf") (IVF1024-SQ8, nprobe 24), then an exact re-rank of the top
    max(4k, 50) candidates (the store reads those vectors from SQLite)."""
    from indexer.stores.local.vector_index import VectorIndex

    n = len(data)
    t = time.perf_counter()
    vindex = VectorIndex(DIM, kind="ivf")
    rng = np.random.default_rng(1)
    vindex.train(data[np.sort(rng.choice(n, min(n, 100_000), replace=False))])
    for start in range(0, n, 65536):
        vindex.add(range(start, min(n, start + 65536)), data[start : start + 65536])
    build = time.perf_counter() - t

    def store_search(q: np.ndarray) -> tuple[Any, np.ndarray]:
        out = []
        for row in q:
            _, cand = vindex.search(row[None], 50)
            cand = cand[0][cand[0] >= 0]
            exact = data[cand] @ row
            out.append(cand[np.argsort(-exact)[:10]])
        return None, np.array(out)

    extras = {"nlist": 1024, "nprobe": 24, "rerank_candidates": 50}
    bytes_per_vec = DIM + 8 + 8  # SQ8 codes + id + hash-table entry
    return store_search, build, bytes_per_vec, extras
