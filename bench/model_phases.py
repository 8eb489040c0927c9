"""The model phases (A, A2, B, C, D of bench/bench.py's docstring): the float32 recipe and
its reference vectors, the text-query weight candidates, int8 dynamic quantisation, the
exact path in the chosen dtype and, opt-in, its torch.compile'd blocks; each builds the
model afresh, so at most one full model is in memory."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import agreement, log, rounded, topk_overlap
from bench.corpus import QUERIES, corpus_texts, query_texts
from bench.machine import RssSampler
from bench.model_build import build
from bench.page_phase import embed_pages
from bench.query_phase import query_index, query_latency, query_weights_phase

if TYPE_CHECKING:
    from bench.bench import BenchConfig


@dataclass
class _Run:
    """What the model phases share: the inputs, the report section they fill and the
    reference vectors phase A leaves for the others to compare with."""

    cfg: BenchConfig
    report: dict
    peak: dict
    images: list
    queries: list[str]
    corpus: list[str]
    rank_queries: list[str]
    section: dict[str, Any]
    ref: dict[int, np.ndarray] = field(default_factory=dict)
    ref_text: dict[str, np.ndarray] = field(default_factory=dict)


def run_model(cfg: BenchConfig, report: dict, peak: dict, images: list, texts: list[str]) -> None:
    from indexer.model.gme.loading import resolve_dtype

    dtype = str(resolve_dtype(cfg.dtype, cfg.device)).removeprefix("torch.")
    on_cpu = cfg.device == "cpu"
    section: dict[str, Any] = {"dtype": dtype, "batch_size": cfg.batch_size, "phases": {}}
    if cfg.depth:
        section["depth"] = {
            "vision_blocks": cfg.depth[0],
            "decoder_layers": cfg.depth[1],
            "note": "cut from 32 vision blocks + 28 decoder layers at full width (--depth): "
            "per-layer shapes, speeds and ratios as the full model; absolute s/page are not",
        }
    report["model"] = section
    run = _Run(
        cfg,
        report,
        peak,
        images,
        queries=query_texts(cfg.queries),
        corpus=corpus_texts(texts, cfg.corpus),
        rank_queries=QUERIES[:8],  # the retrieval check: 8 queries, whatever --queries is
        section=section,
    )
    if not (cfg.skip_baseline and (cfg.skip_int8 or not on_cpu)):
        emb, idx = _recipe_phase(run)
        if cfg.query_candidates and on_cpu:
            _query_weights_phase(run, emb)
        if not cfg.skip_int8 and on_cpu:
            _int8_phase(run, emb, idx)
        del emb, idx
        gc.collect()
    _exact_phase(run, dtype)
    _speedups(section)


def _recipe_phase(run: _Run) -> tuple[Any, Any]:
    """A: float32 one page at a time (the recipe) + reference vectors; returns the embedder
    and the query index for the phases that reuse them."""
    cfg, section = run.cfg, run.section
    log("phase A: float32 recipe, one page at a time")
    t = time.perf_counter()
    emb = build(cfg, "float32", batch_size=1)
    # the recipe runs transformers' own vision forward, not indexer.page_kernels'
    from indexer.model.gme import page_kernels as fast_kernels

    fast_kernels.uninstall(emb.vision_model)
    emb.page_kernels = []
    section["build_s_float32"] = rounded(time.perf_counter() - t, 1)
    section["model_id"] = emb.model_id
    section["parameters"] = int(sum(p.numel() for p in emb.model.parameters()))
    with RssSampler() as rss:
        pass
    section["model_rss_mib_float32"] = rss.as_dict()["rss_start_mib"]
    phase: dict[str, Any] = {
        "dtype": "float32",
        "batch_size": 1,
        "prefix_cache": False,
        "budgets": {},
    }
    base_pages = run.images[: max(1, cfg.baseline_pages)]
    for tokens in cfg.budgets:
        vecs, stats = embed_pages(
            emb, base_pages, tokens, one_at_a_time=True, peak=run.peak, around=cfg.around
        )
        run.ref[tokens] = vecs
        phase["budgets"][str(tokens)] = stats
        log(f"  A {tokens} tokens: {stats['s_per_page']} s/page")
    idx = query_index(run.ref[cfg.budgets[0]], cfg.query_collection, cfg.seed + 1)
    phase["query"] = query_latency(emb, idx, run.queries, cached=False)
    log(f"  A query p50 {phase['query']['p50_s']} s")
    emb.prefix_cache = False
    emb.set_query_weights("exact")
    run.ref_text["corpus"] = emb.embed_documents(texts=run.corpus)
    run.ref_text["queries"] = emb.embed_queries(run.rank_queries)
    emb.prefix_cache = True
    section["phases"]["baseline_float32"] = phase
    return emb, idx


def _query_weights_phase(run: _Run, emb: Any) -> None:
    """A2: text queries with int8 weight-only decoder candidates (activations precise)."""
    cfg = run.cfg
    log(f"phase A2: int8 weight-only text queries {cfg.query_candidates}")
    run.section["query_weights"] = query_weights_phase(
        emb,
        run.queries,
        run.rank_queries,
        run.ref_text,
        candidates=cfg.query_candidates,
        bandwidth=run.report.get("memory_bandwidth"),
        reps=cfg.query_reps,
    )
    for name, c in run.section["query_weights"]["candidates"].items():
        log(
            f"  A2 {name}: p50 {c['p50_s']} s vs exact {c['exact_p50_s_same_run']} s, "
            f"cos min {c.get('agreement_vs_float32', {}).get('cosine_min')}, "
            f"top-10 {c.get('top10_overlap_vs_float32')}"
        )


def _int8_phase(run: _Run, emb: Any, idx: Any) -> None:
    """B: int8 dynamic quantisation of the same weights."""
    from indexer.model.gme.loading import quantize_embedder

    cfg, ref_text = run.cfg, run.ref_text
    log("phase B: int8 dynamic quantisation")
    quantize_embedder(emb, "int8")
    emb.batch_size = cfg.batch_size
    phase: dict[str, Any] = {
        "dtype": "int8",
        "batch_size": cfg.batch_size,
        "prefix_cache": True,
        "budgets": {},
    }
    base_pages = run.images[: max(1, cfg.baseline_pages)]
    for tokens in cfg.budgets:
        vecs, stats = embed_pages(emb, base_pages, tokens, one_at_a_time=False, peak=run.peak)
        stats["agreement_vs_float32"] = agreement(vecs, run.ref[tokens])
        phase["budgets"][str(tokens)] = stats
        log(f"  B {tokens} tokens: {stats['s_per_page']} s/page")
    phase["query"] = query_latency(emb, idx, run.queries, cached=True)
    c8 = emb.embed_documents(texts=run.corpus)
    q8 = emb.embed_queries(run.rank_queries)
    phase["text_agreement_vs_float32"] = agreement(c8, ref_text["corpus"])
    phase["top10_overlap_vs_float32"] = rounded(
        topk_overlap(q8, c8, ref_text["queries"], ref_text["corpus"], 10), 3
    )
    phase["corpus_passages"] = len(run.corpus)
    run.section["phases"]["int8"] = phase


def _exact_phase(run: _Run, dtype: str) -> None:
    """C: the exact path in the chosen dtype (then D, opt-in, on the same model)."""
    import torch

    cfg, section = run.cfg, run.section
    log(f"phase C: exact path, {dtype}, batch {cfg.batch_size}")
    t = time.perf_counter()
    emb = build(cfg, "float32", batch_size=cfg.batch_size)
    if dtype != "float32":  # same weights as phase A, rounded once
        emb.model.to(getattr(torch, dtype))
        emb.dtype = dtype
    section[f"build_s_{dtype}"] = rounded(time.perf_counter() - t, 1)
    section.setdefault("model_id", emb.model_id)
    gc.collect()
    with RssSampler() as rss:
        pass
    section[f"model_rss_mib_{dtype}"] = rss.as_dict()["rss_start_mib"]
    phase: dict[str, Any] = {
        "dtype": dtype,
        "batch_size": cfg.batch_size,
        "prefix_cache": True,
        "budgets": {},
    }
    page_vecs, eager_vecs = _exact_pages(run, emb, phase)
    idx = query_index(page_vecs, cfg.query_collection, cfg.seed + 1)
    _exact_queries(run, emb, idx, phase)
    section["phases"]["exact"] = phase
    if cfg.compile:
        _compiled_phase(run, emb, phase, eager_vecs)
    del emb, idx
    gc.collect()


def _exact_pages(
    run: _Run, emb: Any, phase: dict[str, Any]
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """C's pages at every budget, compared with the recipe's where it ran; the first
    budget's vectors (the query index's pages) and every budget's."""
    page_vecs = None
    eager_vecs = {}
    for tokens in run.cfg.budgets:
        vecs, stats = embed_pages(
            emb, run.images, tokens, one_at_a_time=False, peak=run.peak, around=run.cfg.around
        )
        eager_vecs[tokens] = vecs
        if tokens in run.ref:
            stats["agreement_vs_float32"] = agreement(vecs[: len(run.ref[tokens])], run.ref[tokens])
        phase["budgets"][str(tokens)] = stats
        page_vecs = vecs if page_vecs is None else page_vecs
        log(f"  C {tokens} tokens: {stats['s_per_page']} s/page")
    assert page_vecs is not None, "no --budgets"
    return page_vecs, eager_vecs


def _exact_queries(run: _Run, emb: Any, idx: Any, phase: dict[str, Any]) -> None:
    """C's text queries: latency with and without the prefix cache, and agreement."""
    phase["query_uncached"] = query_latency(emb, idx, run.queries, cached=False)
    phase["query"] = query_latency(emb, idx, run.queries, cached=True)
    if getattr(emb, "query_choice", None) is not None:
        phase["query_weights"] = emb.query_choice.as_dict()
    log(f"  C query p50 {phase['query']['p50_s']} s (uncached {phase['query_uncached']['p50_s']})")
    # Cached vs uncached prefix: the same vectors?
    emb.prefix_cache = False
    plain = emb.embed_queries(run.rank_queries)
    emb.prefix_cache = True
    cached = emb.embed_queries(run.rank_queries)
    phase["prefix_cache_agreement"] = agreement(cached, plain)
    if run.ref_text:
        ref_text = run.ref_text
        cd = emb.embed_documents(texts=run.corpus)
        phase["text_agreement_vs_float32"] = agreement(cd, ref_text["corpus"])
        phase["top10_overlap_vs_float32"] = rounded(
            topk_overlap(cached, cd, ref_text["queries"], ref_text["corpus"], 10), 3
        )


def _compiled_phase(
    run: _Run, emb: Any, exact: dict[str, Any], eager_vecs: dict[int, np.ndarray]
) -> None:
    """D (opt-in): the same model with torch.compile'd blocks (pagelens --compile)."""
    from indexer.model.gme.loading import compile_embedder

    cfg = run.cfg
    log("phase D: exact path with torch.compile")
    compile_embedder(emb)
    emb.max_image_tokens = cfg.budgets[0]
    t = time.perf_counter()
    emb.embed_images(run.images[:1])
    cphase: dict[str, Any] = {
        "dtype": exact["dtype"],
        "batch_size": cfg.batch_size,
        "compile_and_first_page_s": rounded(time.perf_counter() - t, 1),
        "budgets": {},
    }
    for tokens in cfg.budgets:
        vecs, stats = embed_pages(emb, run.images, tokens, one_at_a_time=False, peak=run.peak)
        stats["agreement_vs_eager"] = agreement(vecs, eager_vecs[tokens])
        stats["speedup_vs_eager"] = rounded(
            exact["budgets"][str(tokens)]["s_per_page"] / stats["s_per_page"], 2
        )
        cphase["budgets"][str(tokens)] = stats
        log(f"  D {tokens} tokens: {stats['s_per_page']} s/page")
    run.section["phases"]["compiled"] = cphase


def _speedups(section: dict[str, Any]) -> None:
    """Ratios against the recipe (per page, same pages at the same budget)."""
    base = section["phases"].get("baseline_float32")
    if not base:
        return
    for name in ("exact", "int8", "compiled"):
        ph = section["phases"].get(name)
        if not ph:
            continue
        ph["speedup_vs_baseline"] = {
            b: rounded(s["pages_per_s"] / base["budgets"][b]["pages_per_s"], 2)
            for b, s in ph["budgets"].items()
            if b in base["budgets"]
        }
