"""The bench's PDF corpus: the PDF it renders (tests/data's manual, or a generated
text-heavy one), its rendering at the app's settings, the text queries and the short
passages cut from the PDF's text layer."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, rounded

QUERIES = [
    "how do I declare an interface in IDL",
    "mapping of C pointers to OCaml types",
    "what does the unique attribute mean",
    "COM components and reference counting",
    "error handling with exceptions",
    "how to compile the generated stubs",
    "arrays with a length given by another parameter",
    "strings and the string attribute",
    "installing camlidl on windows",
    "what is a dispatch interface",
    "union types and switch_is",
    "callbacks from C into OCaml",
    "table of contents",
    "memory allocation and freeing of out parameters",
    "bigarray support",
    "the license of this software",
    "naming conventions for generated functions",
    "custom types with ml2c and c2ml",
    "how are structs represented",
    "quotations in IDL files",
]


def default_pdf(pages: int, workdir: Path) -> Path:
    """A real PDF from tests/data if present, else a generated text-heavy one."""
    real = ROOT / "tests" / "data" / "camlidl-manual.pdf"
    if real.is_file():
        from indexer.pages.mupdf import pymupdf

        with pymupdf.open(real) as doc:
            if doc.page_count >= pages:
                return real
    return make_text_pdf(workdir / "bench-text.pdf", pages)


def make_text_pdf(path: Path, pages: int) -> Path:
    """A text-heavy A4 PDF (dense paragraphs, headings) made with PyMuPDF."""
    from indexer.pages.mupdf import pymupdf

    rng = np.random.default_rng(7)
    words = (
        "index page vector model search query embedding token budget render layer "
        "matrix memory thread batch cache prefix latency recall cluster graph"
    ).split()
    doc = pymupdf.open()
    for n in range(pages):
        page = doc.new_page(width=595, height=842)
        page.insert_text(
            (50, 60), f"Chapter {n + 1}: on {' '.join(rng.choice(words, 3))}", fontsize=18
        )
        body = " ".join(rng.choice(words, 700))
        page.insert_textbox(pymupdf.Rect(50, 80, 545, 800), body, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    doc.close()
    return path


def render(pdf: Path, pages: int, tokens: int) -> tuple[list, list[str], dict]:
    """Render the first ``pages`` pages at the app's settings for ``tokens``."""
    from indexer.pages import RenderSettings, render_pages

    settings = RenderSettings.for_tokens(tokens)
    images, texts = [], []
    t = time.perf_counter()
    from indexer.pages.mupdf import pymupdf

    with pymupdf.open(pdf) as doc:
        count = doc.page_count
    # Skip the cover/blank front matter when the PDF is long enough: text-heavy pages.
    first = 3 if count >= pages + 3 else 1
    for page in render_pages(pdf, settings=settings, pages=range(first, first + pages)):
        images.append(page.image)
        texts.append(page.text)
    dt = time.perf_counter() - t
    return (
        images,
        texts,
        {
            "pdf": str(pdf.relative_to(ROOT)) if pdf.is_relative_to(ROOT) else pdf.name,
            "pages": len(images),
            "first_page": first,
            "render_tokens": tokens,
            "sizes": sorted({f"{i.width}x{i.height}" for i in images}),
            "seconds": rounded(dt),
            "pages_per_s": rounded(len(images) / dt, 2),
        },
    )


def corpus_texts(texts: list[str], n: int) -> list[str]:
    """Short passages (about 40 words) cut from the PDF's text layer."""
    words = " ".join(texts).split()
    out = [" ".join(words[i : i + 40]) for i in range(0, len(words), 40)]
    out = [p for p in out if len(p) > 40]
    while len(out) < n:
        out.append(f"filler passage {len(out)} about pages and vectors")
    return out[:n]


def query_texts(n: int) -> list[str]:
    """``n`` text queries: :data:`QUERIES` repeated as needed."""
    return (QUERIES * (n // len(QUERIES) + 1))[:n]
