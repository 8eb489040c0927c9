"""Rerankers: a second stage that reads a query and each candidate page together and scores
how well the page answers it (a cross-encoder: more exact than the first stage's one vector
per page, and far costlier, so it runs only over the first stage's top pages).

Holds ``base`` (the :class:`Reranker` interface with :class:`RerankQuery` and
:class:`RerankPage`), ``fake`` (a deterministic stand-in for tests), ``recipe``
(Qwen3-VL-Reranker's prompt, image budget and constants, from the reference inference
script), ``qwen3vl`` (:class:`Qwen3VLReranker`: batching, forward, the yes/no score),
``remote`` and ``remote_wire`` (an endpoint speaking ``/v1/rerank``, as vLLM, Jina and
Cohere do), ``loading`` (:func:`load_reranker`: a model here or an endpoint;
:func:`configured_reranker`), ``qwen3vl_loading`` (the model here, with GME's offline
handling) and ``random`` (random-weight checkpoints for tests and the bench).

May import: ``indexer.model.base``, ``indexer.model.gme`` (its hub helpers and random
tokenizer), ``indexer.model.remote`` (HTTP, retries, TLS), ``indexer.model.runtime``,
``indexer.config``, ``indexer.errors`` and ``indexer.identity``; never ``indexer.stores``,
``indexer.pages`` or anything above ``indexer``. Importing the package imports neither torch
nor transformers (``qwen3vl`` and ``random`` load them).
"""

from __future__ import annotations

from indexer.model.rerank.base import Reranker, RerankPage, RerankQuery
from indexer.model.rerank.fake import FakeReranker
from indexer.model.rerank.loading import configured_reranker, load_reranker

__all__ = [
    "FakeReranker",
    "RerankPage",
    "RerankQuery",
    "Reranker",
    "configured_reranker",
    "load_reranker",
]
