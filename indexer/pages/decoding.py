"""What decoding an image costs, and the byte budget that admits decodes (issue 22).

Pixels alone do not bound a decode's memory: libjpeg keeps the whole image's DCT
coefficients (2 bytes per sample, at full size whatever scale was asked for) for a
progressive or multi-scan JPEG, so a 1 MB progressive CMYK file of 8000 x 8000 pixels takes
~0.5 GB however small it is drawn. :func:`estimate_decode_bytes` reckons a decode's bytes
from the header and :class:`DecodeBudget` admits decodes by those bytes.
:mod:`indexer.pages.raster` decodes through it. Imports
indexer.errors only.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import IO

from PIL import Image

from indexer.errors import PageLensError

#: Bytes all the image decodes of one process may hold at once (as :func:`estimate_decode_bytes`
#: reckons them); an image whose own estimate is larger is refused, however idle the process.
DECODE_BUDGET_BYTES = 512 * 1024 * 1024
#: Seconds a decode waits for its share of the budget before it is refused as ``busy``.
DECODE_WAIT_S = 60.0

# Modes Image.reduce handles as they are (raster widens others first).
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "F"})


class ImageRefusedError(PageLensError):
    """Bytes that are not an image PageLens decodes. ``reason``: ``format``, ``too-large``,
    ``unreadable``, or ``busy`` (no room in the decode budget in time: retry later)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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
