"""Phase I (opt-in, ``--evidence-pages N``): seconds per page of visual evidence.

The full-size GME-2B architecture with random weights (``--size tiny`` for smoke tests),
in the dtype PageLens picks on this device (``--dtype`` overrides), cutting N real pages of
the test PDF (rendered at PageLens's default settings, what the store keeps) into the
default overlapping regions and embedding them at the evidence budget, as
``pagelens search --evidence visual`` does for each hit (bench/gpu_evidence.py measures).
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import log, rounded
from bench.corpus import default_pdf, render
from bench.machine import RssSampler

if TYPE_CHECKING:
    from bench.bench import BenchConfig

#: Visual tokens PageLens renders a page at by default (RenderSettings()).
RENDER_TOKENS = 1280


def _load() -> list[float]:
    return [round(os.getloadavg()[0], 2)] if hasattr(os, "getloadavg") else []


def run_evidence(cfg: BenchConfig, report: dict, workdir: Path) -> None:
    """Fill ``report["visual_evidence"]``: seconds (wall and CPU) per page."""
    import torch

    from bench.gpu_evidence import time_evidence
    from bench.model_build import build
    from indexer.model.gme.loading import resolve_dtype

    n = cfg.evidence_pages
    log(f"phase I: visual evidence on {n} pages, {cfg.size} GME, random weights")
    pdf = Path(cfg.pdf) if cfg.pdf else default_pdf(n, workdir)
    images, _texts, rendering = render(pdf, n, RENDER_TOKENS)
    dtype = str(resolve_dtype(cfg.dtype, cfg.device)).removeprefix("torch.")
    t = time.perf_counter()
    emb = build(cfg, dtype, batch_size=cfg.batch_size)
    build_s = time.perf_counter() - t

    def sync() -> None:
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()

    def progress(done: int, total: int, started: float) -> None:
        rate = done / max(time.perf_counter() - started, 1e-9)
        log(f"  I {done}/{total} pages, {rate:.4f} pages/s, ETA {(total - done) / rate:.0f} s")

    load = _load()
    with RssSampler() as rss:
        stats = time_evidence(emb, images, sync=sync, progress=progress)
    load += _load()
    report["visual_evidence"] = {
        "model_id": emb.model_id,
        "architecture": "gme-Qwen2-VL-2B (Qwen2VLForConditionalGeneration), random weights",
        "size": cfg.size,
        "device": str(emb.device),
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "batch_size": emb.batch_size,
        "build_s": rounded(build_s, 1),
        "rendering": {**rendering, "settings": "PageLens default (RenderSettings())"},
        **stats,
        "load_avg_1m": load,  # before and after: was the machine shared?
        **rss.as_dict(),
    }
    log(f"  I {stats['s_per_page']} s/page ({dtype}, {stats['pages']} pages)")
    del emb
    gc.collect()


def summary_lines(report: dict) -> list[str]:
    """The summary's visual-evidence line, if the phase ran."""
    r: dict[str, Any] | None = report.get("visual_evidence")
    if not r:
        return []
    return [
        f"  visual evidence ({r['size']} GME, {r['dtype']}, {r['device']}): {r['s_per_page']} "
        f"s/page ({r['cpu_s_per_page']} CPU s) for {r['regions_per_page']} regions at "
        f"{r['max_image_tokens']} tokens, over {r['pages']} pages"
    ]
