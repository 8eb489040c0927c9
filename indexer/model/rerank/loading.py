"""``load_reranker``: the one door through which programs get a reranker.

A ``/v1/rerank`` endpoint URL gives a :class:`~indexer.model.rerank.remote.RemoteReranker`;
a hub id or folder loads Qwen3-VL-Reranker in this process
(:mod:`indexer.model.rerank.qwen3vl_loading`). Programs (``pagelens serve --reranker``,
search, the app) call this, never a class. Light to import: torch and transformers load
only with a model run here.
"""

from __future__ import annotations

import os
from typing import Any

from indexer import config
from indexer.model.remote.http import is_endpoint_url
from indexer.model.rerank.base import Reranker


def load_reranker(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    dtype: Any = None,
    **options: Any,
) -> Reranker:
    """The reranker ``model`` names: an endpoint URL (``http(s)://...``, or
    ``$PAGELENS_RERANK_URL`` when no model is named) connects a remote one, whose model
    ``$PAGELENS_RERANK_MODEL`` names; anything else (a hub id or folder; default
    ``$PAGELENS_RERANK_MODEL`` or Qwen/Qwen3-VL-Reranker-2B) loads here on ``device`` in
    ``dtype``. ``options`` go to the reranker's constructor. Raises
    :class:`~indexer.errors.ModelNotAvailableError` (weights missing) or
    :class:`~indexer.errors.EndpointError` (endpoint unreachable) with one clear message.
    """
    name = os.fspath(model) if model is not None else None
    url = config.get(config.RERANK_URL_ENV) if name is None else None
    if name and is_endpoint_url(name):
        url = name
    if url:
        from indexer.model.rerank.remote import load_remote_reranker

        return load_remote_reranker(url, **options)
    from indexer.model.rerank.qwen3vl_loading import load_local_reranker

    return load_local_reranker(name, device=device, dtype=dtype, **options)


def configured_reranker(**options: Any) -> Reranker | None:
    """The reranker the environment configures (``$PAGELENS_RERANK_URL`` or
    ``$PAGELENS_RERANK_MODEL``), or None: reranking is opt-in, never a surprise download."""
    if not (config.get(config.RERANK_URL_ENV) or config.get(config.RERANK_MODEL_ENV)):
        return None
    return load_reranker(**options)


__all__ = ["configured_reranker", "load_reranker"]
