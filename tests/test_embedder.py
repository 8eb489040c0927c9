"""The two named sides of the Embedder interface: queries and documents.

``embed_queries`` / ``embed_documents`` must give exactly the vectors of the primitives with
GME's query and default instructions, for the fake and for the real GME code (tiny model).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from indexer.model import (
    DEFAULT_INSTRUCTION,
    QUERY_INSTRUCTION,
    Embedder,
    EmbedderBase,
    FakeEmbedder,
)


def _image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


class Recorder(EmbedderBase):
    """Primitives that record (method, instruction, n) and return distinct unit rows."""

    model_id, dim, max_image_tokens = "recorder", 4, 1280

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, int]] = []

    def _rows(self, n: int) -> np.ndarray:
        return np.eye(self.dim, dtype=np.float32)[:n]

    def embed_texts(self, texts, *, instruction=None):
        self.calls.append(("texts", instruction, len(texts)))
        return self._rows(len(texts))

    def embed_images(self, images, *, instruction=None):
        self.calls.append(("images", instruction, len(images)))
        return self._rows(len(images))

    def embed_fused(self, texts, images, *, instruction=None):
        self.calls.append(("fused", instruction, len(texts)))
        return self._rows(len(texts))


def test_sides_route_to_primitives_with_the_right_instruction():
    rec = Recorder()
    img = _image(0)
    rec.embed_queries(["q1", "q2"])
    rec.embed_queries(images=[img])
    rec.embed_queries(["q"], images=[img])
    rec.embed_documents([img, img])
    rec.embed_documents([img], texts=["page text"])
    rec.embed_documents(texts=["a text document"])
    assert rec.calls == [
        ("texts", QUERY_INSTRUCTION, 2),
        ("images", QUERY_INSTRUCTION, 1),
        ("fused", QUERY_INSTRUCTION, 1),
        ("images", None, 2),
        ("fused", None, 1),
        ("texts", None, 1),
    ]
    assert isinstance(rec, Embedder)


def test_sides_reject_bad_input_clearly():
    rec = Recorder()
    with pytest.raises(ValueError, match="texts, images, or both"):
        rec.embed_queries()
    with pytest.raises(ValueError, match="got 2 texts and 1 images"):
        rec.embed_documents([_image(0)], texts=["a", "b"])
    assert rec.calls == []


def test_fake_sides_equal_primitives():
    fake = FakeEmbedder(dim=32)
    imgs = [_image(1), _image(2)]
    assert isinstance(fake, Embedder)
    np.testing.assert_array_equal(fake.embed_queries(["a b"]), fake.embed_texts(["a b"]))
    np.testing.assert_array_equal(fake.embed_documents(imgs), fake.embed_images(imgs))
    out = fake.embed_documents(imgs, texts=["x", "y"])
    assert out.shape == (2, 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert fake.embed_queries([]).shape == (0, 32)


def test_gme_sides_equal_primitives_with_gme_instructions(tiny_embedder):
    """The real GME code path: the named sides are the published instructions, nothing else."""
    img = _image(3, (96, 64))
    queries = tiny_embedder.embed_queries(["revenue in 2023"])
    np.testing.assert_allclose(
        queries,
        tiny_embedder.embed_texts(["revenue in 2023"], instruction=QUERY_INSTRUCTION),
        atol=1e-5,
    )
    # ...and the query side really differs from the document side
    docs_text = tiny_embedder.embed_documents(texts=["revenue in 2023"])
    assert float(queries[0] @ docs_text[0]) < 0.99
    np.testing.assert_allclose(
        tiny_embedder.embed_documents([img]),
        tiny_embedder.embed_images([img], instruction=DEFAULT_INSTRUCTION),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        tiny_embedder.embed_queries(["chart"], images=[img]),
        tiny_embedder.embed_fused(["chart"], [img], instruction=QUERY_INSTRUCTION),
        atol=1e-5,
    )
    assert isinstance(tiny_embedder, Embedder)
