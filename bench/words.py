"""Word boxes measured on the bench's PDF corpus: what they add to a page's storage (bytes
of :func:`indexer.pages.words.encode_words` against the page's PNG) and to its indexing
time (reading the words from the text page the text layer is read from, placing and
encoding them, against rendering and PNG encoding, and against the whole page path when
the model phase ran). Rendering's own time already includes the words."""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import rounded


def measure_word_boxes(pdf: Path, pages: int, tokens: int) -> dict:
    """``word_boxes`` of the report: per page means over the corpus's first ``pages``."""
    from indexer.pages import RenderSettings, encode_words, render_pages
    from indexer.pages.mupdf import TEXT_FLAGS, pymupdf
    from indexer.pages.words import layout_words, mupdf_words
    from indexer.stores.types import encode_png

    settings = RenderSettings.for_tokens(tokens)
    with pymupdf.open(pdf) as doc:
        numbers = list(range(1, min(pages, doc.page_count) + 1))
    t = time.perf_counter()
    rendered = list(render_pages(pdf, settings=settings, pages=numbers))
    render_s = time.perf_counter() - t
    png_s = word_s = 0.0
    png_bytes = word_bytes = words = 0
    with pymupdf.open(pdf) as doc:
        for page in rendered:
            t = time.perf_counter()
            png_bytes += len(encode_png(page.image))
            png_s += time.perf_counter() - t
            source = doc.load_page(page.number - 1)
            content = (page.image.width, page.image.height)  # no padding on book pages
            zoom = page.image.width / source.rect.width
            textpage = source.get_textpage(flags=TEXT_FLAGS)  # shared with the text layer
            t = time.perf_counter()
            placed = layout_words(
                mupdf_words(source, textpage),
                zoom=zoom,
                content=content,
                size=content,
                source="text",
            )
            data = encode_words(placed)
            word_s += time.perf_counter() - t
            word_bytes += len(data)
            words += len(placed)
    n = max(len(rendered), 1)
    return {
        "pdf": pdf.name,
        "pages": len(rendered),
        "render_tokens": tokens,
        "words_per_page": rounded(words / n, 1),
        "bytes_per_page": rounded(word_bytes / n, 1),
        "png_bytes_per_page": rounded(png_bytes / n, 1),
        "ratio_to_png": rounded(word_bytes / max(png_bytes, 1), 4),
        "ms_per_page": rounded(1000 * word_s / n, 3),
        "render_ms_per_page": rounded(1000 * render_s / n, 2),
        "png_encode_ms_per_page": rounded(1000 * png_s / n, 2),
        "share_of_render_and_png": rounded(word_s / max(render_s + png_s, 1e-9), 4),
    }


def word_box_targets(report: dict) -> dict:
    """The goals: storage under 10% of the PNG; time under 5% of a page's indexing (the
    model's seconds per page when the model phase ran, else rendering and PNG alone)."""
    wb = report.get("word_boxes")
    if not wb or "ratio_to_png" not in wb:
        return {}
    ratio = wb["ratio_to_png"]
    out = {"word_boxes_bytes<10%_png": {"value": ratio, "met": ratio < 0.1}}
    page_s = (wb["render_ms_per_page"] + wb["png_encode_ms_per_page"]) / 1000
    basis = "render+png"
    exact = (((report.get("model") or {}).get("phases") or {}).get("exact") or {}).get("budgets")
    if exact:
        top = exact.get(str(max(int(k) for k in exact)), {})  # the corpus's own budget
        if "s_per_page" in top:
            page_s += top["s_per_page"]
            basis = "render+png+embed"
    share = wb["ms_per_page"] / 1000 / max(page_s, 1e-9)
    wb["share_of_indexing"] = rounded(share, 4)
    wb["share_basis"] = basis
    out["word_boxes_time<5%_indexing"] = {
        "value": rounded(share, 4),
        "basis": basis,
        "met": share < 0.05,
    }
    return out
