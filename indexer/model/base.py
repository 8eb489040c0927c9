"""The one interface every model sits behind (a fake that honours it is in ``fake.py``).

Everything that needs vectors (the indexer, the retriever, the API server, the benchmark)
receives an object with this shape instead of reaching for a global model, so tests pass a
tiny or fake model and the app passes the real one. The contract, shared by all
implementations:

* ``model_id`` (str, a name for people: hub id or folder) and ``dim`` (int) describe the
  vector space; ``fingerprint`` (str or None, see :mod:`indexer.identity`) identifies the
  weights, and ``revision`` (str or None) is the hub commit where known. A collection
  records all of them and refuses to be searched with another model: by fingerprint when
  both sides have one, else by name.
* ``embed_texts``, ``embed_images`` and ``embed_fused`` each return a float32 numpy array of
  shape ``(n, dim)`` whose rows have unit L2 norm, in input order.
* The two sides of retrieval are named: :meth:`Embedder.embed_queries` (a question, a query
  image, or both, under GME's :data:`QUERY_INSTRUCTION`) and :meth:`Embedder.embed_documents`
  (page images, optionally each with its text, under the default instruction). Callers use
  these and never pass an instruction themselves, as sentence-transformers' ``encode_query``
  / ``encode_document`` spare their users the prompt names.
* The three primitives ``embed_texts/embed_images/embed_fused(..., instruction=None)`` stay
  public for custom instructions (the API server's ``instruction`` field, external checks);
  ``instruction=None`` means the model's default (document-side) instruction.
* :class:`EmbedderBase` implements the two sides over the three primitives, so a new model
  writes only the primitives.
* Optionally, ``embed_images(..., max_image_tokens=N)`` embeds at a smaller visual-token
  budget for that call only (GME in process and the fake do; visual evidence's crops use
  it, and shrink the crops themselves for an embedder that does not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

#: GME's default system instruction, used for every document (page) embedding.
DEFAULT_INSTRUCTION = "You are a helpful assistant."
#: GME's instruction for visual-document retrieval queries. The wording (and its grammar) is
#: GME's own, from its evaluation code; it must stay byte-identical for published quality.
QUERY_INSTRUCTION = "Find a screenshot that relevant to the user's question."


@runtime_checkable
class Embedder(Protocol):
    """What the rest of PageLens needs from a model."""

    model_id: str
    dim: int
    #: Weights fingerprint (``indexer.identity.weights_fingerprint``); None if unknown.
    fingerprint: str | None
    #: Hub commit of the weights, where known.
    revision: str | None
    #: Visual-token budget per image; pages are rendered to fit it.
    max_image_tokens: int

    def embed_texts(
        self, texts: Sequence[str], *, instruction: str | None = None
    ) -> np.ndarray: ...

    def embed_images(
        self, images: Sequence[Image.Image], *, instruction: str | None = None
    ) -> np.ndarray: ...

    def embed_fused(
        self,
        texts: Sequence[str],
        images: Sequence[Image.Image],
        *,
        instruction: str | None = None,
    ) -> np.ndarray: ...

    def embed_queries(
        self,
        texts: Sequence[str] | None = None,
        *,
        images: Sequence[Image.Image] | None = None,
    ) -> np.ndarray: ...

    def embed_documents(
        self,
        images: Sequence[Image.Image] | None = None,
        *,
        texts: Sequence[str] | None = None,
    ) -> np.ndarray: ...


def _route(
    model: Any,
    texts: Sequence[str] | None,
    images: Sequence[Image.Image] | None,
    instruction: str | None,
) -> np.ndarray:
    """Texts only, images only, or pairs of both (one fused input each) under ``instruction``."""
    if texts is None and images is None:
        raise ValueError("give texts, images, or both (one text per image)")
    if images is None:
        assert texts is not None
        return np.asarray(model.embed_texts(list(texts), instruction=instruction))
    if texts is None:
        return np.asarray(model.embed_images(list(images), instruction=instruction))
    if len(texts) != len(images):
        raise ValueError(
            f"texts and images go in pairs (one fused input each): got {len(texts)} texts "
            f"and {len(images)} images"
        )
    return np.asarray(model.embed_fused(list(texts), list(images), instruction=instruction))


def require_pairs(texts: Sequence[object], images: Sequence[object]) -> None:
    """``embed_fused`` pairs text i with image i, so both lists must be the same length
    (checked before any work, by every embedder)."""
    if len(texts) != len(images):
        raise ValueError("embed_fused needs as many texts as images")


class EmbedderBase:
    """The two named sides of retrieval, written once over the three primitives.

    Subclasses implement ``embed_texts``, ``embed_images`` and ``embed_fused`` (each with
    ``instruction=``); these two methods pick the instruction so callers cannot forget it.
    A subclass that knows its weights sets ``fingerprint`` (see :mod:`indexer.identity`);
    the default None means "match collections by ``model_id``".
    """

    fingerprint: str | None = None
    revision: str | None = None

    def embed_queries(
        self,
        texts: Sequence[str] | None = None,
        *,
        images: Sequence[Image.Image] | None = None,
    ) -> np.ndarray:
        """Embed search queries under GME's retrieval instruction (:data:`QUERY_INSTRUCTION`).

        ``embed_queries(["question"])`` for text, ``embed_queries(images=[shot])`` for a query
        image (a screenshot, a figure), both (equal lengths) for one fused text+image query
        each. Returns float32 ``(n, dim)``, unit rows, in input order.
        """
        return _route(self, texts, images, QUERY_INSTRUCTION)

    def embed_documents(
        self,
        images: Sequence[Image.Image] | None = None,
        *,
        texts: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Embed documents under the default instruction, as GME embeds its corpus.

        A document is a page image (``embed_documents([page])``), a page image with its text
        (``embed_documents([page], texts=["..."])``, one fused input per pair), or plain text
        (``embed_documents(texts=["..."])``). Returns float32 ``(n, dim)``, unit rows.
        """
        return _route(self, texts, images, None)


@runtime_checkable
class TokenCounter(Protocol):
    """Optional extra of an :class:`Embedder` that knows its tokenizer (GME does).

    The HTTP server uses it to report ``usage.prompt_tokens`` exactly and to refuse inputs
    longer than the model's limit instead of silently truncating them; embedders without it
    get an estimate and no length check.
    """

    #: Longest sequence (tokens) the model runs; longer inputs are truncated by the model.
    max_length: int

    def count_tokens(
        self,
        text: str | None = None,
        image: Image.Image | tuple[int, int] | None = None,
        *,
        instruction: str | None = None,
    ) -> int:
        """Length of the sequence the model runs for this input (after truncation)."""
        ...

    def count_text_tokens(self, text: str) -> int:
        """Tokens of ``text`` alone, untruncated (no prompt template)."""
        ...


__all__ = [
    "DEFAULT_INSTRUCTION",
    "QUERY_INSTRUCTION",
    "Embedder",
    "EmbedderBase",
    "TokenCounter",
    "require_pairs",
]
