"""Text queries measured: latency with and without the prompt-prefix cache, the
weight-only query candidates against the exact path (speed, agreement, memory floor), what
``auto`` chooses and what deciding costs, and the ``--queries-only`` run of all that."""

from __future__ import annotations

import gc
import tempfile
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import agreement, log, pct, rounded, topk_overlap
from bench.corpus import QUERIES, corpus_texts, query_texts
from bench.machine import decoder_weight_bytes
from bench.model_build import build_text_only
from bench.vectors import clustered_vectors

if TYPE_CHECKING:
    from bench.bench import BenchConfig


def query_latency(emb: Any, index: Any, queries: list[str], *, cached: bool) -> dict:
    emb.prefix_cache = cached
    emb.embed_queries(["warm-up query"])  # builds the prefix cache
    embed_s, total_s = [], []
    for q in queries:
        t0 = time.perf_counter()
        vec = emb.embed_queries([q])
        t1 = time.perf_counter()
        index.search(vec, 10)
        t2 = time.perf_counter()
        embed_s.append(t1 - t0)
        total_s.append(t2 - t0)
    emb.prefix_cache = True
    return {
        "prefix_cache": cached,
        "queries": len(queries),
        "p50_s": rounded(pct(total_s, 50)),
        "p95_s": rounded(pct(total_s, 95)),
        "embed_p50_s": rounded(pct(embed_s, 50)),
        "search_p50_ms": rounded(1000 * (pct(total_s, 50) - pct(embed_s, 50)), 3),
        "collection": len(index),
    }


def query_index(page_vecs: np.ndarray, n: int, seed: int):
    """A flat index: the benchmark's page vectors plus clustered synthetic filler up to n."""
    from indexer.stores.local.vector_index import VectorIndex

    dim = page_vecs.shape[1]
    idx = VectorIndex(dim, kind="flat")
    idx.add(range(len(page_vecs)), page_vecs)
    extra = max(0, n - len(page_vecs))
    if extra:
        data, _ = clustered_vectors(extra, 0, dim, seed=seed)
        idx.add(range(len(page_vecs), len(page_vecs) + extra), data)
    return idx


#: What each text-query candidate stores and which kernel multiplies with it (report rows).
CANDIDATE_WEIGHTS = {
    "int8-bf16": "int8, one scale per output channel",
    "int8-fp32": "int8, one scale per output channel",
    "int8x2-bf16": "two int8 levels (~15 bits), per-channel scales",
    "bf16": "bfloat16",
    "int8+int4-bf16": "int8 per output channel + int4 level for its error (groups of 128 "
    "inputs), ~1.5 bytes",
    "int8mix-bf16": "int8 per output channel; two int8 levels in the first decoder layers "
    "(indexer.model.runtime.lowp.MIX_PRECISE_LAYERS), the most sensitive",
    "fp16": "float16",
}
CANDIDATE_KERNELS = {
    "int8-bf16": "aten._weight_int8pack_mm",
    "int8-fp32": "aten._weight_int8pack_mm",
    "int8x2-bf16": "aten._weight_int8pack_mm",
    "bf16": "F.linear (bf16)",
    "int8+int4-bf16": "aten._weight_int8pack_mm + aten._weight_int4pack_mm_for_cpu",
    "int8mix-bf16": "aten._weight_int8pack_mm",
    "fp16": "fbgemm FP16 GEMM (quantized.linear_dynamic_fp16)",
}


def query_weights_phase(
    emb: Any,
    queries: list[str],
    rank_queries: list[str],
    ref_text: dict[str, np.ndarray],
    *,
    candidates: list[str],
    bandwidth: dict | None,
    reps: int,
) -> dict:
    """Text queries with int8 weight-only decoder candidates vs the exact path, alternating.

    Each query runs exact then with the candidate's int8 weights, in turn (ratios measured
    in one run on a shared machine); agreement is the cosine of the candidate's query vectors
    to the exact float32 ones and the top-10 overlap of their rankings of the exact corpus.
    """
    from indexer.model.runtime.lowp import QueryWeights, act_dtype

    emb.set_query_weights("exact")
    emb.prefix_cache = True
    emb.embed_queries(["warm-up query"])
    # the best repetition: a floor is what the memory system allows, not what a shared
    # machine happened to give
    gbs = (bandwidth or {}).get("gb_per_s_best")
    fp32_bytes = decoder_weight_bytes(emb)
    out: dict[str, Any] = {
        "method": "prefix-cached text queries, one at a time; exact and candidate alternate "
        "per query; floor = decoder weight bytes / best measured read bandwidth",
        "decoder_weight_bytes_exact": fp32_bytes,
        "floor_s_exact": rounded(fp32_bytes / gbs / 1e9, 6) if gbs else None,
        "candidates": {},
    }
    for name in candidates:
        log(f"text-query weights: {name}")
        t = time.perf_counter()
        w = QueryWeights(emb.text_model, name)
        quant_s = time.perf_counter() - t
        try:
            with w.active():
                emb.embed_queries(["warm-up query"])
            exact_s, cand_s = [], []
            for q in (queries * reps)[: max(1, len(queries) * reps)]:
                t0 = time.perf_counter()
                emb.embed_queries([q])
                t1 = time.perf_counter()
                with w.active():
                    emb.embed_queries([q])
                t2 = time.perf_counter()
                exact_s.append(t1 - t0)
                cand_s.append(t2 - t1)
            with w.active():
                qv = emb.embed_queries(rank_queries)
            entry: dict[str, Any] = {
                "weights": CANDIDATE_WEIGHTS[name],
                "activations": str(act_dtype(name)).removeprefix("torch."),
                "kernel": CANDIDATE_KERNELS[name],
                "quantise_s": rounded(quant_s, 2),
                "queries_timed": len(cand_s),
                "p50_s": rounded(pct(cand_s, 50)),
                "p95_s": rounded(pct(cand_s, 95)),
                "exact_p50_s_same_run": rounded(pct(exact_s, 50)),
                "speedup_vs_exact": rounded(pct(exact_s, 50) / pct(cand_s, 50), 2),
                "decoder_weight_bytes": w.bytes,
                "floor_s": rounded(w.bytes / gbs / 1e9, 6) if gbs else None,
            }
            if ref_text:
                entry["agreement_vs_float32"] = agreement(qv, ref_text["queries"])
                entry["top10_overlap_vs_float32"] = rounded(
                    topk_overlap(
                        qv, ref_text["corpus"], ref_text["queries"], ref_text["corpus"], 10
                    ),
                    3,
                )
            out["candidates"][name] = entry
        finally:
            w.remove()
    out.update(auto_decision_phase(emb))
    return out


def auto_decision_phase(emb: Any) -> dict[str, Any]:
    """What ``auto`` chooses here and what deciding costs: measured (``calibration_s``),
    then as a later process meets it, from the decision cache (``cached_decision_s`` to
    read it, ``prepare_s`` to build the kept copy). The cache is a temporary folder: the
    bench always measures, and never reads or writes the user's decisions."""
    from indexer.model.gme.query_weights_cache import DecisionCache

    log("text-query weights: what auto chooses here (measured, then read back from a cache)")
    previous = emb.decision_cache
    try:
        with tempfile.TemporaryDirectory(prefix="pagelens-bench-decisions-") as tmp:
            emb.decision_cache = DecisionCache(tmp)
            measured = emb.set_query_weights("auto")
            cached = emb.set_query_weights("auto")  # the next process: same key, from the file
    finally:
        emb.decision_cache = previous
    return {
        "auto_choice": measured.as_dict(),
        "auto_choice_from_cache": cached.as_dict(),
        "calibration_s": measured.timings.get("calibration_s"),
        "cached_decision_s": cached.timings.get("cached_decision_s"),
        "prepare_s": cached.timings.get("prepare_s", measured.timings.get("prepare_s")),
        "decision_cache": "temporary folder: measured once, then read back (user cache untouched)",
    }


def run_queries_only(cfg: BenchConfig, report: dict, texts: list[str]) -> None:
    """Text queries only (``--queries-only``): exact float32 latency (with and without the
    prompt-prefix cache) and the query-weight candidates against it, no pages."""
    queries = query_texts(cfg.queries)
    corpus = corpus_texts(texts, cfg.corpus)
    rank_queries = QUERIES[:8]
    t = time.perf_counter()
    log("queries only: building the full-size decoder (random weights, float32)")
    emb = build_text_only(cfg)
    log("exact float32 reference vectors and latency")
    section: dict[str, Any] = {
        "dtype": "float32",
        "model_id": emb.model_id,
        "text_only": "decoder at full size, vision tower cut to one block (unused by queries)",
        "build_s_float32": rounded(time.perf_counter() - t, 1),
        "phases": {},
    }
    report["model"] = section
    emb.prefix_cache = False
    ref_text = {
        "corpus": emb.embed_documents(texts=corpus),
        "queries": emb.embed_queries(rank_queries),
    }
    emb.prefix_cache = True
    idx = query_index(ref_text["corpus"], cfg.query_collection, cfg.seed + 1)
    gbs = (report.get("memory_bandwidth") or {}).get("gb_per_s_best")
    section["phases"]["exact_float32"] = {
        "dtype": "float32",
        "kernel": "F.linear float32 (MKL sgemm)",
        "budgets": {},
        "query_uncached": query_latency(emb, idx, queries, cached=False),
        "query": query_latency(emb, idx, queries, cached=True),
        # beside the figure: what reading the decoder's weights once costs at this bandwidth
        "floor_s": rounded(decoder_weight_bytes(emb) / gbs / 1e9, 6) if gbs else None,
    }
    section["query_weights"] = query_weights_phase(
        emb,
        queries,
        rank_queries,
        ref_text,
        candidates=cfg.query_candidates,
        bandwidth=report.get("memory_bandwidth"),
        reps=cfg.query_reps,
    )
    section["corpus_passages"] = len(corpus)
    del emb, idx
    gc.collect()
