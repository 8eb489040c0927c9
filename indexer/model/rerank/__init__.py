"""Rerankers: a second stage that reads a query and each candidate page together and scores
how well the page answers it (more exact than the first stage's single vector per page, and
far costlier: it runs only over the first stage's top pages).

Holds ``base`` (the :class:`Reranker` protocol and its input types) and ``fake`` (a
deterministic stand-in for tests); implementations (a model run here, a remote ``/v1/rerank``
endpoint) sit beside them, one module each.

May import ``indexer.config``, ``indexer.errors`` and ``indexer.model`` (shared loading and
HTTP helpers); never ``indexer.stores``, ``indexer.pages`` or anything above ``indexer``.
"""

from __future__ import annotations

from indexer.model.rerank.base import Reranker, RerankPage, RerankQuery
from indexer.model.rerank.fake import FakeReranker
from indexer.model.rerank.loading import load_reranker

__all__ = ["FakeReranker", "RerankPage", "RerankQuery", "Reranker", "load_reranker"]
