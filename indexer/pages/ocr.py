"""Optional OCR (Tesseract through MuPDF) of pages with no text layer, with its word boxes.
Imports pages.mupdf, pages.text, pages.types, pages.words and indexer.errors."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from PIL import Image

from indexer.errors import PageLensError
from indexer.pages.mupdf import TEXT_FLAGS, pymupdf, quiet_mupdf
from indexer.pages.text import normalize_text
from indexer.pages.types import RenderSettings
from indexer.pages.words import mupdf_words

logger = logging.getLogger(__name__)


class OcrUnavailableError(PageLensError):
    """OCR was asked for, but Tesseract or its language data is not installed."""


_OCR_HINT = (
    "Install Tesseract (Debian/Ubuntu: 'sudo apt-get install tesseract-ocr'; macOS: "
    "'brew install tesseract'; or set TESSDATA_PREFIX to its tessdata folder), "
    "or index without OCR ('pagelens index --no-ocr')."
)
_TESSDATA: dict[str, str] = {}


def ocr_tessdata(language: str = "eng") -> str:
    """Tesseract's language-data folder, checked to hold every language in ``language``
    (``"eng"``, ``"eng+deu"``); raises :class:`OcrUnavailableError` with install hints."""
    import shutil

    if not re.fullmatch(r"[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*", language or ""):
        raise OcrUnavailableError(
            f"OCR language '{language}' should look like eng or eng+deu (Tesseract codes)."
        )
    prefix = os.environ.get("TESSDATA_PREFIX")
    if not prefix and shutil.which("tesseract") is None:
        raise OcrUnavailableError(f"OCR needs Tesseract, which was not found on PATH. {_OCR_HINT}")
    key = prefix or "<installed>"
    tessdata = _TESSDATA.get(key)
    if tessdata is None:
        try:
            tessdata = str(pymupdf.get_tessdata(prefix))
        except Exception as exc:
            raise OcrUnavailableError(
                f"OCR needs Tesseract's language data (tessdata), which was not found: {exc}. "
                f"{_OCR_HINT}"
            ) from None
        _TESSDATA[key] = tessdata
    folder = Path(tessdata)
    missing = [x for x in language.split("+") if not (folder / f"{x}.traineddata").is_file()]
    if missing:
        raise OcrUnavailableError(
            f"Tesseract has no data for language {', '.join(missing)} in {tessdata}; install it "
            f"(Debian/Ubuntu: 'sudo apt-get install tesseract-ocr-{missing[0].lower()}') or pick "
            "another --ocr-language."
        )
    return tessdata


@quiet_mupdf()
def ocr_pdf_page(page: pymupdf.Page, settings: RenderSettings) -> str:
    """OCR text of a PDF page with no text layer; "" (and a warning) if Tesseract fails."""
    return ocr_pdf_page_words(page, settings)[0]


@quiet_mupdf()
def ocr_pdf_page_words(page: pymupdf.Page, settings: RenderSettings) -> tuple[str, list]:
    """OCR text of a PDF page with no text layer and Tesseract's word boxes from the same
    run, in the page's points as a reader sees it (:func:`mupdf_words`); ("", []) and a
    warning if Tesseract fails."""
    try:
        textpage = page.get_textpage_ocr(
            flags=TEXT_FLAGS,
            language=settings.ocr_language,
            dpi=settings.ocr_dpi,
            full=True,
            tessdata=ocr_tessdata(settings.ocr_language),
        )
        text = normalize_text(page.get_text("text", textpage=textpage, sort=True))
        return text, mupdf_words(page, textpage) if text else []
    except OcrUnavailableError:
        raise
    except Exception as exc:
        logger.warning("OCR of page %d failed: %s", page.number + 1, exc)
        return "", []


@quiet_mupdf()
def ocr_image(image: Image.Image, settings: RenderSettings) -> str:
    """OCR text of a bitmap page (image files, TIFF frames); "" if Tesseract fails."""
    return ocr_image_words(image, settings)[0]


@quiet_mupdf()
def ocr_image_words(image: Image.Image, settings: RenderSettings) -> tuple[str, list]:
    """OCR text of a bitmap page and Tesseract's word boxes in ``image``'s pixels, as
    (x0, y0, x1, y1, text, line key); ("", []) and a warning if Tesseract fails."""
    import io

    try:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        pix = pymupdf.Pixmap(buf.getvalue())
        data = pix.pdfocr_tobytes(
            compress=True,
            language=settings.ocr_language,
            tessdata=ocr_tessdata(settings.ocr_language),
        )
        with pymupdf.open("pdf", data) as doc:
            page = doc[0]
            text = normalize_text(page.get_text("text", sort=True, flags=TEXT_FLAGS))
            # The OCR PDF's page is the image at some resolution: points -> pixels.
            sx, sy = image.width / page.rect.width, image.height / page.rect.height
            raw = [
                (x0 * sx, y0 * sy, x1 * sx, y1 * sy, word, key)
                for x0, y0, x1, y1, word, key in (mupdf_words(page) if text else [])
            ]
            return text, raw
    except OcrUnavailableError:
        raise
    except Exception as exc:
        logger.warning("OCR of an image page failed: %s", exc)
        return "", []
