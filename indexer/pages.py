"""Turn input files into page images and page text, one page at a time.

This module knows nothing of models or storage: every function takes a file, a page number
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
warnings rather than failing; those warnings go to this module's logger.

PyMuPDF documents are not thread-safe: use these functions from one thread per document
(separate processes for parallelism).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from PIL import Image

from indexer.errors import DocumentError, PageLensError
from indexer.imageio import ImageRefusedError, open_image

# pymupdf 2.0 imports its optional add-ons pymupdf.layout and pymupdf4llm as it is imported;
# both load onnxruntime, whose telemetry starts at once (a DNS lookup of Microsoft's events
# host, a device id under ~/.cache). PageLens uses neither, so pymupdf is imported with them
# hidden (its own ``except ImportError`` skips them), then unhidden: nothing else in the
# process changes and anyone may still import them (only pymupdf 2.0's Document.to_markdown
# shortcut stays off; pymupdf4llm.to_markdown works). pymupdf 2.1 imports them lazily.
_HIDDEN = [name for name in ("pymupdf.layout", "pymupdf4llm") if name not in sys.modules]
for _name in _HIDDEN:
    sys.modules[_name] = None  # type: ignore[assignment]  # import raises ImportError
try:
    import pymupdf
finally:
    for _name in _HIDDEN:
        if _name in sys.modules and sys.modules[_name] is None:
            del sys.modules[_name]

logger = logging.getLogger(__name__)

_MUPDF_QUIET_LOCK = threading.Lock()
_mupdf_quiet_depth = 0
_mupdf_saved: tuple[bool, bool] = (True, False)


@contextmanager
def _quiet_mupdf() -> Iterator[None]:
    """While our code calls MuPDF, keep its messages in its buffer, not on stderr.

    MuPDF prints warnings and errors to stderr by default; we forward them to logging
    instead (see :func:`_drain_mupdf_warnings`). The switch is process-wide, so it is
    flipped only while PageLens works with MuPDF (nested and concurrent uses share one
    count) and then put back as it was: importing this module changes nothing for the
    rest of the process. Also usable as a decorator.
    """
    global _mupdf_quiet_depth, _mupdf_saved
    with _MUPDF_QUIET_LOCK:
        if _mupdf_quiet_depth == 0:
            _mupdf_saved = (
                bool(pymupdf.TOOLS.mupdf_display_errors()),
                bool(pymupdf.TOOLS.mupdf_display_warnings()),
            )
            pymupdf.TOOLS.mupdf_display_errors(False)
            pymupdf.TOOLS.mupdf_display_warnings(False)
        _mupdf_quiet_depth += 1
    try:
        yield
    finally:
        with _MUPDF_QUIET_LOCK:
            _mupdf_quiet_depth -= 1
            if _mupdf_quiet_depth == 0:
                pymupdf.TOOLS.mupdf_display_errors(_mupdf_saved[0])
                pymupdf.TOOLS.mupdf_display_warnings(_mupdf_saved[1])


#: Pixel side Qwen2-VL works in (patch 14 x merge 2).
PATCH = 28

PDF_SUFFIXES = frozenset({".pdf"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
#: Suffixes picked up when a folder is scanned (lower case; matching ignores case).
SUPPORTED_SUFFIXES = PDF_SUFFIXES | IMAGE_SUFFIXES

# How many leading bytes we read to recognise a file. The PDF spec allows junk before
# "%PDF-"; Acrobat looks in the first 1024 bytes and so do we.
_SNIFF_BYTES = 1024

# Text-layer flags: like MuPDF's default for "text" but without TEXT_PRESERVE_LIGATURES (so
# "ﬁ" comes out as "fi", which is what people type) and without
# TEXT_USE_CID_FOR_UNKNOWN_UNICODE (which emits raw glyph ids as characters, i.e. garbage;
# without it unknown glyphs become U+FFFD, which the garbage check can see), plus
# TEXT_DEHYPHENATE to join words broken across lines.
_TEXT_FLAGS = (
    pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP | pymupdf.TEXT_DEHYPHENATE
)
# Above this share of unreadable characters a text layer is treated as absent.
_GARBAGE_SHARE = 0.3


@dataclass(frozen=True)
class RenderSettings:
    """How pages become pixels; stored with a collection so that re-renders match.

    ``max_pixels`` is the model processor's ``max_pixels`` (visual tokens x 28 x 28); every
    rendered page has at least that many pixels when the page has enough detail to offer
    (vector PDF pages always do; bitmaps are never upscaled) and never more than about 10%
    over it.
    """

    #: Target pixel count per page (GME's default: 1280 visual tokens).
    max_pixels: int = 1280 * PATCH * PATCH
    #: Files bigger than this are refused ("too-large").
    max_file_bytes: int = 2 * 1024**3
    #: Bitmaps (image files, TIFF frames) declaring more pixels are refused ("too-large");
    #: also the decompression-bomb limit handed to Pillow. 20,000 x 20,000 fits.
    max_image_pixels: int = 500_000_000
    #: Longest / shortest side beyond which pages are padded with white (Qwen refuses > 200).
    max_aspect_ratio: float = 200.0
    #: No side of a rendered page is shorter than this (Qwen needs >= one 28 px patch).
    min_side: int = PATCH
    #: Upper bound on PDF zoom (16 = 1152 dpi), so a stamp-sized page is not blown up to the
    #: full budget; the zoom still goes as high as needed to reach ``min_side``.
    max_zoom: float = 16.0
    #: OCR pages without a text layer (scans, image files) with Tesseract; off by default.
    ocr: bool = False
    #: Tesseract language(s) for OCR, e.g. "eng" or "eng+deu".
    ocr_language: str = "eng"
    #: Resolution PDF pages are rendered at for OCR (separately from the model's image).
    ocr_dpi: int = 300

    def __post_init__(self) -> None:
        if self.max_pixels < self.min_side * self.min_side:
            raise ValueError(f"max_pixels must be at least {self.min_side**2}")
        if self.max_aspect_ratio < 1:
            raise ValueError("max_aspect_ratio must be >= 1")
        if self.max_file_bytes <= 0 or self.max_image_pixels <= 0 or self.max_zoom <= 0:
            raise ValueError("limits must be positive")

    @classmethod
    def for_tokens(cls, max_image_tokens: int, **overrides: object) -> RenderSettings:
        """Settings whose pixel budget matches a model's visual-token budget."""
        return cls(max_pixels=int(max_image_tokens) * PATCH * PATCH, **overrides)  # type: ignore[arg-type]

    def as_dict(self) -> dict:
        """Plain JSON-able dict, for a collection's meta."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DocumentInfo:
    """What we know about an input file before rendering any page."""

    path: Path
    kind: str  # "pdf" | "image"
    page_count: int
    sha256: str
    title: str | None
    encrypted: bool


@dataclass
class PageImage:
    """One rendered page: RGB pixels upright as a reader sees them, and its text layer."""

    number: int  # 1-based
    image: Image.Image
    text: str  # "" for scans and image files
    width_pt: float
    height_pt: float


class PageRenderError(DocumentError):
    """A single page of an otherwise readable document could not be rendered."""

    def __init__(self, path: str | os.PathLike[str], page: int, message: str) -> None:
        super().__init__(str(path), "damaged", message)
        self.page = page


# --------------------------------------------------------------------------------------
# Files


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (files can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def iter_input_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Expand files and folders into the files to index.

    Folders are walked recursively (symlinked folders are not followed, to avoid loops),
    hidden files and folders are skipped, and only :data:`SUPPORTED_SUFFIXES` are kept,
    sorted by path. A path named explicitly is always yielded, whatever its suffix and even
    if it does not exist, so that it is refused later with a reason instead of silently
    ignored. Each file is yielded once.
    """
    seen: set[Path] = set()

    def fresh(path: Path) -> bool:
        try:
            key = path.resolve()
        except OSError:
            key = path.absolute()
        if key in seen:
            return False
        seen.add(key)
        return True

    for raw in paths:
        root = Path(raw).expanduser()
        if not root.is_dir():
            if fresh(root):
                yield root
            continue
        if _is_collection(root):
            continue
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(
            root, onerror=lambda e: logger.warning("cannot read folder: %s", e)
        ):
            dirnames[:] = sorted(
                d for d in dirnames if not _is_hidden(d) and not _is_collection(Path(dirpath, d))
            )
            for name in filenames:
                if _is_hidden(name) or Path(name).suffix.lower() not in SUPPORTED_SUFFIXES:
                    continue
                candidate = Path(dirpath) / name
                if candidate.is_file():
                    found.append(candidate)
        for path in sorted(found, key=lambda p: p.relative_to(root).parts):
            if fresh(path):
                yield path


def _is_collection(folder: Path) -> bool:
    """A PageLens collection (its page images are not documents to index again)."""
    if (folder / "catalog.sqlite").is_file():
        logger.warning("skipping %s: it is a PageLens collection, not documents", folder)
        return True
    return False


def _sniff(head: bytes) -> str | None:
    """Recognise a file from its first bytes: "pdf", "image" or None."""
    if b"%PDF-" in head[:_SNIFF_BYTES]:
        return "pdf"
    if (
        head.startswith(b"\x89PNG\r\n\x1a\n")
        or head.startswith(b"\xff\xd8\xff")
        or head.startswith((b"GIF87a", b"GIF89a"))
        or head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"))
        or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")
        or head.startswith(b"BM")
    ):
        return "image"
    return None


def _classify(path: Path, settings: RenderSettings) -> str:
    """Check that a file exists, is not empty nor too big, and say whether it is a PDF or an
    image. The content decides, not the suffix: a ``.pdf`` that is really an HTML error page
    (a common failed download) is refused, and a PDF saved without a suffix is accepted.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DocumentError(path, "not-found", f"{path}: no such file") from None
    except OSError as exc:
        raise DocumentError(path, "not-found", f"{path}: cannot be read ({exc})") from None
    if not path.is_file():
        raise DocumentError(path, "unsupported", f"{path}: not a regular file")
    if stat.st_size == 0:
        raise DocumentError(path, "empty", f"{path}: the file is empty (0 bytes)")
    if stat.st_size > settings.max_file_bytes:
        raise DocumentError(
            path,
            "too-large",
            f"{path}: {stat.st_size:,} bytes is more than the limit of "
            f"{settings.max_file_bytes:,} bytes",
        )
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise DocumentError(path, "not-found", f"{path}: cannot be read ({exc})") from None
    kind = _sniff(head)
    if kind is not None:
        return kind
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        raise DocumentError(
            path, "not-a-pdf", f"{path}: named .pdf but its content is not a PDF document"
        )
    if suffix in IMAGE_SUFFIXES:
        raise DocumentError(
            path, "bad-image", f"{path}: named {suffix} but its content is not a known image"
        )
    raise DocumentError(
        path,
        "unsupported",
        f"{path}: not a PDF nor a supported image ({', '.join(sorted(SUPPORTED_SUFFIXES))})",
    )


# --------------------------------------------------------------------------------------
# Geometry


def _plan_scale(width: float, height: float, settings: RenderSettings, *, upscale: bool) -> float:
    """The scale (pixels per unit) at which a ``width x height`` page fills the pixel budget.

    The budget is spent on the *final* image, padding included: when the page is more
    elongated than ``max_aspect_ratio`` (or than ``min_side`` allows within the budget), the
    long side gets ``sqrt(budget * ratio)`` pixels and the short side is padded later.
    """
    budget = settings.max_pixels
    long_side, short_side = max(width, height), min(width, height)
    ratio = long_side / short_side
    ratio_cap = min(settings.max_aspect_ratio, max(1.0, budget / settings.min_side**2))
    target_long = math.sqrt(budget * min(ratio, ratio_cap))
    scale = target_long / long_side
    if upscale:
        # Cap the zoom for tiny pages, but always allow enough to reach min_side.
        scale = min(scale, max(settings.max_zoom, settings.min_side / short_side))
    else:
        scale = min(scale, 1.0)
    return scale


def _padded_size(width: int, height: int, settings: RenderSettings) -> tuple[int, int]:
    """Smallest size >= (width, height) that Qwen accepts: sides >= min_side, ratio <= max."""
    width = max(width, settings.min_side)
    height = max(height, settings.min_side)
    if width >= height:
        height = max(height, math.ceil(width / settings.max_aspect_ratio))
    else:
        width = max(width, math.ceil(height / settings.max_aspect_ratio))
    return width, height


def _pad(image: Image.Image, settings: RenderSettings) -> Image.Image:
    """Pad with white (content centred) to the size Qwen accepts; no-op for normal pages."""
    size = _padded_size(image.width, image.height, settings)
    if size == image.size:
        return image
    canvas = Image.new("RGB", size, (255, 255, 255))
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return canvas


# --------------------------------------------------------------------------------------
# Text


_SPACES = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# Invisible characters that only get in the way of search (soft hyphen, zero-width space,
# BOM / zero-width no-break space, word joiner).
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\ufeff\u2060"), None)


def _is_unreadable(ch: str) -> bool:
    return ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Co", "Cn", "Cs")


def normalize_text(raw: str) -> str:
    """Clean a text layer for embedding and display, or return "" if it is garbage.

    NFKC folds ligatures and full-width forms into what people type; NULs and control
    characters go; runs of spaces collapse to one and blank-line runs to one blank line, but
    line breaks stay (they carry table and heading structure). If most of what is left is
    replacement characters or unprintable code points (a font without a usable ToUnicode
    map), the text layer is worse than none and "" is returned.
    """
    if not raw:
        return ""
    text = unicodedata.normalize("NFKC", raw)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\f", "\n").replace("\v", "\n").replace("\u2028", "\n")
    text = text.replace("\u2029", "\n").translate(_INVISIBLE)
    visible = [ch for ch in text if not ch.isspace()]
    if not visible:
        return ""
    bad = sum(1 for ch in visible if _is_unreadable(ch))
    if bad / len(visible) > _GARBAGE_SHARE:
        return ""
    if bad:
        text = "".join(" " if _is_unreadable(ch) and ch != "\n" else ch for ch in text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


# --------------------------------------------------------------------------------------
# PDF


def _drain_mupdf_warnings(path: Path) -> None:
    """Move MuPDF's buffered warnings (e.g. "repairing PDF document") to the log."""
    text = pymupdf.TOOLS.mupdf_warnings(reset=True)
    if text:
        logger.debug("MuPDF warnings for %s:\n%s", path, text)


@_quiet_mupdf()
def _open_pdf(path: Path, password: str | None) -> pymupdf.Document:
    """Open, repair if needed, and authenticate a PDF; refuse it with a reason otherwise."""
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as exc:  # MuPDF raises FileDataError, RuntimeError or its own types
        _drain_mupdf_warnings(path)
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
        _drain_mupdf_warnings(path)
        raise
    _drain_mupdf_warnings(path)
    return doc


def _page_zoom(page: pymupdf.Page, settings: RenderSettings) -> float:
    """Zoom for one page, nudged up until MuPDF's rounded pixmap meets the budget."""
    rect = page.rect  # already rotated: what a reader sees
    zoom = _plan_scale(rect.width, rect.height, settings, upscale=True)
    target = settings.max_pixels
    for _ in range(4):
        box = (rect * pymupdf.Matrix(zoom, zoom)).irect
        w, h = _padded_size(max(box.width, 1), max(box.height, 1), settings)
        if w * h >= target or zoom >= settings.max_zoom:
            break
        # MuPDF rounds edges within 0.001 px inward; add a hair more than one pixel's worth.
        zoom *= 1.0 + 1.0 / max(box.width, box.height, 1)
    return zoom


@_quiet_mupdf()
def _render_pdf_page(
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
        text = normalize_text(page.get_text("text", sort=True, flags=_TEXT_FLAGS))
        if not text and settings.ocr:
            text = _ocr_pdf_page(page, settings)
    except DocumentError:
        raise
    except Exception as exc:
        _drain_mupdf_warnings(path)
        raise PageRenderError(
            path, number, f"{path}: page {number} could not be rendered ({exc})"
        ) from None
    _drain_mupdf_warnings(path)
    return PageImage(
        number=number,
        image=_pad(image, settings),
        text=text,
        width_pt=float(rect.width),
        height_pt=float(rect.height),
    )


# --------------------------------------------------------------------------------------
# Images

_PIL_LIMIT_LOCK = threading.Lock()
_T = TypeVar("_T")

# What ImageOps.exif_transpose does, applied after downscaling so that the (possibly huge)
# original is never copied just to be rotated.
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _within_our_limit(call: Callable[[], _T], limit: int) -> _T:
    """Run a Pillow call under our own pixel limit rather than Pillow's.

    Pillow refuses images past ``2 * Image.MAX_IMAGE_PIXELS`` (about 179 M pixels) as
    decompression bombs, which would refuse a legitimate 20,000 x 20,000 scan; we apply our
    own explicit limit (``max_image_pixels``) anyway. Pillow offers only a process-wide
    global, so the call first runs as it is (almost every image: the global is untouched),
    and only when Pillow refuses it and our limit is higher does it run once more with the
    global raised to our limit, under a lock, restored at once.
    """
    try:
        return call()
    except (Image.DecompressionBombError, ImageRefusedError) as exc:
        bomb = exc if isinstance(exc, Image.DecompressionBombError) else exc.__cause__
        pillow = Image.MAX_IMAGE_PIXELS
        if not isinstance(bomb, Image.DecompressionBombError) or not pillow:
            raise
        if limit <= 2 * pillow:
            raise
    with _PIL_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            return call()
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _bad_image(path: Path, exc: BaseException) -> DocumentError:
    return DocumentError(path, "bad-image", f"{path}: damaged or unreadable image ({exc})")


def _too_many_pixels(path: Path, size: tuple[int, int], settings: RenderSettings) -> DocumentError:
    return DocumentError(
        path,
        "too-large",
        f"{path}: image of {size[0]:,} x {size[1]:,} pixels is more than the limit of "
        f"{settings.max_image_pixels:,} pixels",
    )


def _open_image(path: Path, settings: RenderSettings) -> tuple[Image.Image, int]:
    """Open (lazily) an image file; return it and its page count (TIFF frames)."""
    try:
        # PNG, JPEG, WebP, TIFF, BMP, GIF only
        image = _within_our_limit(lambda: open_image(path), settings.max_image_pixels)
    except ImageRefusedError as exc:
        reason = "too-large" if exc.reason == "too-large" else "bad-image"
        raise DocumentError(path, reason, f"{path}: {exc}") from None
    except Exception as exc:  # UnidentifiedImageError, OSError, SyntaxError, ...
        raise _bad_image(path, exc) from None
    if image.width * image.height > settings.max_image_pixels:
        size = image.size
        image.close()
        raise _too_many_pixels(path, size, settings)
    frames = 1
    if image.format == "TIFF":
        try:
            frames = max(1, int(getattr(image, "n_frames", 1)))
        except Exception as exc:
            image.close()
            raise _bad_image(path, exc) from None
    return image, frames


def _dpi(image: Image.Image) -> tuple[float, float]:
    dpi = image.info.get("dpi")
    try:
        x, y = float(dpi[0]), float(dpi[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return 72.0, 72.0
    # Writers that know no resolution store 1 (or 0): treat anything implausible as 72 dpi.
    if not (20 <= x <= 10_000 and 20 <= y <= 10_000):
        return 72.0, 72.0
    return x, y


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency flattened onto white (as a viewer shows it) and 16-bit or
    float images scaled instead of clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if image.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


# Modes Pillow resizes (with LANCZOS) as they are; others are widened first.
_RESIZABLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "F"})


def _widen_mode(image: Image.Image) -> Image.Image:
    """A resizable version of a bilevel, palette or 16-bit image."""
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("P", "PA"):
        return image.convert("RGBA")
    return _to_rgb(image)


def _render_image_frame(
    image: Image.Image, number: int, path: Path, settings: RenderSettings
) -> PageImage:
    """Decode one frame at (or near) the budget, orient it, pad it."""
    try:
        if image.tell() != number - 1:  # pages may be asked in any order
            _within_our_limit(lambda: image.seek(number - 1), settings.max_image_pixels)
        if image.width * image.height > settings.max_image_pixels:
            raise _too_many_pixels(path, image.size, settings)
        orientation = image.getexif().get(0x0112, 1)
        dpi_x, dpi_y = _dpi(image)
        width, height = image.size
        scale = _plan_scale(width, height, settings, upscale=False)
        target = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
        if scale < 1:
            # JPEG (and MPO, as phones write): libjpeg decodes at 1/2, 1/4 or 1/8 scale
            # directly, so a 20k x 20k photo never exists in memory at full size; draft
            # keeps the result >= target. A no-op for other formats.
            image.draft("RGB", target)
        _within_our_limit(image.load, settings.max_image_pixels)
        if scale < 1:
            # Shrink in the stored mode first: converting a 20k x 20k greyscale scan to RGB
            # at full size would triple its memory for nothing.
            source = image if image.mode in _RESIZABLE_MODES else _widen_mode(image)
            frame = _to_rgb(source.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0))
            del source
        else:
            frame = _to_rgb(image)
            if frame is image:
                frame = frame.copy()  # detach from the file (and from later seeks)
        if orientation in _EXIF_TRANSPOSE:
            frame = frame.transpose(_EXIF_TRANSPOSE[orientation])
    except DocumentError:
        raise
    except Image.DecompressionBombError as exc:
        raise DocumentError(path, "too-large", f"{path}: {exc}") from None
    except Exception as exc:  # truncated or corrupt data surfaces at load()
        raise _bad_image(path, exc) from None
    width_pt, height_pt = width * 72.0 / dpi_x, height * 72.0 / dpi_y
    if orientation in (5, 6, 7, 8):
        width_pt, height_pt = height_pt, width_pt
    return PageImage(
        number=number,
        image=_pad(frame, settings),
        text=_ocr_image(frame, settings) if settings.ocr else "",
        width_pt=width_pt,
        height_pt=height_pt,
    )


# --------------------------------------------------------------------------------------
# Public API


def inspect_document(
    path: str | os.PathLike[str],
    *,
    password: str | None = None,
    settings: RenderSettings = RenderSettings(),  # noqa: B008 - frozen, so safe to share
) -> DocumentInfo:
    """Check that a file can be indexed and describe it, without rendering anything.

    Raises :class:`DocumentError` with the reason a user needs (see ``indexer.errors``).
    Owner-password-only PDFs (permissions only) open without a password; ``encrypted`` is
    True for them too.
    """
    path = Path(path)
    kind = _classify(path, settings)
    if kind == "pdf":
        with _quiet_mupdf():
            count, title, encrypted = _pdf_info(path, password)
    else:
        image, count = _open_image(path, settings)
        image.close()
        title, encrypted = None, False
    return DocumentInfo(
        path=path,
        kind=kind,
        page_count=count,
        sha256=file_sha256(path),
        title=title,
        encrypted=encrypted,
    )


def _pdf_info(path: Path, password: str | None) -> tuple[int, str | None, bool]:
    """Page count, title and whether it is encrypted, of a PDF."""
    doc = _open_pdf(path, password)
    try:
        metadata = doc.metadata or {}
        title = (metadata.get("title") or "").strip() or None
        return doc.page_count, title, bool(metadata.get("encryption")) or bool(doc.is_encrypted)
    finally:
        doc.close()


def _check_numbers(path: Path, wanted: Iterable[int] | None, count: int) -> Iterator[int]:
    if wanted is None:
        yield from range(1, count + 1)
        return
    for number in wanted:
        if not 1 <= int(number) <= count:
            raise ValueError(f"{path}: page {number} out of range 1..{count}")
        yield int(number)


def render_pages(
    path: str | os.PathLike[str],
    *,
    settings: RenderSettings = RenderSettings(),  # noqa: B008 - frozen, so safe to share
    password: str | None = None,
    pages: Iterable[int] | None = None,
) -> Iterator[PageImage]:
    """Yield the pages of a PDF or image file, one at a time, in the order asked.

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
    kind = _classify(path, settings)
    if kind == "pdf":
        doc = _open_pdf(path, password)
        try:
            for number in _check_numbers(path, pages, doc.page_count):
                yield _render_pdf_page(doc, number, path, settings)
        finally:
            doc.close()
    else:
        image, count = _open_image(path, settings)
        try:
            for number in _check_numbers(path, pages, count):
                yield _render_image_frame(image, number, path, settings)
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
    if _classify(path, settings) != "pdf":
        image, count = _open_image(path, settings)
        image.close()
        _check_numbers_now(path, number, count)
        return render_page(path, number, settings=settings).text if settings.ocr else ""
    with _quiet_mupdf():
        return _pdf_page_text(path, number, password, settings)


def _pdf_page_text(path: Path, number: int, password: str | None, settings: RenderSettings) -> str:
    doc = _open_pdf(path, password)
    try:
        _check_numbers_now(path, number, doc.page_count)
        try:
            page = doc.load_page(number - 1)
            raw = page.get_text("text", sort=True, flags=_TEXT_FLAGS)
        except Exception as exc:
            raise PageRenderError(
                path, number, f"{path}: text of page {number} could not be read ({exc})"
            ) from None
        text = normalize_text(raw)
        if not text and settings.ocr:
            text = _ocr_pdf_page(page, settings)
        return text
    finally:
        doc.close()
        _drain_mupdf_warnings(path)


def _check_numbers_now(path: Path, number: int, count: int) -> None:
    for _ in _check_numbers(path, [number], count):
        pass


# --------------------------------------------------------------------------------------
# Query images and OCR


def fit_image(
    image: Image.Image,
    settings: RenderSettings = RenderSettings(),  # noqa: B008 - frozen, so safe to share
) -> Image.Image:
    """An in-memory image (a query screenshot, photo or figure) prepared the way an image
    file becomes a page: EXIF-oriented, RGB (transparency onto white), downscaled (never up)
    to the pixel budget, and padded to an aspect ratio the model accepts."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image) or image
    frame = _to_rgb(image)
    scale = _plan_scale(frame.width, frame.height, settings, upscale=False)
    if scale < 1:
        target = (max(1, math.ceil(frame.width * scale)), max(1, math.ceil(frame.height * scale)))
        frame = frame.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return _pad(frame, settings)


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


@_quiet_mupdf()
def _ocr_pdf_page(page: pymupdf.Page, settings: RenderSettings) -> str:
    """OCR text of a PDF page with no text layer; "" (and a warning) if Tesseract fails."""
    try:
        textpage = page.get_textpage_ocr(
            flags=_TEXT_FLAGS,
            language=settings.ocr_language,
            dpi=settings.ocr_dpi,
            full=True,
            tessdata=ocr_tessdata(settings.ocr_language),
        )
        return normalize_text(page.get_text("text", textpage=textpage, sort=True))
    except OcrUnavailableError:
        raise
    except Exception as exc:
        logger.warning("OCR of page %d failed: %s", page.number + 1, exc)
        return ""


@_quiet_mupdf()
def _ocr_image(image: Image.Image, settings: RenderSettings) -> str:
    """OCR text of a bitmap page (image files, TIFF frames); "" if Tesseract fails."""
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
            return normalize_text(doc[0].get_text("text", sort=True, flags=_TEXT_FLAGS))
    except OcrUnavailableError:
        raise
    except Exception as exc:
        logger.warning("OCR of an image page failed: %s", exc)
        return ""
