"""The :class:`Reranker` interface: a relevance score for each candidate page of a query.

A reranker reads the query and one page *together* (a cross-encoder), so it is slower than
the first-stage embedder and runs on its top hits only. The contract, shared by all
implementations:

* ``model_id`` (str, a name for people: hub id or folder); ``fingerprint`` and ``revision``
  (str or None) identify the weights where known, as for an embedder.
* :meth:`Reranker.score` takes one :class:`RerankQuery` (text, image, or both) and a sequence
  of :class:`RerankPage` (a page image, optionally with its text layer) and returns a float32
  numpy array of shape ``(len(pages),)``: one relevance score in [0, 1] per page, in input
  order. Higher is more relevant; scores of different queries are comparable only loosely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class RerankQuery:
    """A search query: a question, a query image (a screenshot, a figure), or both."""

    text: str | None = None
    image: Image.Image | None = None

    def __post_init__(self) -> None:
        if not (self.text and self.text.strip()) and self.image is None:
            raise ValueError("a rerank query needs a text, an image, or both")


@dataclass(frozen=True)
class RerankPage:
    """A candidate page: its rendered image and, where known, its text layer.

    A page without an image (text only) is accepted too; it is scored on its text.
    """

    image: Image.Image | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if self.text is None and self.image is None:
            raise ValueError("a rerank page needs an image, a text, or both")


@runtime_checkable
class Reranker(Protocol):
    """What PageLens needs from a reranking model."""

    model_id: str
    #: Weights fingerprint (``indexer.identity``); None if unknown.
    fingerprint: str | None
    #: Hub commit of the weights, where known.
    revision: str | None

    def score(self, query: RerankQuery, pages: Sequence[RerankPage]) -> np.ndarray:
        """Float32 relevance scores in [0, 1], one per page, in input order."""
        ...


__all__ = ["RerankPage", "RerankQuery", "Reranker"]
