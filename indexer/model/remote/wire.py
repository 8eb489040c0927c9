"""What goes over the wire to an embedding endpoint: images as exact PNGs in data URLs,
inputs in the OpenAI shape, vectors back from base64 or JSON lists. Imports
indexer.errors only."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from indexer.errors import EndpointError


def png_exact(image: Image.Image) -> bytes:
    """PNG bytes of ``image``, pixel for pixel (fast compression: the network is the cost).

    Modes PNG holds as they are (RGB, RGBA, L, LA, P, 1, I;16) are kept, so the server's
    GME converts them exactly as the local one would; others are converted to RGB here,
    as GME does first thing.
    """
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_data_url(image: Image.Image) -> str:
    """``image`` as a ``data:image/png;base64,...`` URL (see :func:`png_exact`)."""
    return "data:image/png;base64," + base64.b64encode(png_exact(image)).decode("ascii")


def encode_input(item: tuple[str, str | None, Image.Image | None]) -> Any:
    """One ``(kind, text, image)`` item as an input of the request body."""
    kind, text, image = item
    if kind == "text":
        return text
    assert image is not None
    if kind == "image":
        return {"image": image_data_url(image)}
    return {"text": text, "image": image_data_url(image)}


def decode_vector(value: Any) -> np.ndarray | None:
    """A vector from an answer's ``embedding`` (base64 little-endian float32, or a list);
    None if it is neither."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            return None
        if not raw or len(raw) % 4:
            return None
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if isinstance(value, list) and value:
        try:
            return np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            return None
    return None


def decode_embeddings(answer: Any, count: int, *, url: str, dim: int) -> np.ndarray:
    """The ``(count, dim)`` float32 vectors of an ``/embeddings`` answer, in input order and
    re-normalised; an answer that is short, out of order or of the wrong size is an error."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or len(data) != count:
        raise EndpointError(
            f"The endpoint {url} answered {len(data) if isinstance(data, list) else 0} "
            f"embeddings for {count} inputs."
        )
    rows: list[np.ndarray | None] = [None] * count
    for pos, entry in enumerate(data):
        index = entry.get("index", pos) if isinstance(entry, dict) else pos
        if not isinstance(index, int) or not 0 <= index < count:
            raise EndpointError(f"The endpoint {url} answered a bad embedding index.")
        rows[index] = decode_vector(entry.get("embedding") if isinstance(entry, dict) else None)
    vectors = [r for r in rows if r is not None]
    if len(vectors) != count or len({len(v) for v in vectors}) != 1:
        raise EndpointError(
            f"The endpoint {url} left inputs without an embedding, or answered "
            "vectors of different lengths."
        )
    out = np.stack(vectors).astype(np.float32)
    if dim and out.shape[1] != dim:
        raise EndpointError(
            f"The endpoint {url} answered {out.shape[1]}-d vectors, not {dim}-d: "
            "the served model changed during the run."
        )
    if not np.isfinite(out).all():
        raise EndpointError(f"The endpoint {url} answered non-finite vectors.")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (out / norms).astype(np.float32)
