"""Documents MuPDF opens itself (EPUB, XPS, FB2, MOBI, CBZ, SVG) and the laid-out markup
kinds (:mod:`indexer.pages.markup`): each opened as a MuPDF document whose pages render
like a PDF's. Imports the other pages modules (not pages itself) and indexer.errors."""

from __future__ import annotations

from pathlib import Path

from indexer.errors import DocumentError
from indexer.pages.files import MARKUP_KINDS, NATIVE_KINDS
from indexer.pages.markup import open_markup, refuse_over_markup_limit
from indexer.pages.mupdf import drain_mupdf_warnings, pymupdf, quiet_mupdf
from indexer.pages.pdf import document_page_text
from indexer.pages.types import RenderSettings

#: MuPDF's filetype for each native kind.
_FILETYPES = {k: k for k in ("epub", "xps", "fb2", "mobi", "cbz", "svg")}
#: Kinds that are XML text, read into memory (bounded like markup) and opened from there,
#: so MuPDF has no folder to read linked files from.
_XML_KINDS = {"fb2", "svg"}


@quiet_mupdf()
def open_paged(
    path: Path, kind: str, settings: RenderSettings
) -> tuple[pymupdf.Document, str | None]:
    """A native or markup document opened for rendering, and its title."""
    if kind in MARKUP_KINDS:
        return open_markup(path, kind, settings)
    if kind not in NATIVE_KINDS:
        raise DocumentError(path, "unsupported", f"{path}: no reader for {kind} documents")
    doc = _open_native(path, kind)
    try:
        count = doc.page_count
        if count <= 0:
            raise DocumentError(path, "no-pages", f"{path}: the {kind.upper()} has no pages")
        title = ((doc.metadata or {}).get("title") or "").strip() or None
    except DocumentError:
        doc.close()
        raise
    except Exception as exc:
        doc.close()
        raise DocumentError(path, "damaged", f"{path}: unreadable {kind.upper()} ({exc})") from None
    finally:
        drain_mupdf_warnings(path)
    return doc, title


@quiet_mupdf()
def _open_native(path: Path, kind: str) -> pymupdf.Document:
    _check_content(path, kind)
    try:
        if kind in _XML_KINDS:
            return pymupdf.open(stream=path.read_bytes(), filetype=_FILETYPES[kind])
        return pymupdf.open(path, filetype=_FILETYPES[kind])
    except Exception as exc:
        raise DocumentError(
            path, "damaged", f"{path}: damaged {kind.upper()} that MuPDF cannot open ({exc})"
        ) from None
    finally:
        drain_mupdf_warnings(path)


def _check_content(path: Path, kind: str) -> None:
    """Refuse a file whose first bytes do not fit its suffix (a failed download saved
    under the book's name), and an XML one too big to read into memory."""
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if kind in {"epub", "xps", "cbz"}:
        fits = head.startswith(b"PK\x03\x04")
    elif kind == "mobi":
        fits = head[60:68] in {b"BOOKMOBI", b"TEXtREAd"}
    else:
        fits = b"\x00" not in head and b"<" in head
        refuse_over_markup_limit(path, f"{kind.upper()} files")
    if not fits:
        raise DocumentError(
            path, "damaged", f"{path}: named {path.suffix} but its content is not {kind.upper()}"
        )


def paged_info(path: Path, kind: str, settings: RenderSettings) -> tuple[int, str | None]:
    """Page count and title of a native or markup document."""
    doc, title = open_paged(path, kind, settings)
    try:
        return doc.page_count, title
    finally:
        doc.close()


def paged_text(path: Path, kind: str, number: int, settings: RenderSettings) -> str:
    """The normalised text layer of one page (OCR'd when empty and ``settings.ocr``)."""
    doc, _ = open_paged(path, kind, settings)
    with quiet_mupdf():
        return document_page_text(doc, path, number, settings)
