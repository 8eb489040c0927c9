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
(:class:`DecodeBudget`, :data:`DECODE_BUDGET` for the whole process): decodes wait their
turn while others hold the budget, and an image whose own estimate is larger is refused.

Image documents (a photo, a multi-page TIFF) are opened with :func:`open_image_file` and each
frame decoded at (or near) the pixel budget by :func:`render_image_frame`. Imports
pages.geometry, pages.ocr, pages.types and indexer.errors.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TypeVar

from PIL import Image, UnidentifiedImageError

from indexer.errors import DocumentError, PageLensError
from indexer.pages.geometry import pad, plan_scale
from indexer.pages.ocr import ocr_image
from indexer.pages.types import PageImage, RenderSettings

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

#: Bytes all the image decodes of one process may hold at once (as :func:`estimate_decode_bytes`
#: reckons them); an image whose own estimate is larger is refused, however idle the process.
DECODE_BUDGET_BYTES = 512 * 1024 * 1024
#: Seconds a decode waits for its share of the budget before it is refused as ``busy``.
DECODE_WAIT_S = 60.0

# Modes Image.reduce handles as they are; others are widened first.
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "F"})
_WIDER = {"1": "L", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I", "YCbCr": "RGB"}

Source = str | os.PathLike[str] | IO[bytes]


class ImageRefusedError(PageLensError):
    """Bytes that are not an image PageLens decodes. ``reason``: ``format``, ``too-large``,
    ``unreadable``, or ``busy`` (no room in the decode budget in time: retry later)."""

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


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


class DecodeBudget:
    """A semaphore over bytes: decodes reserve their estimated bytes before decoding and give
    them back after, so that the decodes running at once hold at most ``capacity`` bytes
    (not "at most N decodes": one progressive JPEG can need more than forty small ones).

    Waiters are served first come, first served (a large decode is not starved by a stream
    of small ones); one waits at most ``wait_s`` seconds, then is refused as ``busy``. An
    estimate above ``capacity`` is refused at once as ``too-large``.
    """

    def __init__(self, capacity: int = DECODE_BUDGET_BYTES, *, wait_s: float = DECODE_WAIT_S):
        if capacity <= 0:
            raise ValueError("a decode budget must be positive")
        self.capacity = capacity
        self.wait_s = wait_s
        self._free = capacity
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self.peak_reserved = 0  # most bytes ever reserved at once (for tests and docs)

    @property
    def reserved(self) -> int:
        with self._cond:
            return self.capacity - self._free

    @contextlib.contextmanager
    def reserve(self, nbytes: int, what: str = "this image") -> Iterator[None]:
        nbytes = max(0, int(nbytes))
        if nbytes > self.capacity:
            raise ImageRefusedError(
                f"decoding {what} would take about {_mib(nbytes)}, more than the "
                f"{_mib(self.capacity)} this process allows for decoding images",
                "too-large",
            )
        ticket = object()
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or self._free < nbytes:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ImageRefusedError(
                            f"other images are being decoded (waited {self.wait_s:g} s for "
                            f"{_mib(nbytes)} of the {_mib(self.capacity)} decode budget)",
                            "busy",
                        )
                    self._cond.wait(left)
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit now
                raise
            self._queue.popleft()
            self._free -= nbytes
            self.peak_reserved = max(self.peak_reserved, self.capacity - self._free)
            self._cond.notify_all()  # the next in line may fit in what is left
        try:
            yield
        finally:
            with self._cond:
                self._free += nbytes
                self._cond.notify_all()


#: The budget every :func:`decode_image` call of this process shares unless given another.
DECODE_BUDGET = DecodeBudget()

_SEQUENTIAL_SOF = frozenset({0xC0, 0xC1, 0xC9})  # baseline, extended (Huffman or arithmetic)
_LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
_ALL_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # minus DHT, JPG, DAC


class JpegLayout:
    """What a JPEG's header says about the memory libjpeg will take to decode it."""

    def __init__(
        self, sof: int, width: int, height: int, sampling: list[tuple[int, int]], scan: int
    ) -> None:
        self.sof = sof
        self.width = width
        self.height = height
        self.sampling = sampling  # (h, v) sampling factors of each component
        self.first_scan_components = scan

    @property
    def full_buffer(self) -> bool:
        """libjpeg keeps every coefficient of the image: progressive, lossless, or a
        sequential file whose first scan does not hold every component."""
        return self.sof not in _SEQUENTIAL_SOF or self.first_scan_components < len(self.sampling)

    def coefficient_bytes(self) -> int:
        """libjpeg's whole-image coefficient arrays (jdcoefct.c): per component, its size in
        8x8 blocks rounded up to its sampling factors, 64 coefficients of 2 bytes each."""
        hmax = max(h for h, _ in self.sampling)
        vmax = max(v for _, v in self.sampling)
        total = 0
        for h, v in self.sampling:
            wb = math.ceil(math.ceil(self.width * h / hmax) / 8)
            hb = math.ceil(math.ceil(self.height * v / vmax) / 8)
            total += (math.ceil(wb / h) * h) * (math.ceil(hb / v) * v) * 128
        if self.sof in _LOSSLESS_SOF:  # samples as ints, and no scaled decoding
            total = max(total, self.width * self.height * len(self.sampling) * 4)
        return total


def read_jpeg_layout(fp: IO[bytes]) -> JpegLayout | None:
    """The frame header and the first scan's component count of the JPEG in ``fp`` (read
    from its start; the position is restored), or None where the markers do not say."""
    pos = fp.tell()
    try:
        fp.seek(0)
        if fp.read(2) != b"\xff\xd8":
            return None
        frame: tuple[int, int, int, list[tuple[int, int]]] | None = None
        while True:
            byte = fp.read(1)
            if not byte:
                return None
            if byte != b"\xff":
                continue  # junk between segments
            marker = fp.read(1)
            while marker == b"\xff":  # fill bytes
                marker = fp.read(1)
            if not marker:
                return None
            m = marker[0]
            if m == 0x00 or m == 0x01 or 0xD0 <= m <= 0xD8:
                continue  # no length follows
            if m == 0xD9:
                return None
            head = fp.read(2)
            if len(head) < 2:
                return None
            body = fp.read(max(0, int.from_bytes(head, "big") - 2))
            if m in _ALL_SOF and len(body) >= 6:
                n = body[5]
                sampling = [
                    (max(1, body[7 + 3 * i] >> 4), max(1, body[7 + 3 * i] & 15))
                    for i in range(n)
                    if len(body) >= 9 + 3 * i
                ]
                height, width = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
                if n and len(sampling) == n:
                    frame = (m, width, height, sampling)
            elif m == 0xDA:
                if frame is None or not body:
                    return None
                return JpegLayout(*frame, scan=body[0])
    except (OSError, ValueError):
        return None
    finally:
        with contextlib.suppress(OSError, ValueError):
            fp.seek(pos)


def _bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow stores a pixel of ``mode`` in (RGB is padded to 4)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def estimate_decode_bytes(
    im: Image.Image, target_pixels: int | None = None, *, full_size: tuple[int, int] | None = None
) -> int:
    """Bytes decoding ``im`` (opened, and drafted if it is to be) may take at its peak, from
    its header alone: the decoded bitmap at the drafted size, what the format's decoder keeps
    besides (a progressive JPEG's full-size coefficients, libwebp's canvases, libtiff's
    RGBA buffer), the input, and the widened copy and reduced result when the bitmap is
    above ``target_pixels``. ``full_size``: the size before ``draft`` (else ``im.size``).
    Errs high: it is what the decode budget admits."""
    pixels = im.width * im.height
    cost = pixels * _bytes_per_pixel(im.mode)
    fp = getattr(im, "fp", None)
    if fp is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            pos = fp.tell()
            cost += fp.seek(0, os.SEEK_END)  # the input, which decoders may hold whole
            fp.seek(pos)
    if im.format in ("JPEG", "MPO"):
        layout = read_jpeg_layout(fp) if fp is not None else None
        if layout is None:  # unreadable markers: assume the worst the header allows
            n = max(1, len(getattr(im, "layer", ())) or 4)
            layout = JpegLayout(0xC2, *(full_size or im.size), [(1, 1)] * n, 1)
        if layout.full_buffer:
            cost += layout.coefficient_bytes()
        else:  # one row of MCUs and a few rows of samples
            cost += layout.width * len(layout.sampling) * 16 * 8
        if layout.sof in _LOSSLESS_SOF:  # decoded at full size whatever the draft asked
            cost += layout.width * layout.height * 4
    else:  # row buffers, zlib's, and what malloc keeps around them: 2 bytes a pixel (measured)
        cost += pixels * 2
        if im.format == "WEBP":
            cost += 3 * pixels * 4  # libwebp's canvases (two for animations) and their copy
        elif im.format == "TIFF":
            cost += pixels * 4  # libtiff may decode through a whole-image RGBA buffer
    if target_pixels is not None and pixels > target_pixels:
        if im.mode not in _REDUCIBLE:
            cost += pixels * 4  # widened before reducing
        cost += min(pixels, target_pixels) * 4
    return cost + 2 * 2**20  # decoder state, tables, rows


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


def render_image_frame(
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
        scale = plan_scale(width, height, settings, upscale=False)
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
    except Image.DecompressionBombError as exc:
        raise DocumentError(path, "too-large", f"{path}: {exc}") from None
    except Exception as exc:  # truncated or corrupt data surfaces at load()
        raise _bad_image(path, exc) from None
    width_pt, height_pt = width * 72.0 / dpi_x, height * 72.0 / dpi_y
    if orientation in (5, 6, 7, 8):
        width_pt, height_pt = height_pt, width_pt
    return PageImage(
        number=number,
        image=pad(frame, settings),
        text=ocr_image(frame, settings) if settings.ocr else "",
        width_pt=width_pt,
        height_pt=height_pt,
    )
