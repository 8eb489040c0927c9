"""Phase H (opt-in, ``--rerank-pages N``): seconds per reranked page.

The full-size Qwen3-VL-Reranker-2B architecture with random weights (same FLOPs and memory as
the real model; ``--size tiny`` for smoke tests), built in memory behind PageLens's
:class:`~indexer.model.rerank.qwen3vl.Qwen3VLReranker`, in the dtype PageLens loads it in on
this device (float32 on a CPU, bf16 on CUDA; ``--dtype`` overrides), at its default image
budget. The candidates are real pages: the test PDF rendered at PageLens's default settings
(what the store keeps), each with its text layer, scored against one text query in one
``score`` call, as ``pagelens search --rerank N`` does. ``retriever/rerank.py`` quotes the
CPU figure to warn before a CPU rerank starts.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import log, rounded
from bench.corpus import QUERIES, default_pdf, render
from bench.machine import ModuleTimer, RssSampler

if TYPE_CHECKING:
    from bench.bench import BenchConfig

#: Visual tokens (28x28 px each) PageLens renders a page at by default: RenderSettings().
RENDER_TOKENS = 1280


def _load() -> list[float]:
    return [round(os.getloadavg()[0], 2)] if hasattr(os, "getloadavg") else []


def _page_tokens(reranker: Any, query: Any, pages: list) -> tuple[list[int], list[int]]:
    """Per page: the visual tokens its image becomes, and the pair's sequence length."""
    from indexer.model.rerank import recipe

    visual = []
    for page in pages:
        img = recipe.prepare_image(
            page.image, min_pixels=reranker.min_pixels, max_pixels=reranker.max_pixels
        )
        visual.append(img.width * img.height // (recipe.IMAGE_FACTOR * recipe.IMAGE_FACTOR))
    return visual, [reranker.count_tokens(query, page) for page in pages]


def build_reranker(cfg: BenchConfig) -> tuple[Any, str, float]:
    """The random reranker of ``cfg.size`` on ``cfg.device``: (reranker, dtype, build s)."""
    import torch

    from indexer.model.rerank.qwen3vl_loading import _dtype
    from indexer.model.rerank.random import random_reranker

    dtype = _dtype(cfg.dtype, cfg.device)  # what load_reranker picks here
    t = time.perf_counter()
    reranker = random_reranker(cfg.size, seed=cfg.seed, device=cfg.device, dtype=dtype)
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    return reranker, str(dtype).removeprefix("torch."), time.perf_counter() - t


def _warm_up(reranker: Any, query: Any, page: Any) -> None:
    """One small pair first (kernels chosen, first-call allocations), budget restored."""
    from indexer.model.rerank import recipe

    budget = reranker.min_pixels, reranker.max_pixels
    reranker.min_pixels, reranker.max_pixels = recipe.pixel_budget(4, 64)
    try:
        reranker.score(query, [page])
    finally:
        reranker.min_pixels, reranker.max_pixels = budget


def run_rerank(cfg: BenchConfig, report: dict, workdir: Path) -> None:
    """Fill ``report["rerank"]``: seconds per reranked page and what they depend on."""
    import torch

    from indexer.model.rerank import RerankPage, RerankQuery

    n = cfg.rerank_pages
    log(f"phase H: reranking {n} pages, {cfg.size} Qwen3-VL reranker, random weights")
    pdf = Path(cfg.pdf) if cfg.pdf else default_pdf(n, workdir)
    images, texts, rendering = render(pdf, n, RENDER_TOKENS)
    pages = [RerankPage(image=i, text=t) for i, t in zip(images, texts, strict=True)]
    query = RerankQuery(text=QUERIES[0])
    reranker, dtype, build_s = build_reranker(cfg)
    visual, sequence = _page_tokens(reranker, query, pages)
    _warm_up(reranker, query, pages[0])
    inner = reranker.model.model
    timer = ModuleTimer({"vision": inner.visual, "decoder": inner.language_model}, cfg.device)
    timer.seconds = {k: 0.0 for k in timer.seconds}
    load = _load()
    with RssSampler() as rss:
        t = time.perf_counter()
        scores = reranker.score(query, pages)
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
    timer.close()
    load += _load()
    report["rerank"] = {
        "model_id": reranker.model_id,
        "architecture": "Qwen3-VL-Reranker-2B (Qwen3VLForConditionalGeneration), random weights",
        "size": cfg.size,
        "parameters": int(sum(p.numel() for p in reranker.model.parameters())),
        "device": str(reranker.device),
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "batch_size": reranker.batch_size,
        "build_s": rounded(build_s, 1),
        "image_budget_tokens": {
            "min": reranker.min_pixels // 1024,
            "max": reranker.max_pixels // 1024,
            "token_px": 32,
        },
        "rendering": {**rendering, "settings": "PageLens default (RenderSettings())"},
        "query": query.text,
        "pages": len(pages),
        "visual_tokens_per_page": visual,
        "visual_tokens_mean": rounded(float(np.mean(visual)), 1),
        "sequence_tokens_per_page": sequence,
        "sequence_tokens_mean": rounded(float(np.mean(sequence)), 1),
        "seconds": rounded(dt, 3),
        "s_per_page": rounded(dt / len(pages), 3),
        "pages_per_s": rounded(len(pages) / dt, 5),
        "vision_s": rounded(timer.seconds["vision"], 3),
        "decoder_s": rounded(timer.seconds["decoder"], 3),
        "load_avg_1m": load,  # before and after: was the machine shared?
        "scores": [rounded(float(s), 6) for s in scores],
        **rss.as_dict(),
    }
    log(f"  H {report['rerank']['s_per_page']} s/page ({dtype}, {len(pages)} pages)")
    del reranker, inner, timer
    gc.collect()


def summary_lines(report: dict) -> list[str]:
    """The summary's reranking line, if the phase ran."""
    r = report.get("rerank")
    if not r:
        return []
    return [
        f"  rerank ({r['size']} Qwen3-VL, {r['dtype']}, {r['device']}): {r['s_per_page']} s/page "
        f"over {r['pages']} pages of {r['sequence_tokens_mean']:.0f} tokens "
        f"({r['visual_tokens_mean']:.0f} visual), peak RSS {r['rss_peak_mib']} MiB"
    ]
