"""Peak memory while indexing a long PDF, measured in a fresh process (issue #16).

The claim: indexing an N-page PDF grows peak RSS by at most one batch of decoded page images
plus the N page vectors (and SQLite's fixed page cache), whatever N is. So the measurement

* runs in a child process, so the parent's heap (pytest's, the bench's earlier phases) does
  not count, and reads the child's own ``VmHWM`` (not ``ru_maxrss``, which Linux carries over
  from the parent through fork and exec, see tests/support/peak_rss.py);
* takes its baseline after a warm-up (imports, fonts, the embedder, a first batch indexed
  into another collection), then resets the high-water mark (``/proc/self/clear_refs``), so
  it measures what indexing *more pages* costs, not what starting costs;
* records the growth at checkpoints through the vectors phase, so a figure that scales with
  the page count shows as a slope, not only as one total.

:func:`bound` states the terms; the bench reports them beside the figure, and
tests/test_long_pdf_memory.py asserts the bound at a size that keeps the suite fast.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol, cast

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
#: Pillow keeps an RGB image as 32-bit pixels (RGBX), so a decoded page costs 4 bytes a pixel.
PIL_BYTES_PER_PIXEL = 4
#: What the indexer holds besides the decoded batch, the vectors, SQLite's page cache and the
#: encoded batch read ahead, all independent of the page count: the Python objects and
#: buffers of the vectors phase (rows, the thread that reads ahead, SQLite's statements),
#: the allocator's rounding. Measured (130-2,000 pages, light and text-heavy): 1.5-2.5 MiB;
#: 4 MiB leaves headroom for the noise of a shared machine without hiding a second batch
#: (15 MiB at 1280 tokens) or a second copy of the vectors.
FIXED_MIB = 4.0
#: The batch read ahead is held as PNG bytes while the model embeds the current one (whose
#: PNG bytes are freed as it is decoded, before the read starts): one batch of encoded pages.
READ_AHEAD_BATCHES = 1


def _status(field: str) -> float:
    """A ``/proc/self/status`` figure in MiB (0 where there is no /proc)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _reset_peak() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _AnonPeak:
    """The peak of ``RssAnon`` sampled every few ms in a thread. ``VmHWM`` counts file pages
    too, which the kernel drops from a process under memory pressure (a shared machine),
    so anonymous memory (the heap: images, vectors, caches) is watched as well and the
    larger of the two growths is the one held to the bound."""

    def __init__(self, interval: float = 0.005) -> None:
        import threading

        self.interval = interval
        self.start = self.peak = _status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _status("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))
        return self.peak - self.start


class _SqliteCache(Protocol):
    """The local engine's capability the bound needs (a folder collection's catalog)."""

    def sqlite_cache_bytes(self) -> int: ...


def child(
    pdf: str, folder: str, *, batch: int, tokens: int, dim: int, checkpoints: int = 4
) -> dict[str, Any]:
    """In a fresh process: warm up, index ``pdf`` with the fake embedder and return the
    figures (see the module docstring). Printed as one JSON line by :func:`measure`."""
    from bench.corpus import make_text_pdf
    from indexer.model import FakeEmbedder
    from indexer.model.runtime.memory import release_free_heap
    from indexer.pages import RenderSettings
    from indexer.pipeline import Indexer, Progress
    from indexer.stores import open_collection

    settings = RenderSettings.for_tokens(tokens)
    emb = FakeEmbedder(dim=dim)
    warm = make_text_pdf(Path(folder) / "warm.pdf", 2)
    with open_collection(Path(folder) / "warm") as store:  # imports, fonts, a first batch
        Indexer(store, emb, settings=settings, batch_size=batch).add([warm])
    trace: list[dict[str, float]] = []
    with open_collection(Path(folder) / "col") as store:
        cache_bytes = cast(_SqliteCache, store).sqlite_cache_bytes()
        indexer = Indexer(store, emb, settings=settings, batch_size=batch)
        gc.collect()
        release_free_heap()
        start = _status("VmRSS")
        reset = _reset_peak()
        if not reset:  # measure above the warm-up's peak instead (less strict)
            start = _status("VmHWM")
        anon = _AnonPeak()
        state = {"next": 0}

        def progress(p: Progress) -> None:
            if p.phase == "pages" and p.done == p.total and not trace:
                trace.append({"phase": 0, "pages": p.done, "growth_mib": _status("VmHWM") - start})
            if p.phase == "vectors" and p.total and p.done >= state["next"]:
                trace.append({"phase": 1, "pages": p.done, "growth_mib": _status("VmHWM") - start})
                state["next"] = p.done + max(1, p.total // checkpoints)

        report = indexer.add([Path(pdf)], progress=progress)
        peak = _status("VmHWM")
        anon_growth = anon.stop()
        stored = store.pages(with_text=False)
        sizes = sorted({(p.width, p.height) for p in stored[:3]})
        png_max = max((store.image_path(p).stat().st_size for p in stored), default=0)
    return {
        "pages_embedded": report.pages_embedded + report.pages_reused,
        "seconds": report.seconds,
        "page_sizes": sizes,
        "png_max_bytes": png_max,
        "sqlite_cache_bytes": cache_bytes,
        "rss_start_mib": start,
        "rss_peak_mib": peak,
        "rss_growth_mib": peak - start,
        "rss_anon_growth_mib": anon_growth,
        "peak_reset": reset,
        "trace": trace,
    }


def bound(
    *,
    pages: int,
    batch: int,
    page_size: tuple[int, int],
    dim: int,
    sqlite_cache_bytes: int,
    png_bytes: int = 0,
) -> dict[str, float]:
    """The terms of the bound in MiB: one batch of decoded pages, the vectors (the FAISS
    cache holds them as float32), SQLite's page cache (fixed: ``PRAGMA cache_size``), the
    encoded batch read ahead (:data:`READ_AHEAD_BATCHES` batches of the largest stored
    page, ``png_bytes``) and :data:`FIXED_MIB`. None grows with the page count but the
    vectors."""
    w, h = page_size
    terms = {
        "one_batch_of_images_mib": batch * w * h * PIL_BYTES_PER_PIXEL / MIB,
        "vectors_mib": pages * dim * 4 / MIB,
        "sqlite_cache_mib": sqlite_cache_bytes / MIB,
        "read_ahead_mib": READ_AHEAD_BATCHES * batch * png_bytes / MIB,
        "fixed_mib": FIXED_MIB,
    }
    terms["bound_mib"] = sum(terms.values())
    return {k: round(v, 1) for k, v in terms.items()}


def measure(
    pages: int,
    *,
    batch: int = 4,
    tokens: int = 1280,
    dim: int = 1536,
    pdf: Path | None = None,
    timeout: float = 3600,
) -> dict[str, Any]:
    """Index a ``pages``-page PDF (the bench's text-heavy A4 pages unless ``pdf`` is given)
    in a fresh subprocess; returns its figures, the bound's terms and whether it held.
    Raises RuntimeError with the child's stderr when it fails."""
    from bench.corpus import make_text_pdf

    with tempfile.TemporaryDirectory() as tmp:
        if pdf is None:
            pdf = make_text_pdf(Path(tmp) / "long.pdf", pages)
        code = (
            "import json; from bench.long_pdf import child; "
            f"print(json.dumps(child({str(pdf)!r}, {tmp!r}, batch={batch}, tokens={tokens}, "
            f"dim={dim})))"
        )
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=timeout,
        )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    w, h = max(out["page_sizes"], key=lambda s: s[0] * s[1])
    terms = bound(
        pages=pages,
        batch=batch,
        page_size=(w, h),
        dim=dim,
        sqlite_cache_bytes=out["sqlite_cache_bytes"],
        png_bytes=out["png_max_bytes"],
    )
    return {
        "pages": pages,
        "embedder": f"fake (dim {dim})",
        "measured_in": "subprocess, own VmHWM, baseline after a 2-page warm-up"
        + ("" if out["peak_reset"] else " (peak not resettable: above the warm-up's peak)"),
        "batch_size": batch,
        "image_tokens": tokens,
        "seconds": round(out["seconds"], 1),
        "pages_embedded": out["pages_embedded"],
        "page_size": [w, h],
        **terms,
        "rss_start_mib": round(out["rss_start_mib"], 1),
        "rss_peak_mib": round(out["rss_peak_mib"], 1),
        "rss_growth_mib": round(out["rss_growth_mib"], 1),
        "rss_anon_growth_mib": round(out["rss_anon_growth_mib"], 1),
        "growth_by_pages": [
            {
                "phase": "pages" if t["phase"] == 0 else "vectors",
                "pages": t["pages"],
                "growth_mib": round(t["growth_mib"], 1),
            }
            for t in out["trace"]
        ],
        "met": max(out["rss_growth_mib"], out["rss_anon_growth_mib"]) <= terms["bound_mib"],
    }
