"""PDF documents with MuPDF: open (repair, password), render a page at the pixel budget,
read a page's text layer. Imports the other pages modules (not pages itself) and
indexer.errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from indexer.errors import DocumentError
from indexer.pages.geometry import pad, padded_size, plan_scale
from indexer.pages.mupdf import TEXT_FLAGS, drain_mupdf_warnings, pymupdf, quiet_mupdf
from indexer.pages.ocr import ocr_pdf_page, ocr_pdf_page_words
from indexer.pages.text import normalize_text
from indexer.pages.types import PageImage, PageRenderError, RenderSettings, check_number
from indexer.pages.words import Word, layout_words, mupdf_words

logger = logging.getLogger(__name__)


@quiet_mupdf()
def open_pdf(path: Path, password: str | None) -> pymupdf.Document:
    """Open, repair if needed, and authenticate a PDF; refuse it with a reason otherwise."""
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as exc:  # MuPDF raises FileDataError, RuntimeError or its own types
        drain_mupdf_warnings(path)
        raise DocumentError(
            path, "damaged", f"{path}: damaged PDF that could not be repaired ({exc})"
        ) from None
    try:
        if doc.is_repaired:
            logger.warning("%s: damaged cross-reference table, repaired by MuPDF", path)
        if doc.needs_pass:
            if password is None:
                raise DocumentError(
                    path, "needs-password", f"{path}: the PDF is protected by a password"
                )
            if not doc.authenticate(password):
                raise DocumentError(
                    path, "wrong-password", f"{path}: the password given does not open the PDF"
                )
        try:
            count = doc.page_count
        except Exception as exc:
            raise DocumentError(path, "damaged", f"{path}: unreadable page tree ({exc})") from None
        if count <= 0 and doc.is_repaired:
            raise DocumentError(
                path,
                "damaged",
                f"{path}: damaged PDF (a truncated download?): MuPDF "
                "repaired its structure but found no pages",
            )
        if count <= 0:
            raise DocumentError(path, "no-pages", f"{path}: the PDF has no pages")
    except BaseException:
        doc.close()
        drain_mupdf_warnings(path)
        raise
    drain_mupdf_warnings(path)
    return doc


def _page_zoom(page: pymupdf.Page, settings: RenderSettings) -> float:
    """Zoom for one page, nudged up until MuPDF's rounded pixmap meets the budget."""
    rect = page.rect  # already rotated: what a reader sees
    zoom = plan_scale(rect.width, rect.height, settings, upscale=True)
    target = settings.max_pixels
    for _ in range(4):
        box = (rect * pymupdf.Matrix(zoom, zoom)).irect
        w, h = padded_size(max(box.width, 1), max(box.height, 1), settings)
        if w * h >= target or zoom >= settings.max_zoom:
            break
        # MuPDF rounds edges within 0.001 px inward; add a hair more than one pixel's worth.
        zoom *= 1.0 + 1.0 / max(box.width, box.height, 1)
    return zoom


@quiet_mupdf()
def render_pdf_page(
    doc: pymupdf.Document, number: int, path: Path, settings: RenderSettings
) -> PageImage:
    try:
        page = doc.load_page(number - 1)
        rect = page.rect
        if rect.width <= 0 or rect.height <= 0:
            raise ValueError(f"empty page box {rect}")
        zoom = _page_zoom(page, settings)
        pix = page.get_pixmap(
            matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False, annots=True
        )
        # samples_mv reads MuPDF's buffer in place; .samples would first copy it (3 MiB).
        image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples_mv)
        del pix
        text = normalize_text(page.get_text("text", sort=True, flags=TEXT_FLAGS))
        text, words = _words_and_text(page, text, zoom, image.size, settings)
    except DocumentError:
        raise
    except Exception as exc:
        drain_mupdf_warnings(path)
        raise PageRenderError(
            path, number, f"{path}: page {number} could not be rendered ({exc})"
        ) from None
    drain_mupdf_warnings(path)
    return PageImage(
        number=number,
        image=pad(image, settings),
        text=text,
        width_pt=float(rect.width),
        height_pt=float(rect.height),
        words=words,
    )


def _words_and_text(
    page: pymupdf.Page,
    text: str,
    zoom: float,
    content: tuple[int, int],
    settings: RenderSettings,
) -> tuple[str, list[Word]]:
    """The page's text (OCR'd when it has none and ``settings.ocr``) and its words on the
    image rendered at ``zoom`` into ``content`` pixels, padded as :func:`pad` pads it."""
    size = padded_size(content[0], content[1], settings)
    if text:
        raw, source = mupdf_words(page), "text"
    elif settings.ocr:
        text, raw = ocr_pdf_page_words(page, settings)
        source = "ocr"
    else:
        return text, []
    return text, layout_words(raw, zoom=zoom, content=content, size=size, source=source)


@quiet_mupdf()
def document_page_words(
    doc: Any, path: Path, number: int, settings: RenderSettings
) -> tuple[list[Word], tuple[int, int]]:
    """The words of page ``number`` of an open MuPDF document, placed on the image
    :func:`render_pdf_page` would make, and that image's size, without rasterising it
    (``check --repair`` of collections made before word boxes)."""
    try:
        page = doc.load_page(number - 1)
        zoom = _page_zoom(page, settings)
        box = (page.rect * pymupdf.Matrix(zoom, zoom)).irect
        content = (max(box.width, 1), max(box.height, 1))
        text = normalize_text(page.get_text("text", sort=True, flags=TEXT_FLAGS))
        _, words = _words_and_text(page, text, zoom, content, settings)
    except DocumentError:
        raise
    except Exception as exc:
        raise PageRenderError(
            path, number, f"{path}: words of page {number} could not be read ({exc})"
        ) from None
    finally:
        drain_mupdf_warnings(path)
    return words, padded_size(content[0], content[1], settings)


def pdf_info(path: Path, password: str | None) -> tuple[int, str | None, bool]:
    """Page count, title and whether it is encrypted, of a PDF."""
    doc = open_pdf(path, password)
    try:
        metadata = doc.metadata or {}
        title = (metadata.get("title") or "").strip() or None
        return doc.page_count, title, bool(metadata.get("encryption")) or bool(doc.is_encrypted)
    finally:
        doc.close()


def pdf_page_text(path: Path, number: int, password: str | None, settings: RenderSettings) -> str:
    return document_page_text(open_pdf(path, password), path, number, settings)


def document_page_text(doc: Any, path: Path, number: int, settings: RenderSettings) -> str:
    """The normalised text layer of page ``number`` of an open MuPDF document (OCR'd when
    empty and ``settings.ocr``); closes ``doc``. Shared by PDFs and what MuPDF pages itself."""
    try:
        check_number(path, number, doc.page_count)
        try:
            page = doc.load_page(number - 1)
            raw = page.get_text("text", sort=True, flags=TEXT_FLAGS)
        except Exception as exc:
            raise PageRenderError(
                path, number, f"{path}: text of page {number} could not be read ({exc})"
            ) from None
        text = normalize_text(raw)
        if not text and settings.ocr:
            text = ocr_pdf_page(page, settings)
        return text
    finally:
        doc.close()
        drain_mupdf_warnings(path)
