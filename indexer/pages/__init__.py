"""Turn input files into page images and page text, one page at a time.

This package knows nothing of models or storage: every function takes a file, a page number
and :class:`RenderSettings`, and returns pixels and text. The rest of PageLens decides what
to embed and where to keep it.

Why pages are rendered the way they are:

* GME (Qwen2-VL) resizes every image so that ``width * height <= max_pixels`` (in multiples
  of 28). Rendering at a fixed DPI would either waste pixels that the processor throws away
  (big pages) or starve small pages of detail. So each PDF page gets its own zoom, chosen so
  that the rendered pixel count lands *at or just above* ``max_pixels``: nothing rendered is
  wasted and nothing the model could use is missing.
* Qwen's ``smart_resize`` refuses aspect ratios beyond 200:1 and sides under 28 px, so
  extreme pages are padded with white up to those limits (content centred), and the padding
  is counted inside the pixel budget.
* Office and OpenDocument files (docx, pptx, xlsx, odt... see ``office``) are converted to
  PDF by LibreOffice headless and then rendered exactly like PDFs; they keep their own hash,
  name and kind. Without LibreOffice each is refused (``needs-libreoffice``) and the rest go on.
* HTML, Markdown and plain text are laid out to A4 pages in memory (MuPDF's Story, no
  browser, nothing fetched: local images only) and EPUB, XPS, FB2, MOBI, CBZ and SVG are
  paged by MuPDF; their pages then render like a PDF's. A document is still the original
  file: its SHA-256, name and kind ("html", "epub"...) are the file's.
* Image files are documents too (a phone photo of a receipt is a one-page document; a
  multi-page TIFF is a scanned document). They are only ever downscaled: upscaling a bitmap
  adds no information, and the processor would spend tokens on it.
* Everything is streaming: :func:`render_pages` holds one page in memory at a time, so a
  10,000-page PDF costs the same memory as a one-page one. MuPDF decodes huge embedded
  images subsampled to the target zoom, and JPEG files are decoded at reduced scale with
  Pillow's ``draft``; other huge bitmaps (PNG, TIFF, WebP) must be decoded in full once, which
  is why their pixel count is capped by :attr:`RenderSettings.max_image_pixels`.

Errors a user can cause are :class:`~indexer.errors.DocumentError` with a stable ``reason``.
A page that fails to render in the middle of a document raises :class:`PageRenderError` (a
``DocumentError`` with reason ``damaged`` and a ``page`` attribute); the generator stops there,
and a caller that wants the remaining pages calls :func:`render_pages` again with
``pages=range(page + 1, page_count + 1)``. In practice MuPDF renders most damage with
warnings rather than failing; those warnings go to the ``indexer.pages`` loggers.

PyMuPDF documents are not thread-safe: use these functions from one thread per document
(separate processes for parallelism).

Modules: ``types`` (settings, results), ``files`` (finding and recognising inputs),
``geometry`` (pixel budget, padding), ``text`` (text-layer cleaning), ``mupdf`` (MuPDF's
switches), ``pdf``, ``office`` (office files through LibreOffice), ``native`` (e-books,
XPS, SVG: what MuPDF opens itself), ``markup`` (HTML, Markdown and text laid out to pages),
``raster`` (image decoding and image documents), ``decoding`` (what a decode costs, the byte
budget that admits decodes), ``ocr``, ``words`` (word boxes on the stored page image). This
``__init__`` holds the public API and imports those; they never import it. The package
imports nothing of PageLens but :mod:`indexer.errors`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image

from indexer.pages.files import (
    IMAGE_SUFFIXES,
    PDF_SUFFIXES,
    SUPPORTED_SUFFIXES,
    classify,
    file_sha256,
    iter_input_files,
)
from indexer.pages.geometry import pad, padded_size, plan_scale
from indexer.pages.mupdf import quiet_mupdf
from indexer.pages.native import open_paged, paged_info, paged_text
from indexer.pages.ocr import OcrUnavailableError, ocr_tessdata
from indexer.pages.office import (
    OFFICE_KINDS,
    OFFICE_SUFFIXES,
    office_info,
    office_page_text,
    open_office,
)
from indexer.pages.pdf import (
    document_page_words,
    open_pdf,
    pdf_info,
    pdf_page_text,
    render_pdf_page,
)
from indexer.pages.raster import (
    check_decode_room,
    open_image_file,
    render_image_frame,
    to_rgb,
)
from indexer.pages.text import normalize_text
from indexer.pages.types import (
    PATCH,
    DocumentInfo,
    PageImage,
    PageRenderError,
    RenderSettings,
    check_number,
    check_numbers,
)
from indexer.pages.words import Word, decode_words, encode_words

__all__ = [
    "IMAGE_SUFFIXES",
    "OFFICE_SUFFIXES",
    "PATCH",
    "PDF_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "DocumentInfo",
    "OcrUnavailableError",
    "PageImage",
    "PageRenderError",
    "RenderSettings",
    "Word",
    "decode_words",
    "document_words",
    "encode_words",
    "extract_text",
    "file_sha256",
    "fit_image",
    "inspect_document",
    "iter_input_files",
    "normalize_text",
    "ocr_tessdata",
    "padded_size",
    "render_page",
    "render_pages",
]


def inspect_document(
    path: str | os.PathLike[str],
    *,
    password: str | None = None,
    settings: RenderSettings = RenderSettings(),  # noqa: B008 - frozen, so safe to share
    sha256: str | None = None,
) -> DocumentInfo:
    """Check that a file can be indexed and describe it, without rendering anything.

    ``sha256``: the file's hash when the caller has just computed it (the indexer hashes
    first, to skip stored files before an expensive inspection), so it is not read twice.

    Raises :class:`DocumentError` with the reason a user needs (see ``indexer.errors``).
    Owner-password-only PDFs (permissions only) open without a password; ``encrypted`` is
    True for them too.
    """
    path = Path(path)
    kind = classify(path, settings)
    if kind == "pdf":
        with quiet_mupdf():
            count, title, encrypted = pdf_info(path, password)
    elif kind in OFFICE_KINDS:
        count, title, encrypted = office_info(path, kind)
    elif kind != "image":
        (count, title), encrypted = paged_info(path, kind, settings), False
    else:
        image, count = open_image_file(path, settings)
        try:
            check_decode_room(image, path, settings)
        finally:
            image.close()
        title, encrypted = None, False
    return DocumentInfo(
        path=path,
        kind=kind,
        page_count=count,
        sha256=sha256 or file_sha256(path),
        title=title,
        encrypted=encrypted,
    )


def render_pages(
    path: str | os.PathLike[str],
    *,
    settings: RenderSettings = RenderSettings(),  # noqa: B008 - frozen, so safe to share
    password: str | None = None,
    pages: Iterable[int] | None = None,
) -> Iterator[PageImage]:
    """Yield the pages of a PDF, office, image or other document file, one at a time, in the
    order asked.

    A generator: nothing is opened until the first page is requested, so errors
    (:class:`DocumentError`) surface on the first ``next()``; only the current page is held
    in memory, and the file is closed when the generator finishes or is closed. ``pages``
    are 1-based page numbers (default: all); a number out of range raises ``ValueError``.
    A page that cannot be rendered raises :class:`PageRenderError` and ends the generator.
    With ``settings.ocr``, :class:`OcrUnavailableError` is raised first if Tesseract is missing.
    """
    path = Path(path)
    if settings.ocr:
        ocr_tessdata(settings.ocr_language)
    kind = classify(path, settings)
    if kind != "image":
        doc = _open_paged_kind(path, kind, password, settings)
        try:
            for number in check_numbers(path, pages, doc.page_count):
                yield render_pdf_page(doc, number, path, settings)
        finally:
            doc.close()
    else:
        image, count = open_image_file(path, settings)
        try:
            for number in check_numbers(path, pages, count):
                yield render_image_frame(image, number, path, settings)
        finally:
            image.close()


def render_page(
    path: str | os.PathLike[str],
    number: int,
    *,
    settings: RenderSettings = RenderSettings(),  # noqa: B008 - frozen, so safe to share
    password: str | None = None,
) -> PageImage:
    """Render a single page (1-based); opens and closes the file."""
    return next(iter(render_pages(path, settings=settings, password=password, pages=[number])))


def extract_text(
    path: str | os.PathLike[str],
    number: int,
    *,
    password: str | None = None,
    settings: RenderSettings | None = None,
) -> str:
    """The normalised text layer of one page (1-based) without rendering it; "" for image
    files, scans and garbage text layers, unless ``settings.ocr`` asks to OCR those."""
    path = Path(path)
    settings = settings or RenderSettings()
    if settings.ocr:
        ocr_tessdata(settings.ocr_language)
    kind = classify(path, settings)
    if kind in OFFICE_KINDS:
        return office_page_text(path, kind, number, settings)
    if kind not in ("pdf", "image"):
        return paged_text(path, kind, number, settings)
    if kind != "pdf":
        image, count = open_image_file(path, settings)
        image.close()
        check_number(path, number, count)
        return render_page(path, number, settings=settings).text if settings.ocr else ""
    with quiet_mupdf():
        return pdf_page_text(path, number, password, settings)


def document_words(
    path: str | os.PathLike[str],
    *,
    pages: Iterable[int] | None = None,
    password: str | None = None,
    settings: RenderSettings | None = None,
) -> Iterator[tuple[int, list[Word], tuple[int, int]]]:
    """``(number, words, (width, height))`` of pages (1-based, default all): each page's
    words placed on the image :func:`render_pages` makes, and that image's size, without
    rasterising a MuPDF page (``check --repair`` of collections made before word boxes).
    Image files have words only by OCR (``settings.ocr``), which decodes each frame."""
    path = Path(path)
    settings = settings or RenderSettings()
    if settings.ocr:
        ocr_tessdata(settings.ocr_language)
    kind = classify(path, settings)
    if kind == "image":
        for page in render_pages(path, settings=settings, pages=pages):
            yield page.number, page.words, page.image.size
        return
    doc = _open_paged_kind(path, kind, password, settings)
    try:
        for number in check_numbers(path, pages, doc.page_count):
            yield number, *document_page_words(doc, path, number, settings)
    finally:
        doc.close()


def _open_paged_kind(path: Path, kind: str, password: str | None, settings: RenderSettings):
    """The MuPDF document of a file that is not an image: a PDF, an Office file (converted
    by LibreOffice) or what MuPDF lays out or opens itself. The caller closes it."""
    if kind == "pdf":
        return open_pdf(path, password)
    if kind in OFFICE_KINDS:
        return open_office(path, kind)
    return open_paged(path, kind, settings)[0]


def fit_image(
    image: Image.Image,
    settings: RenderSettings = RenderSettings(),  # noqa: B008 - frozen, so safe to share
) -> Image.Image:
    """An in-memory image (a query screenshot, photo or figure) prepared the way an image
    file becomes a page: EXIF-oriented, RGB (transparency onto white), downscaled (never up)
    to the pixel budget, and padded to an aspect ratio the model accepts."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image) or image
    frame = to_rgb(image)
    scale = plan_scale(frame.width, frame.height, settings, upscale=False)
    if scale < 1:
        target = (max(1, math.ceil(frame.width * scale)), max(1, math.ceil(frame.height * scale)))
        frame = frame.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return pad(frame, settings)
