"""A fast, deterministic reranker for tests of everything but the model."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from indexer.model.rerank.base import RerankPage, RerankQuery


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


class FakeReranker:
    """Scores a page by the share of the query's words its text layer holds (ties broken by
    nothing: equal shares give equal scores), so tests can predict the order. An image-only
    query scores every page 0.5. ``calls`` records how many pages each call scored."""

    def __init__(self, model_id: str = "pagelens/fake-reranker") -> None:
        self.model_id = model_id
        self.fingerprint: str | None = None  # matched by name: it has no weights
        self.revision: str | None = None
        self.calls: list[int] = []

    def score(self, query: RerankQuery, pages: Sequence[RerankPage]) -> np.ndarray:
        self.calls.append(len(pages))
        wanted = _words(query.text or "")
        if not wanted:
            return np.full(len(pages), 0.5, dtype=np.float32)
        return np.array(
            [len(wanted & _words(p.text or "")) / len(wanted) for p in pages], dtype=np.float32
        )
