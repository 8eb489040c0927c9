"""bench/gpu.py's reranking phase: seconds per reranked page on the card.

The full-size Qwen3-VL-Reranker-2B architecture with random weights (bf16, SDPA on CUDA; the
dry run: the tiny one in float32 on the CPU) behind PageLens's
:class:`~indexer.model.rerank.qwen3vl.Qwen3VLReranker`, at its default image budget, scoring
the kit's pages (rendered at PageLens's default settings) with their text layers against
one text query, ``batch`` pages per ``score`` call, until done or the phase's deadline.

Like the rest of bench/gpu.py it needs only torch, transformers, Pillow and numpy, plus
``qwen_vl_utils`` (the reference's image resizing, which the reranker runs). The GPU machine
has no qwen-vl-utils: ``--prepare`` copies that small pure-Python package into the kit
(``python/``), and without it the phase is reported ``"absent"`` with the reason.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: The query every page is scored against.
QUERY = "how do I declare an interface in IDL"
#: Sent as a page's text layer when the kit has none (synthetic pages).
FILLER_TEXT = "The page model vector index: a table of results, a figure and its caption. " * 8


def prepare_kit(kit: Path, texts: dict[int, str]) -> None:
    """Add the reranker's needs to a kit: the pages' text layers, the Qwen3 tokenizer and a
    copy of qwen_vl_utils (the GPU machine fetches nothing)."""
    import qwen_vl_utils

    from indexer.model.rerank.random import build_tokenizer

    (kit / "texts").mkdir(parents=True, exist_ok=True)
    for number, text in texts.items():
        (kit / "texts" / f"{number:03d}.txt").write_text(text, encoding="utf-8")
    build_tokenizer().save_pretrained(kit / "reranker-tokenizer")
    package = Path(qwen_vl_utils.__file__).resolve().parent
    target = kit / "python" / "qwen_vl_utils"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__"))


def qwen_vl_utils_source(kit: Path | None) -> str:
    """Where ``qwen_vl_utils`` comes from ("installed", "kit") or "missing"; a kit's copy is
    put first on ``sys.path``. GME's and the reranker's image resizing both need it."""
    carried = kit / "python" if kit else None
    if carried and (carried / "qwen_vl_utils").is_dir() and str(carried) not in sys.path:
        sys.path.insert(0, str(carried))
    try:
        spec = importlib.util.find_spec("qwen_vl_utils")
    except ImportError:
        spec = None
    if spec is None:
        return "missing"
    inside = carried is not None and str(spec.origin or "").startswith(str(carried))
    return "kit" if inside else "installed"


def missing(kit: Path | None) -> str | None:
    """Why the phase cannot run here (qwen_vl_utils neither installed nor in the kit)."""
    if qwen_vl_utils_source(kit) != "missing":
        return None
    return (
        "qwen_vl_utils (pip package qwen-vl-utils, the reranker's image resizing) is not "
        "installed here and the kit carries none: run `bash bench/gpu.sh prepare` where "
        "PageLens is installed"
    )


def kit_texts(kit: Path | None, n: int) -> list[str]:
    """The kit's page text layers (cycled to ``n``), else filler text."""
    files = sorted((kit / "texts").glob("*.txt")) if kit else []
    if not files:
        return [FILLER_TEXT] * n
    return [files[i % len(files)].read_text(encoding="utf-8") for i in range(n)]


def build(size: str, dtype: str, device: str, kit: Path | None) -> Any:
    """A random-weight Qwen3-VL reranker of ``size`` on ``device`` (the kit's tokenizer)."""
    import torch

    from indexer.model.rerank.random import make_processor, random_reranker

    tokenizer = None
    folder = kit / "reranker-tokenizer" if kit else None
    if folder and (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    return random_reranker(
        size, device=device, dtype=getattr(torch, dtype), processor=make_processor(tokenizer)
    )


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _visual_tokens(reranker: Any, image: Image.Image) -> int:
    """The merged visual tokens (32x32 px each) a page image becomes at the budget."""
    from indexer.model.rerank import recipe

    img = recipe.prepare_image(
        image, min_pixels=reranker.min_pixels, max_pixels=reranker.max_pixels
    )
    return img.width * img.height // (recipe.IMAGE_FACTOR * recipe.IMAGE_FACTOR)


def time_rerank(
    reranker: Any,
    images: list[Image.Image],
    texts: list[str],
    batch: int,
    deadline: float,
    report_progress: Any,
) -> dict[str, Any]:
    """Score pages ``batch`` at a time until done or the deadline; the phase's figures."""
    from indexer.model.rerank import RerankPage, RerankQuery

    query = RerankQuery(text=QUERY)
    pages = [RerankPage(image=i, text=t) for i, t in zip(images, texts, strict=True)]
    device = str(reranker.device)
    reranker.score(query, pages[:batch])  # warm-up: kernels chosen, buffers allocated
    _sync(device)
    done, started, capped = 0, time.perf_counter(), False
    for start in range(0, len(pages), batch):
        if time.perf_counter() >= deadline and done:
            capped = True
            break
        chunk = pages[start : start + batch]
        reranker.score(query, chunk)
        _sync(device)
        done += len(chunk)
        report_progress("rerank", done, len(pages), started)
    seconds = time.perf_counter() - started
    lengths = [reranker.count_tokens(query, page) for page in pages[:done]]
    visual = [_visual_tokens(reranker, page.image) for page in pages[:done] if page.image]
    return {
        "pages": done,
        "batch_size": batch,
        "seconds": round(seconds, 3),
        "pages_per_s": round(done / seconds, 3),
        "s_per_page": round(seconds / done, 4),
        "sequence_tokens_mean": round(float(np.mean(lengths)), 1),
        "visual_tokens_mean": round(float(np.mean(visual)), 1),
        "image_budget_tokens": [reranker.min_pixels // 1024, reranker.max_pixels // 1024],
        "query": QUERY,
        "status": "capped" if capped else "ok",
    }


def run_rerank(
    report: dict[str, Any],
    args: Any,
    size: str,
    dtype: str,
    device: str,
    images: list[Image.Image],
    clock: Any,
) -> None:
    """bench/gpu.py's phase: ``report["phases"]["rerank"]``, or absent with the reason."""
    import torch

    from bench.gpu import log, progress

    reason = missing(args.kit)
    if reason:
        report["phases"]["rerank"] = {"status": "absent", "reason": reason}
        log(f"rerank: absent ({reason})")
        return
    reranker = build(size, dtype, device, args.kit)
    n = min(args.rerank_pages, len(images))
    stats = time_rerank(
        reranker,
        images[:n],
        kit_texts(args.kit, n),
        args.rerank_batch,
        clock.phase_deadline(),
        progress,
    )
    report["phases"]["rerank"] = {
        "model": f"Qwen3-VL-Reranker-2B architecture, random weights ({size})",
        "dtype": dtype,
        "attention": getattr(reranker.model.config, "_attn_implementation", None),
        **stats,
    }
    log(f"rerank: {stats['s_per_page']} s/page ({stats['status']})")
    del reranker
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


__all__ = [
    "QUERY",
    "build",
    "kit_texts",
    "missing",
    "prepare_kit",
    "qwen_vl_utils_source",
    "run_rerank",
    "time_rerank",
]
