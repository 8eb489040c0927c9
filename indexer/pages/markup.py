"""HTML/XHTML, Markdown and plain text laid out to pages with MuPDF's ``Story``, without a
browser: the source becomes a PDF in memory, whose pages then go through the same
rendering, text layer and OCR as any PDF.

Nothing is fetched: the Story reads resources only from an in-memory archive holding the
images this module vetted, i.e. ``data:`` images and files under the document's own folder
(no ``..``, no absolute paths, no symlink leading out), each a known bitmap within the
pixel limit (or an SVG). Remote images, stylesheets and fonts are dropped. Sources over
:data:`MAX_MARKUP_BYTES` are refused before any layout. Imports the other pages modules (not
pages itself) and indexer.errors.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import io
import re
import threading
import warnings
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from PIL import Image

from indexer.errors import DocumentError
from indexer.pages.mupdf import drain_mupdf_warnings, pymupdf, quiet_mupdf
from indexer.pages.types import RenderSettings

#: HTML, Markdown and text sources bigger than this are refused ("too-large") before layout.
MAX_MARKUP_BYTES = 8 * 1024**2
#: A layout running past this many pages is refused ("too-large").
MAX_LAYOUT_PAGES = 10_000
#: Local and inline images read for one document, in all.
MAX_IMAGE_BYTES = 256 * 1024**2
#: A4, with 2 cm margins.
PAGE = (595.0, 842.0)
MARGIN = 56.0
#: No ``white-space: pre-wrap``: MuPDF 1.2x can loop placing such a block in a table.
CSS = "body { font-size: 11pt } pre, code, .text { font-family: monospace; font-size: 9pt }"
#: A layout overflowing by more than a page this many pages in a row is stuck on a block it
#: cannot split (a tall table row); laid out again with tables as blocks, then refused.
_STALLED = 3

_IMG = re.compile(r"""<img\b(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
_SRC = re.compile(r"""\ssrc\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)""", re.IGNORECASE)
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_TABLE_TAG = re.compile(r"<(/?)(?:table|thead|tbody|tfoot|tr|td|th|caption)\b[^>]*>", re.I)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_HEADING = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_BITMAPS = {"PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"}

_CACHE_LOCK = threading.Lock()
_CACHE: OrderedDict[tuple, tuple[bytes, str | None]] = OrderedDict()
_CACHE_SIZE = 2


def open_markup(
    path: Path, kind: str, settings: RenderSettings
) -> tuple[pymupdf.Document, str | None]:
    """The laid-out pages of an HTML, Markdown or text file as a PDF document, and its
    title. The last two layouts are kept (keyed by path, size and mtime), so that
    describing a file and then rendering it lays it out once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, kind, settings.max_image_pixels)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
    if hit is None:
        hit = layout(path, kind, settings)
        with _CACHE_LOCK:
            _CACHE[key] = hit
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    pdf, title = hit
    with quiet_mupdf():
        return pymupdf.open(stream=pdf, filetype="pdf"), title


def layout(path: Path, kind: str, settings: RenderSettings) -> tuple[bytes, str | None]:
    """Lay a source out to A4 pages: the PDF's bytes and the document's title."""
    text = read_source(path, kind)
    if kind == "markdown":
        markup, title = markdown_html(text), _markdown_title(text)
    elif kind == "text":
        markup, title = text_html(text), None
    else:
        markup, title = text, _html_title(text)
    archive = pymupdf.Archive()
    markup = _with_vetted_images(markup, path, archive, settings)
    with quiet_mupdf():
        try:
            try:
                pdf = _write_pages(path, markup, archive)
            except _Stalled:
                # MuPDF does not split a table row across pages: lay the tables out as blocks
                pdf = _write_pages(path, _TABLE_TAG.sub(r"<\1div>", markup), archive)
        except _Stalled:
            raise DocumentError(
                path,
                "damaged",
                f"{path}: holds a block taller than a page that cannot be split across pages",
            ) from None
        finally:
            drain_mupdf_warnings(path)
    return pdf, title


class _Stalled(Exception):
    """The layout overflows page after page: a block MuPDF cannot split."""


def _write_pages(path: Path, markup: str, archive: pymupdf.Archive) -> bytes:
    try:
        story = pymupdf.Story(markup, user_css=CSS, archive=archive)
        buffer = io.BytesIO()
        writer = pymupdf.DocumentWriter(buffer)
        mediabox = pymupdf.Rect(0, 0, *PAGE)
        where = mediabox + (MARGIN, MARGIN, -MARGIN, -MARGIN)
        more, pages, overflowing = True, 0, 0
        while more:
            pages += 1
            if pages > MAX_LAYOUT_PAGES:
                raise DocumentError(
                    path, "too-large", f"{path}: lays out to more than {MAX_LAYOUT_PAGES:,} pages"
                )
            device = writer.begin_page(mediabox)
            more, filled = story.place(where)
            story.draw(device)
            writer.end_page()
            overflowing = overflowing + 1 if more and filled[3] > where.y1 + where.height else 0
            if overflowing >= _STALLED:
                raise _Stalled()
        writer.close()
    except (DocumentError, _Stalled):
        raise
    except Exception as exc:
        raise DocumentError(path, "damaged", f"{path}: could not be laid out ({exc})") from None
    return buffer.getvalue()


def refuse_over_markup_limit(path: Path, what: str) -> None:
    """:class:`DocumentError` ``too-large`` for a file over ``MAX_MARKUP_BYTES`` (read whole
    into memory), before it is read; ``what`` names the files in the message."""
    size = path.stat().st_size
    if size > MAX_MARKUP_BYTES:
        raise DocumentError(
            path,
            "too-large",
            f"{path}: {size:,} bytes is more than the limit of {MAX_MARKUP_BYTES:,} bytes "
            f"for {what}",
        )


def read_source(path: Path, kind: str) -> str:
    """The file's text, refused by size before it is read, and decoded (BOM, the HTML's
    declared charset, UTF-8, else Windows-1252)."""
    refuse_over_markup_limit(path, f"{kind} files (they are laid out to pages in memory)")
    data = path.read_bytes()
    for bom, codec in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(codec, errors="replace")
    if b"\x00" in data[:65536]:
        raise DocumentError(
            path, "unsupported", f"{path}: named {path.suffix} but its content is not text"
        )
    declared = _CHARSET.search(data[:4096]) if kind == "html" else None
    if declared:
        try:
            return data.decode(codecs.lookup(declared.group(1).decode("ascii")).name, "replace")
        except LookupError:
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def markdown_html(text: str) -> str:
    """CommonMark (with tables and strikethrough; raw HTML kept, its images vetted too)."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    return f"<html><body>{parser.render(text)}</body></html>"


def text_html(text: str) -> str:
    """Plain text in a monospace font, one paragraph element per blank-line-separated block
    (MuPDF lays many small blocks out much faster than one huge one), its line breaks and
    indents kept and long lines wrapped."""
    paragraphs = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    body = "".join(
        f'<p class="text">{"<br/>".join(_text_line(line) for line in p.split(chr(10)))}</p>'
        for p in paragraphs
        if p.strip()
    )
    return f"<html><body>{body}</body></html>"


def _text_line(line: str) -> str:
    line = line.expandtabs(8)
    stripped = line.lstrip(" ")
    return "&#160;" * (len(line) - len(stripped)) + html.escape(stripped)


def _html_title(text: str) -> str | None:
    found = _TITLE.search(text[:65536])
    title = " ".join(html.unescape(found.group(1)).split()) if found else ""
    return title or None


def _markdown_title(text: str) -> str | None:
    found = _HEADING.search(text[:65536])
    return found.group(1).strip() or None if found else None


class _Images:
    """The images one document may show: each vetted once, added to the Story's archive
    under a name of ours, within :data:`MAX_IMAGE_BYTES` in all."""

    def __init__(self, path: Path, archive: pymupdf.Archive, settings: RenderSettings) -> None:
        self.folder = path.resolve().parent
        self.archive = archive
        self.settings = settings
        self.names: dict[str | Path, str | None] = {}
        self.budget = MAX_IMAGE_BYTES

    def name_for(self, src: str) -> str | None:
        """The archive name the image is shown under, or None to drop it."""
        src = html.unescape(src.strip())
        key: str | Path | None = src if src.lower().startswith("data:") else self._local(src)
        if key is None:
            return None
        if key not in self.names:
            self.names[key] = self._add(key)
        return self.names[key]

    def _local(self, src: str) -> Path | None:
        parts = urlsplit(src)
        if parts.scheme or parts.netloc or not parts.path:
            return None  # http:, https:, file:, ftp:, //host, C:\ (a one-letter scheme)
        relative = unquote(parts.path).replace("\\", "/")
        if relative.startswith("/") or ".." in PurePosixPath(relative).parts:
            return None
        try:
            real = (self.folder / relative).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not real.is_relative_to(self.folder) or not real.is_file():
            return None
        return real

    def _add(self, key: str | Path) -> str | None:
        data = _data_uri(key) if isinstance(key, str) else _read(key, self.budget)
        if data is None or len(data) > self.budget:
            return None
        suffix = _image_type(data, self.settings)
        if suffix is None:
            return None
        self.budget -= len(data)
        name = f"pagelens-image-{len(self.names)}.{suffix}"
        self.archive.add((data, name))
        return name


def _with_vetted_images(
    markup: str, path: Path, archive: pymupdf.Archive, settings: RenderSettings
) -> str:
    """``markup`` with each ``<img>`` pointing at a vetted image in ``archive``, or at
    nothing (its ``src`` removed; the ``alt`` text stays)."""
    images = _Images(path, archive, settings)

    def rewrite(match: re.Match[str]) -> str:
        tag = match.group(0)
        found = _SRC.search(tag)
        if not found:
            return tag
        value = found.group(1)
        if value[:1] in "\"'":
            value = value[1:-1]
        name = images.name_for(value)
        replacement = f' src="{name}"' if name else ""
        return tag[: found.start()] + replacement + tag[found.end() :]

    return _IMG.sub(rewrite, markup)


def _data_uri(uri: str) -> bytes | None:
    header, comma, payload = uri.partition(",")
    if not comma:
        return None
    try:
        if header.lower().endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        return None


def _read(path: Path, budget: int) -> bytes | None:
    try:
        if path.stat().st_size > budget:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _image_type(data: bytes, settings: RenderSettings) -> str | None:
    """The file suffix of a bitmap Pillow recognises within the pixel limit, "svg" for an
    SVG, else None."""
    head = data[:1024].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "svg"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                width, height, kind = image.width, image.height, image.format
    except Exception:
        return None
    if kind not in _BITMAPS or width * height > settings.max_image_pixels:
        return None
    return {"JPEG": "jpg", "TIFF": "tif"}.get(kind, kind.lower())
