"""Bench section ``stores``: the local engine (SQLite + FAISS) next to Milvus, through the store
interface PageLens itself uses (``open_collection``, ``add_pages``, ``set_vectors``, ``search``).

Milvus here is **milvus-lite**'s gRPC server on a loopback port (started by the bench, reached
with pymilvus over the network): Milvus's development engine, a single Python process. Its
numbers are a floor, not what Milvus Standalone/Distributed (C++/Go, multi-threaded segment
search, SIMD HNSW/DiskANN/GPU indexes, horizontal query nodes) deliver.

Per engine: insert rate (pages/s, row + image + vector, batches of ``BATCH``), single-query
search latency (p50/p95 over the queries), and recall@10 against exact search on the same
vectors (structured synthetic vectors, see :func:`bench.vectors.clustered_vectors`).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

BATCH = 1000
DIM = 1536


def _engine(store: Any, vecs: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    n = len(vecs)
    tiny = Image.new("RGB", (8, 8), (200, 200, 200))
    pid = np.empty(n, np.int64)  # page id of the i-th vector
    started = time.perf_counter()
    with store.writing():
        store.bind_model("bench/synthetic", DIM)
        for d, start in enumerate(range(0, n, BATCH)):
            chunk = vecs[start : start + BATCH]
            sha = hashlib.sha256(f"bench-doc-{d}".encode()).hexdigest()
            doc = store.add_document(
                name=f"doc{d}.pdf", path=f"/bench/doc{d}.pdf", sha256=sha, kind="pdf",
                page_count=len(chunk),
            )  # fmt: skip
            pages = [(i + 1, f"page {start + i} of the benchmark", tiny) for i in range(len(chunk))]
            ids = store.add_pages(doc.id, pages)
            store.set_vectors(ids, chunk)
            store.mark_ready(doc.id)
            pid[start : start + len(chunk)] = ids
        store.flush()  # seal into indexed segments, as a bulk load ends
    insert_s = time.perf_counter() - started
    index_of = {int(p): i for i, p in enumerate(pid)}
    store.search(queries[0], 10)  # warm (index load)
    times, recall = [], []
    for q, want in zip(queries, truth, strict=True):
        t = time.perf_counter()
        hits = store.search(q, 10)
        times.append(time.perf_counter() - t)
        got = {index_of[h] for h, _ in hits}
        recall.append(len(got & set(want.tolist())) / 10)
    times.sort()
    return {
        "pages": n,
        "insert_s": round(insert_s, 2),
        "insert_pages_per_s": round(n / insert_s, 1),
        "query_p50_ms": round(1000 * times[len(times) // 2], 2),
        "query_p95_ms": round(1000 * times[int(len(times) * 0.95) - 1], 2),
        "recall_at_10": round(float(np.mean(recall)), 4),
        "queries": len(queries),
    }


def run_stores(
    n: int, *, queries: int = 100, engines: tuple[str, ...] = ("local", "milvus")
) -> dict:
    """The ``stores`` section of a bench report (see module docs)."""
    from bench.vectors import clustered_vectors
    from indexer.stores import open_collection

    vecs, qs = clustered_vectors(n, queries, DIM, seed=7)
    truth = np.argsort(-(qs @ vecs.T), axis=1)[:, :10]
    section: dict[str, Any] = {
        "dim": DIM,
        "method": "clustered synthetic unit vectors (bench.clustered_vectors, seed 7); one "
        f"document per {BATCH} pages, each page an 8x8 PNG + short text + vector, stored with "
        "add_pages + set_vectors (the indexer's calls); search = store.search(q, 10), one "
        "query per call from one client; recall@10 vs exact inner-product top-10",
        "engines": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        if "local" in engines:
            store = open_collection(str(Path(tmp) / "local"))
            section["engines"]["local"] = {
                "engine": "local folder: SQLite + FAISS (flat to 50k pages, then IVF-SQ8 + "
                "exact re-rank)",
                **_engine(store, vecs, qs, truth),
            }
            store.close()
        if "milvus" in engines:
            from tests.support.milvus_server import MilvusServer

            server = MilvusServer(Path(tmp) / "milvus").start()
            try:
                store = open_collection(f"milvus://{server.address}/bench")
                from indexer.stores.milvus.schema import DENSE_INDEX

                section["engines"]["milvus"] = {
                    "engine": "milvus-lite gRPC server (development engine: a floor), "
                    f"index {DENSE_INDEX['index_type']} {DENSE_INDEX['params']}, metric IP, "
                    "ef=max(64,k)",
                    **_engine(store, vecs, qs, truth),
                }
                store.close()
            finally:
                server.stop()
    return section
