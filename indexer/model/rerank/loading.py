"""``load_reranker``: the one door through which programs get a reranker.

A ``/v1/rerank`` endpoint URL gives a :class:`~indexer.model.rerank.remote.RemoteReranker`;
a model id or folder will give the in-process reranker once it is merged here (until then
it is a clear :class:`~indexer.errors.ModelNotAvailableError`, never a traceback). Programs
(``pagelens serve --reranker``, search) call this so that they never name a class.
"""

from __future__ import annotations

from typing import Any

from indexer import config
from indexer.errors import ModelNotAvailableError
from indexer.model.remote.http import is_endpoint_url, short_name
from indexer.model.rerank.base import Reranker


def load_reranker(model: str | None = None, **options: Any) -> Reranker:
    """The reranker ``model`` names: an endpoint URL (or, when ``model`` is None,
    ``$PAGELENS_RERANK_URL``) connects a remote one; ``options`` go to its constructor."""
    target = model or config.get(config.RERANK_URL_ENV)
    if not target:
        raise ModelNotAvailableError(
            "No reranker named: give a model, or a /v1/rerank endpoint URL "
            f"(http(s)://host:port) directly or with {config.RERANK_URL_ENV}."
        )
    if is_endpoint_url(target):
        from indexer.model.rerank.remote import load_remote_reranker

        return load_remote_reranker(target, **options)
    raise ModelNotAvailableError(
        f"The reranker '{short_name(target)}' cannot run in this process in this build; "
        f"give a /v1/rerank endpoint URL (http(s)://host:port) or set {config.RERANK_URL_ENV}."
    )


__all__ = ["load_reranker"]
