"""Bitmaps: the one way bytes from a user become a PIL image, and image files as documents.

Pillow's ``Image.open`` tries every plugin it has, and some (EPS, PostScript) hand the data
to Ghostscript where it is installed; a small PNG can also claim 7000x7000 pixels and cost
hundreds of MB once decoded. So every place that decodes user bytes (the API's image inputs,
the app's uploads and image queries, ``pagelens search --image``, image documents) goes
through :func:`open_image` (format allow-list, lazy) or :func:`decode_image` (allow-list,
pixel cap, and downscaling *while* decoding).

Pixels alone do not bound a decode's memory: libjpeg keeps the whole image's DCT coefficients
(2 bytes per sample, at full size whatever the scale asked for) for a progressive or
multi-scan JPEG, so a 1 MB progressive CMYK file of 8000 x 8000 pixels takes ~0.5 GB however
small it is drawn. :func:`decode_image` therefore estimates each decode's bytes from the
header (:func:`estimate_decode_bytes`) and admits it through a byte budget
(:class:`DecodeBudget`, :data:`DECODE_BUDGET` for the whole process; both in
:mod:`indexer.pages.decoding`): decodes wait their turn while others hold
the budget, and an image whose own estimate is larger is refused.

Image documents (a photo, a multi-page TIFF) are opened with :func:`open_image_file` and each
frame decoded at (or near) the pixel budget by :func:`render_image_frame`. Imports
pages.decoding, pages.geometry, pages.ocr, pages.types and indexer.errors.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TypeVar

from PIL import Image, UnidentifiedImageError

from indexer.errors import DocumentError
from indexer.pages.decoding import (
    DECODE_BUDGET,
    DecodeBudget,
    ImageRefusedError,
    estimate_decode_bytes,
)
from indexer.pages.geometry import pad, plan_scale
from indexer.pages.ocr import ocr_image_words
from indexer.pages.types import PageImage, RenderSettings
from indexer.pages.words import place_words

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


#: Threads that run every :func:`decode_image` decode. Few and fixed on purpose: glibc gives
#: each thread its own malloc arena and keeps what a decode freed there for that thread's next
#: use, so decodes spread over the server's forty worker threads left ~40 arenas each holding
#: a decode's worth of memory (+1 GB with eight requests at once where the budget held 0.5).
DECODE_THREADS = 2
_DECODERS = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="pagelens-decode")


def _load_and_reduce(im: Image.Image, target_pixels: int | None) -> Image.Image:
    im.load()
    if target_pixels is not None and im.width * im.height > target_pixels:
        factor = math.ceil(math.sqrt(im.width * im.height / target_pixels))
        if im.mode not in _REDUCIBLE:
            im = im.convert(_WIDER.get(im.mode, "RGBA"))
        im = im.reduce(factor)
    return im


def decode_image(
    source: Source,
    *,
    max_pixels: int = MAX_DECODED_PIXELS,
    max_jpeg_pixels: int = MAX_JPEG_PIXELS,
    target_pixels: int | None = TARGET_PIXELS,
    budget: DecodeBudget | None = DECODE_BUDGET,
) -> Image.Image:
    """Open and decode an image, never holding more than about ``max_pixels`` of it.

    With ``target_pixels``, a larger JPEG is decoded at 1/2, 1/4 or 1/8 scale (Pillow's
    ``draft``) and any image still above the target is shrunk by an integer factor
    (``reduce``, a box filter) right after decoding, so the result has at most
    ``target_pixels``. The decode (and that shrinking) runs inside ``budget``, holding the
    bytes :func:`estimate_decode_bytes` reckons from the header: it waits while other
    decodes hold the budget, and an image that needs more than the whole budget is refused
    (``too-large``) before any of it is decoded; ``None`` decodes without a budget.
    Raises :class:`ImageRefusedError` (and FileNotFoundError for paths).
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
        admitted: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if budget is not None:
            kind = f"{im.format} of {width}x{height} pixels"
            if im.format in ("JPEG", "MPO") and im.info.get("progressive"):
                kind = f"progressive {im.mode} JPEG of {width}x{height} pixels"
            cost = estimate_decode_bytes(im, target_pixels, full_size=(width, height))
            admitted = budget.reserve(cost, f"this {kind}")
        with admitted:
            im = _DECODERS.submit(_load_and_reduce, im, target_pixels).result()
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


def open_image_file(path: Path, settings: RenderSettings) -> tuple[Image.Image, int]:
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


def to_rgb(image: Image.Image) -> Image.Image:
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
    return to_rgb(image)


def plan_frame_decode(
    image: Image.Image, settings: RenderSettings
) -> tuple[tuple[int, int], float, int]:
    """How the current frame will be decoded: its target size, the scale to it (never above
    1), and the bytes the decode may take (:func:`estimate_decode_bytes`). A JPEG larger
    than its target is drafted here (libjpeg decodes it at 1/2, 1/4 or 1/8 scale directly,
    so a 20k x 20k photo never exists in memory at full size), and the estimate is that of
    the drafted decode; for other formats draft is a no-op."""
    width, height = image.size
    scale = plan_scale(width, height, settings, upscale=False)
    target = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
    if scale < 1:
        image.draft("RGB", target)
    goal = target[0] * target[1] if scale < 1 else None
    return target, scale, estimate_decode_bytes(image, goal, full_size=(width, height))


def _decode_refused(path: Path, number: int, exc: ImageRefusedError) -> DocumentError:
    where = f"page {number} of {path}" if number > 1 else str(path)
    return DocumentError(path, exc.reason, f"{where}: {exc}")


def check_decode_room(
    image: Image.Image,
    path: Path,
    settings: RenderSettings,
    budget: DecodeBudget | None = None,
) -> None:
    """Refuse (``too-large``) an image whose first frame could never be decoded within the
    process's decode budget, from its header alone: said when the file is inspected, not
    after pages of other files were rendered. Drafts ``image``: close it afterwards."""
    budget = budget or DECODE_BUDGET
    _target, _scale, cost = plan_frame_decode(image, settings)
    if cost > budget.capacity:  # reserve refuses such a decode at once, without waiting
        try:
            with budget.reserve(cost, _what(image)):
                pass
        except ImageRefusedError as exc:
            raise _decode_refused(path, 1, exc) from None


def _what(image: Image.Image) -> str:
    return f"this {image.format} of {image.width:,} x {image.height:,} pixels"


def render_image_frame(
    image: Image.Image, number: int, path: Path, settings: RenderSettings
) -> PageImage:
    """Decode one frame at (or near) the budget, orient it, pad it. The decode holds its
    estimated bytes of the process's decode budget (:data:`DECODE_BUDGET`, shared with the
    API's image inputs): it waits while others hold it, and a frame that needs more than
    the whole budget is refused (``too-large``) before any of it is decoded."""
    try:
        if image.tell() != number - 1:  # pages may be asked in any order
            _within_our_limit(lambda: image.seek(number - 1), settings.max_image_pixels)
        if image.width * image.height > settings.max_image_pixels:
            raise _too_many_pixels(path, image.size, settings)
        dpi_x, dpi_y = _dpi(image)
        width, height = image.size
        what = _what(image)
        target, scale, cost = plan_frame_decode(image, settings)
        with DECODE_BUDGET.reserve(cost, what):
            # Inside the budget: Pillow decodes a whole PNG to look for its EXIF chunk.
            orientation = image.getexif().get(0x0112, 1)
            _within_our_limit(image.load, settings.max_image_pixels)
            if scale < 1:
                # Shrink in the stored mode first: converting a 20k x 20k greyscale scan to
                # RGB at full size would triple its memory for nothing.
                source = image if image.mode in _RESIZABLE_MODES else _widen_mode(image)
                frame = to_rgb(source.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0))
                del source
            else:
                frame = to_rgb(image)
                if frame is image:
                    frame = frame.copy()  # detach from the file (and from later seeks)
        if orientation in _EXIF_TRANSPOSE:
            frame = frame.transpose(_EXIF_TRANSPOSE[orientation])
    except DocumentError:
        raise
    except ImageRefusedError as exc:  # the decode budget: too-large, or busy past its wait
        raise _decode_refused(path, number, exc) from None
    except Image.DecompressionBombError as exc:
        raise DocumentError(path, "too-large", f"{path}: {exc}") from None
    except Exception as exc:  # truncated or corrupt data surfaces at load()
        raise _bad_image(path, exc) from None
    width_pt, height_pt = width * 72.0 / dpi_x, height * 72.0 / dpi_y
    if orientation in (5, 6, 7, 8):
        width_pt, height_pt = height_pt, width_pt
    text, raw = ocr_image_words(frame, settings) if settings.ocr else ("", [])
    page = pad(frame, settings)
    offset = ((page.width - frame.width) // 2, (page.height - frame.height) // 2)
    words = place_words(raw, scale_x=1, scale_y=1, offset=offset, size=page.size, source="ocr")
    return PageImage(number, page, text, width_pt, height_pt, words)
