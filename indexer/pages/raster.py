"""The one way bytes from a user become a PIL image: an allow-list of formats, pixel limits.

Pillow's ``Image.open`` tries every plugin it has, and some (EPS, PostScript) hand the data
to Ghostscript where it is installed; a small PNG can also claim 7000x7000 pixels and cost
hundreds of MB once decoded. So every place that decodes user bytes (the API's image inputs,
the app's uploads and image queries, ``pagelens search --image``, image documents) goes
through :func:`open_image` (format allow-list, lazy) or :func:`decode_image` (allow-list,
pixel cap, and downscaling *while* decoding).
"""

from __future__ import annotations

import math
import os
from typing import IO

from PIL import Image, UnidentifiedImageError

from indexer.errors import PageLensError

#: The formats PageLens decodes (Pillow's format ids); anything else is refused unread.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
#: Most pixels an image may have to be decoded at all. JPEGs are decoded at a reduced scale
#: (1/2..1/8, libjpeg's draft mode) when a target is given, so they may be larger.
MAX_DECODED_PIXELS = 16_000_000
MAX_JPEG_PIXELS = 64_000_000
#: GME sees at most 1280 visual tokens of 28x28 pixels (about 1 M pixels); images are kept
#: at up to four times that after decoding (margin for GME's own first resize), so inputs
#: up to ~4 M pixels embed exactly as before and larger ones never stay in memory at full size.
GME_PIXELS = 1280 * 28 * 28
TARGET_PIXELS = 4 * GME_PIXELS

# Modes Image.reduce handles as they are; others are widened first.
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "F"})
_WIDER = {"1": "L", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I", "YCbCr": "RGB"}

Source = str | os.PathLike[str] | IO[bytes]


class ImageRefusedError(PageLensError):
    """Bytes that are not an image PageLens decodes. ``reason``: ``format``, ``too-large``
    or ``unreadable``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def allowed_formats_text() -> str:
    return "PNG, JPEG, WebP, TIFF, BMP or GIF"


def open_image(source: Source) -> Image.Image:
    """``Image.open`` limited to :data:`ALLOWED_FORMATS` (reads the header only)."""
    try:
        return Image.open(source, formats=list(ALLOWED_FORMATS))
    except UnidentifiedImageError as exc:
        raise ImageRefusedError(
            f"not an image in an accepted format ({allowed_formats_text()})", "format"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageRefusedError(str(exc), "too-large") from exc
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated headers: OSError, SyntaxError, ValueError, ...
        raise ImageRefusedError(
            f"unreadable image ({type(exc).__name__}: {exc})", "unreadable"
        ) from exc


def decode_image(
    source: Source,
    *,
    max_pixels: int = MAX_DECODED_PIXELS,
    max_jpeg_pixels: int = MAX_JPEG_PIXELS,
    target_pixels: int | None = TARGET_PIXELS,
) -> Image.Image:
    """Open and decode an image, never holding more than about ``max_pixels`` of it.

    With ``target_pixels``, a larger JPEG is decoded at 1/2, 1/4 or 1/8 scale (Pillow's
    ``draft``) and any image still above the target is shrunk by an integer factor
    (``reduce``, a box filter) right after decoding, so the result has at most
    ``target_pixels``. Raises :class:`ImageRefusedError` (and FileNotFoundError for paths).
    """
    im = open_image(source)
    try:
        width, height = im.size
        jpeg = im.format in ("JPEG", "MPO") and target_pixels is not None
        limit = max(max_pixels, max_jpeg_pixels) if jpeg else max_pixels
        if width * height > limit:
            raise ImageRefusedError(f"{width}x{height} pixels, more than {limit:,}", "too-large")
        if target_pixels is not None and width * height > target_pixels:
            scale = math.sqrt(target_pixels / (width * height))
            im.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))
        im.load()
        if target_pixels is not None and im.width * im.height > target_pixels:
            factor = math.ceil(math.sqrt(im.width * im.height / target_pixels))
            if im.mode not in _REDUCIBLE:
                im = im.convert(_WIDER.get(im.mode, "RGBA"))
            im = im.reduce(factor)
        if im.width * im.height > limit:  # a format whose draft grew it: never trust it
            raise ImageRefusedError(f"{im.width}x{im.height} pixels after decoding", "too-large")
        return im
    except ImageRefusedError:
        im.close()
        raise
    except Image.DecompressionBombError as exc:
        im.close()
        raise ImageRefusedError(str(exc), "too-large") from exc
    except Exception as exc:  # truncated or corrupt data surfaces at load()
        im.close()
        raise ImageRefusedError(
            f"unreadable image ({type(exc).__name__}: {exc})", "unreadable"
        ) from exc
