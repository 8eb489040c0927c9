"""Which reranker, if any, is configured, and loading it.

Minimal stand-in (wiring branch): the in-process Qwen3-VL reranker and the remote
``/v1/rerank`` client live in their own modules, written beside this one; until they are
merged, a configured reranker is reported as unavailable with one clear paragraph, so every
caller's "configured but unavailable" path (search goes on without reranking) is the one
that runs.
"""

from __future__ import annotations

from indexer import config
from indexer.errors import ModelNotAvailableError
from indexer.model.rerank.base import Reranker


def load_reranker() -> Reranker | None:
    """The configured reranker: None when neither ``PAGELENS_RERANK_URL`` nor
    ``PAGELENS_RERANK_MODEL`` is set (reranking is optional, so nothing is loaded);
    :class:`~indexer.errors.ModelNotAvailableError` when one is set but cannot be used."""
    url = config.get(config.RERANK_URL_ENV)
    model = config.get(config.RERANK_MODEL_ENV)
    if not url and not model:
        return None
    named = f"the endpoint {url}" if url else f"the model {model}"
    raise ModelNotAvailableError(
        f"A reranker is configured ({named}) but this PageLens cannot load it: the "
        "reranker implementations are not installed in this build. Search goes on without "
        "reranking; unset PAGELENS_RERANK_URL and PAGELENS_RERANK_MODEL to stop this note."
    )


__all__ = ["load_reranker"]
