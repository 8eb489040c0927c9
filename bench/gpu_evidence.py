"""Visual evidence's cost per page ("where on this page?"), measured on any device.

Shared by ``pagelens bench --evidence-pages N`` (bench/evidence_phase.py, on the CPU) and the
GPU script (bench/gpu.py's ``region_evidence`` phase), so both time the same code: PageLens's
own :func:`retriever.evidence.visual.visual_evidence` at its default grids and crop budget,
every crop of a page in one call, no cache. Imports only what the GPU machine has: the
``retriever`` package's ``__init__`` pulls in the stores and PyMuPDF, so
:func:`evidence_module` loads ``retriever.evidence`` without it.
"""

from __future__ import annotations

import importlib
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

QUERY = "the table of quarterly revenue by region"


def evidence_module() -> Any:
    """``retriever.evidence.visual``, without running ``retriever/__init__`` when the
    package is not imported yet (on the GPU machine its imports are absent)."""
    if "retriever" not in sys.modules:
        root = Path(__file__).resolve().parent.parent / "retriever"
        package = types.ModuleType("retriever")
        package.__path__ = [str(root)]
        sys.modules["retriever"] = package
    return importlib.import_module("retriever.evidence.visual")


def time_evidence(
    emb: Any,
    images: list,
    *,
    deadline: float | None = None,
    sync: Callable[[], None] = lambda: None,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Seconds (wall and this process's CPU) per page of visual evidence over ``images``,
    after one warm-up page; stops early (``"capped"``) at ``deadline``."""
    visual = evidence_module()
    query = emb.embed_queries([QUERY])[0]
    visual.visual_evidence(emb, images[0], query)  # warm-up: kernels chosen, buffers grown
    sync()
    done, capped = 0, False
    wall, cpu = time.perf_counter(), time.process_time()
    best = []
    for page in images:
        if deadline is not None and time.perf_counter() >= deadline and done:
            capped = True
            break
        found = visual.visual_evidence(emb, page, query)
        sync()
        best.append(found.best.as_dict()["box"])
        done += 1
        if progress is not None:
            progress(done, len(images), wall)
    seconds, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    regions = len(visual.regions(*images[0].size))
    return {
        "grids": [list(g) for g in visual.DEFAULT_GRIDS],
        "overlap": visual.DEFAULT_OVERLAP,
        "max_image_tokens": visual.DEFAULT_TOKENS,
        "regions_per_page": regions,
        "crop_tokens": _crop_tokens(visual, emb, images[0]),
        "pages": done,
        "seconds": round(seconds, 3),
        "s_per_page": round(seconds / done, 3),
        "pages_per_s": round(done / seconds, 5),
        "cpu_s_per_page": round(cpu_s / done, 3),
        "best_boxes": best,
        "status": "capped" if capped else "ok",
    }


def _crop_tokens(visual: Any, emb: Any, page: Any) -> list[int] | None:
    """Visual tokens each crop of ``page`` costs at the evidence budget (GME only)."""
    if not hasattr(emb, "image_token_count"):
        return None
    from indexer.model.gme.budget import image_budget

    with image_budget(emb, visual.DEFAULT_TOKENS):
        return [emb.image_token_count(page.crop(b).size) for b in visual.regions(*page.size)]


__all__ = ["QUERY", "evidence_module", "time_evidence"]
