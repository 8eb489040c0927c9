"""The model layer: the :class:`Embedder` interface, its fake, and loading a model behind it.

Holds ``base`` (the interface and the two named sides of retrieval), ``fake`` (a
deterministic stand-in for tests), ``gme/`` (GME on transformers: recipe, embedder, query
weights, loading, speed-ups), ``runtime/`` (device and dtype, CPU features, low-precision
kernels, heap and memory), ``remote/`` (an OpenAI-compatible endpoint behind the same
interface) and ``rerank/`` (the ``Reranker`` interface and Qwen3-VL-Reranker, imported on
their own). :func:`load_embedder` picks between GME here and a remote endpoint.

May import: ``indexer.config``, ``indexer.errors``, ``indexer.identity`` and its own
subpackages; never ``indexer.stores``, ``indexer.pages`` or anything above ``indexer``.
Importing this package does not import torch (the GME and remote code load lazily).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from indexer import config
from indexer.errors import PageLensError
from indexer.model.base import (
    DEFAULT_INSTRUCTION,
    QUERY_INSTRUCTION,
    Embedder,
    EmbedderBase,
    TokenCounter,
    require_pairs,
)
from indexer.model.fake import FakeEmbedder


def load_embedder(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    dtype: Any = None,
    embedder_url: str | None = None,
    **options: Any,
) -> Embedder:
    """Load GME (hub id or local folder; ``$PAGELENS_MODEL`` by default) behind :class:`Embedder`.

    With an endpoint (``embedder_url``, a ``model`` that is an ``http(s)://`` URL, or
    ``$PAGELENS_EMBEDDER_URL`` when no model is named) the model runs there instead:
    :class:`~indexer.model.remote.client.RemoteEmbedder`, key from ``$PAGELENS_API_KEY``,
    and ``model`` (when given with ``embedder_url``) picks the endpoint's model. Remote options:
    ``api_key``, ``batch_size``, ``concurrency``, ``timeout``, ``retries``,
    ``max_image_tokens``. ``fail_fast=True`` is for interactive use (a query): a remote
    endpoint that refuses connections fails at once instead of after ~1.5 min of retries
    (index runs keep them); it changes nothing for a model loaded here.

    Imported lazily so that code which only reads a collection never imports torch.
    Loads are serialised: transformers' ``from_pretrained`` is not thread-safe (two threads
    loading at once can leave "meta" tensors), and the web app loads in a thread.
    """
    url = remote_url(model, embedder_url)
    if url is not None:
        from indexer.model.remote import load_remote_embedder

        local_only = sorted(k for k in ("quantize", "compile") if options.get(k))
        if local_only:
            raise PageLensError(
                f"{', '.join(local_only)} applies to a model run on this computer, not to a "
                "remote embedder (--embedder); the server chooses its own settings."
            )
        options.pop("quantize", None)
        options.pop("compile", None)
        if not options.get("fail_fast"):
            options.pop("fail_fast", None)
        name = None if model is None or str(model) == url else os.fspath(model)
        return load_remote_embedder(url, model=name, **options)

    from indexer.model.gme.loading import load_embedder as _load

    options.pop("fail_fast", None)  # nothing to connect to: the model runs here
    with _LOAD_LOCK:
        return _load(model, device=device, dtype=dtype, **options)


def remote_url(
    model: str | os.PathLike[str] | None = None, embedder_url: str | None = None
) -> str | None:
    """The embedder endpoint a load means, if any (see :func:`load_embedder`)."""
    if embedder_url:
        return str(embedder_url)
    if isinstance(model, str) and model.strip().lower().startswith(("http://", "https://")):
        return model.strip()
    if model is None:
        return config.get(config.EMBEDDER_URL_ENV)
    return None


_LOAD_LOCK = threading.Lock()


def embedder_options(
    *, image_tokens: int | None = None, quantize: str | None = None, compile: bool = False
) -> dict[str, Any]:
    """The :func:`load_embedder` options for the user-facing settings the CLI and app share
    (``--image-tokens``, ``--quantize``, ``--compile``), so both load the same model."""
    options: dict[str, Any] = {}
    if image_tokens:
        options["max_image_tokens"] = int(image_tokens)
    if quantize:
        options["quantize"] = quantize
    if compile:
        options["compile"] = True
    return options


__all__ = [
    "DEFAULT_INSTRUCTION",
    "QUERY_INSTRUCTION",
    "Embedder",
    "EmbedderBase",
    "FakeEmbedder",
    "TokenCounter",
    "embedder_options",
    "load_embedder",
    "remote_url",
    "require_pairs",
]
