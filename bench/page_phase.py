"""Page embedding measured: one budget's pages through an embedder, with time per model
part, achieved GFLOP/s against the matmul peak, peak RSS and the kernels used."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from bench.common import rounded
from bench.flops import page_flops
from bench.machine import ModuleTimer, RssSampler, matmul_peak


def set_budget(emb: Any, tokens: int) -> None:
    from indexer.model.gme.recipe import MIN_IMAGE_TOKENS

    emb.max_image_tokens = int(tokens)
    emb.min_image_tokens = min(MIN_IMAGE_TOKENS, int(tokens))


def page_kernels(emb: Any) -> dict:
    """Which kernels a page goes through in this embedder (the README table's "kernel")."""
    import torch

    from indexer.model.runtime import cpu_features as quant

    dtype = str(emb.dtype)
    cuda = str(emb.device).startswith("cuda")
    flags = quant.cpu_flags()
    if cuda:
        gemm = f"cuBLAS {dtype}"
    elif dtype == "int8":
        gemm = f"dynamic int8 linears ({torch.backends.quantized.engine})"
    elif dtype == "bfloat16":
        isa = (
            "amx_bf16"
            if "amx_bf16" in flags
            else "avx512_bf16"
            if "avx512_bf16" in flags
            else "no native bf16"
        )
        gemm = f"oneDNN bf16 ({isa})"
    else:
        gemm = "MKL sgemm" if torch.backends.mkl.is_available() else "sgemm"
    flash = "SDPA flash" if cuda else "SDPA flash (_scaled_dot_product_flash_attention_for_cpu)"
    fast = list(getattr(emb, "page_kernels", []) or [])
    return {
        "gemm": gemm,
        "vision_attention": flash
        + (", contiguous q/k/v" if "attention" in fast else ", transformers' strided q/k/v")
        + ", per image",
        "vision_forward": "indexer.page_kernels " + "+".join(fast) if fast else "transformers",
        "decoder_attention": flash + ", causal",
        # process-wide: the recipe rows of a run share it (indexer.cpu_heap)
        "heap": "glibc, freed buffers reused (indexer.cpu_heap)"
        if getattr(emb, "heap_reuse", False)
        else "allocator default",
    }


def embed_pages(
    emb: Any, images: list, tokens: int, *, one_at_a_time: bool, peak: dict, around: int = 0
) -> tuple:
    """Embed ``images`` at a budget; returns (vectors, stats).

    ``around``: also measure the ``around``-cubed matmul peak of the embedder's dtype right
    before and after the pages, and give ``fraction_of_peak`` against the higher of the two:
    on a shared machine the start-of-run peak says little about the minutes that follow.
    """
    set_budget(emb, min(64, tokens))
    emb.embed_images(images[:1])  # cheap warm-up at 64 tokens (first-call allocations)
    set_budget(emb, tokens)
    key = _peak_key(emb.dtype)
    load = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    before = matmul_peak(around, [key], reps=2, device=str(emb.device)) if around and key else {}
    timer = ModuleTimer({"vision": emb.vision_model, "decoder": emb.text_model}, str(emb.device))
    timer.seconds = {k: 0.0 for k in timer.seconds}
    with RssSampler() as rss:
        t = time.perf_counter()
        if one_at_a_time:
            vecs = np.concatenate([emb.embed_images([img]) for img in images])
        else:
            vecs = emb.embed_images(images)
        dt = time.perf_counter() - t
    timer.close()
    after = matmul_peak(around, [key], reps=2, device=str(emb.device)) if before and key else {}
    if load:
        load.append(os.getloadavg()[0])
    flops = page_flops(emb, images)
    visual_tokens = [emb.image_token_count(img) for img in images]
    if before:
        peak_gflops = max(before[key]["gflops"], after[key]["gflops"])
        around_stats = {
            "peak_gflops_same_run": [before[key]["gflops"], after[key]["gflops"]],
            "peak_dtype": key,
        }
    else:
        peak_gflops = (peak.get(key) or {}).get("gflops")
        around_stats = {}
    achieved = flops / dt / 1e9
    stats = {
        "budget": tokens,
        "pages": len(images),
        "visual_tokens_mean": rounded(float(np.mean(visual_tokens)), 1),
        "seconds": rounded(dt, 3),
        "pages_per_s": rounded(len(images) / dt, 5),
        "s_per_page": rounded(dt / len(images), 3),
        "vision_s": rounded(timer.seconds["vision"], 3),
        "decoder_s": rounded(timer.seconds["decoder"], 3),
        "gflop_per_page": rounded(flops / len(images) / 1e9, 1),
        "achieved_gflops": rounded(achieved, 1),
        "fraction_of_peak": rounded(achieved / peak_gflops, 3) if peak_gflops else None,
        **around_stats,
        "load_avg_1m": [round(x, 2) for x in load],  # machine load before and after (shared?)
        "kernels": page_kernels(emb),
        **rss.as_dict(),
    }
    return vecs, stats


def _peak_key(dtype: str) -> str | None:
    return {"float32": "float32", "bfloat16": "bfloat16", "int8": "float32"}.get(dtype)
