"""Image inputs of the API: data URLs (or, if allowed, http(s) URLs) -> PIL images, with limits."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image

from app.server.errors import ApiError, too_large
from app.server.fetch import UrlImageFetcher
from app.server.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS
from indexer.pages.raster import (
    DECODE_BUDGET,
    TARGET_PIXELS,
    DecodeBudget,
    ImageRefusedError,
    decode_image,
)


class ImageLoader:
    """Turns a data URL (or, if allowed, an http(s) URL) into a PIL image, with limits.

    Decodes are admitted by bytes, not by count: each reserves what its header says it will
    take in ``decode_budget`` (by default the process's :data:`DECODE_BUDGET`, shared with
    every other decode of the process, :data:`app.server.limits.MAX_DECODE_BYTES`), waits
    while other requests' decodes hold it (503 after ``MAX_DECODE_WAIT_S``), and is refused
    with 400 ``image_too_large`` if it alone needs more than the whole budget.
    """

    def __init__(
        self,
        *,
        fetcher: UrlImageFetcher | None,
        max_bytes: int = MAX_IMAGE_BYTES,
        max_pixels: int = MAX_IMAGE_PIXELS,
        target_pixels: int = TARGET_PIXELS,
        decode_budget: DecodeBudget | None = DECODE_BUDGET,
    ) -> None:
        self.fetcher = fetcher
        self.decode_budget = decode_budget
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.target_pixels = target_pixels

    def load(self, ref: str, param: str) -> Image.Image:
        ref = ref.strip()
        if ref[:5].lower() == "data:":
            data = self._data_url(ref, param)
        elif ref[:7].lower() == "http://" or ref[:8].lower() == "https://":
            if self.fetcher is None:
                raise ApiError(
                    400,
                    "Image URLs are turned off on this server; send the image as a data URL "
                    "(data:image/png;base64,...) or start the server with --allow-url-images.",
                    param=param,
                    code="image_url_not_allowed",
                )
            data = self.fetcher.fetch(ref, param=param, max_bytes=self.max_bytes)
        else:
            raise ApiError(
                400,
                "An image must be a data URL (data:image/png;base64,...) or an http(s) URL.",
                param=param,
                code="invalid_image",
            )
        return self.decode(data, param)

    def _data_url(self, ref: str, param: str) -> bytes:
        head, sep, payload = ref.partition(",")
        if not sep or not head.lower().endswith(";base64"):
            raise ApiError(
                400,
                "An image data URL must be base64: data:image/png;base64,...",
                param=param,
                code="invalid_image",
            )
        if len(payload) * 3 // 4 > self.max_bytes + 3:
            raise too_large(param, f"more than {self.max_bytes} bytes")
        try:
            data = base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(
                400,
                f"The image data URL is not valid base64 ({exc}).",
                param=param,
                code="invalid_image",
            ) from exc
        if len(data) > self.max_bytes:
            raise too_large(param, f"more than {self.max_bytes} bytes")
        return data

    def decode(self, data: bytes, param: str) -> Image.Image:
        """Decode with the format allow-list, pixel cap and downscale-while-decoding of
        :func:`indexer.pages.raster.decode_image` (at most ``target_pixels`` are kept)."""
        if not data:
            raise ApiError(400, "The image is empty.", param=param, code="invalid_image")
        try:
            return decode_image(
                io.BytesIO(data),
                max_pixels=self.max_pixels,
                max_jpeg_pixels=4 * self.max_pixels,
                target_pixels=self.target_pixels,
                budget=self.decode_budget,
            )
        except ImageRefusedError as exc:
            if exc.reason == "too-large":
                raise too_large(param, str(exc)) from exc
            if exc.reason == "busy":
                raise ApiError(
                    503,
                    f"The server is busy decoding other images ({exc}); retry after a short wait.",
                    type="server_error",
                    param=param,
                    code="server_overloaded",
                    headers={"Retry-After": "1"},
                ) from exc
            raise ApiError(
                400,
                f"The data is not an image PageLens can read: {exc}.",
                param=param,
                code="invalid_image",
            ) from exc


class PixelBudget:
    """Decoded pixels one request may hold (all its images together), so that 256 small
    files that each decode to millions of pixels cannot add up to gigabytes."""

    def __init__(self, limit: int = MAX_REQUEST_PIXELS) -> None:
        self.limit = limit
        self.spent = 0

    def spend(self, image: Image.Image, param: str) -> None:
        self.spent += image.width * image.height
        if self.spent > self.limit:
            raise ApiError(
                400,
                f"The images of this request decode to more than {self.limit:,} pixels in all "
                f"(after downscaling each to at most {TARGET_PIXELS:,}); send fewer or smaller "
                "images per request.",
                param=param,
                code="image_too_large",
            )
