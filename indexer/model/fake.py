"""A fast, deterministic stand-in for GME that honours :class:`~indexer.model.base.Embedder`.

Tests of everything but the model (and the benchmark's memory runs) pass it instead of a
real model; it needs neither torch nor weights.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from indexer.model.base import EmbedderBase, require_pairs


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (rows / norms).astype(np.float32)


class FakeEmbedder(EmbedderBase):
    """A fast, deterministic stand-in for GME, for tests of everything but the model.

    Texts become hashed bags of words and images become a fixed random projection of a
    16x16 grey thumbnail, so equal inputs give equal vectors, similar texts score higher
    than unrelated ones, and nothing needs torch. It is not a model of GME's quality.
    """

    def __init__(self, dim: int = 64, *, model_id: str = "pagelens/fake-embedder") -> None:
        self.model_id = model_id
        self.dim = dim
        self.fingerprint: str | None = None  # matched by name: it has no weights
        self.revision: str | None = None
        self.max_image_tokens = 1280
        self.device = "cpu"
        self.dtype = "float32"
        rng = np.random.default_rng(1234)
        self._image_proj = rng.standard_normal((16 * 16, dim)).astype(np.float32)
        self.calls: list[tuple[str, int]] = []

    def _text_row(self, text: str) -> np.ndarray:
        row = np.zeros(self.dim, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            row[h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        if not row.any():
            row[0] = 1.0
        return row

    def _image_row(self, image: Image.Image) -> np.ndarray:
        # Shrunk before greyed (both are linear, so the thumbnail is the same up to rounding):
        # a full-page greyscale copy would be 1 MiB of the fake's own working memory at GME's
        # budget, counted against the indexer by the long-PDF memory bench (issue #16).
        if image.mode in ("RGB", "L"):
            image = image.resize((16, 16))
        grey = np.asarray(image.convert("L").resize((16, 16)), dtype=np.float32) / 255.0
        return (grey.reshape(-1) - 0.5) @ self._image_proj + 1e-3

    def embed_texts(self, texts: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        self.calls.append(("texts", len(texts)))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _unit(np.stack([self._text_row(t) for t in texts]))

    def embed_images(
        self,
        images: Sequence[Image.Image],
        *,
        instruction: str | None = None,
        max_image_tokens: int | None = None,
    ) -> np.ndarray:
        """Image vectors; ``max_image_tokens`` (a per-call budget, as GME's) changes nothing
        here: the fake sees a 16x16 thumbnail whatever the budget."""
        self.calls.append(("images", len(images)))
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _unit(np.stack([self._image_row(i) for i in images]))

    def embed_fused(
        self,
        texts: Sequence[str],
        images: Sequence[Image.Image],
        *,
        instruction: str | None = None,
    ) -> np.ndarray:
        require_pairs(texts, images)
        self.calls.append(("fused", len(texts)))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = [
            _unit(self._text_row(t)[None])[0] + _unit(self._image_row(i)[None])[0]
            for t, i in zip(texts, images, strict=True)
        ]
        return _unit(np.stack(rows))


__all__ = ["FakeEmbedder"]
