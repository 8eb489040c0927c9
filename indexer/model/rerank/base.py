"""The reranker seam: a query and candidate pages in, one relevance score per page out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class RerankQuery:
    """What the user asked: text, an image, or both (as a search takes them)."""

    text: str | None = None
    image: Image.Image | None = None

    def __post_init__(self) -> None:
        if not (self.text and self.text.strip()) and self.image is None:
            raise ValueError("a rerank query needs text, an image, or both")


@dataclass(frozen=True)
class RerankPage:
    """One candidate page: its stored image and its text layer (either may be missing: a
    page still waiting for its image is read by its text alone)."""

    image: Image.Image | None = None
    text: str = ""


@runtime_checkable
class Reranker(Protocol):
    """Scores candidate pages against a query. ``score`` returns float32 relevance scores in
    [0, 1], one per page in the order given (higher is more relevant); it never reorders.
    ``model_id`` names the model, as an embedder's does."""

    model_id: str

    def score(self, query: RerankQuery, pages: Sequence[RerankPage]) -> np.ndarray: ...
