"""PageLens indexing: files -> pages -> vectors -> store.

The public names live here; each submodule holds one layer and can be used on its own.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from indexer.embedder import DEFAULT_INSTRUCTION, QUERY_INSTRUCTION, Embedder, FakeEmbedder
from indexer.errors import (
    CollectionError,
    DocumentError,
    ModelMismatchError,
    ModelNotAvailableError,
    PageLensError,
)

if TYPE_CHECKING:
    import os


def load_embedder(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    dtype: Any = None,
    **options: Any,
) -> Embedder:
    """Load GME (hub id or local folder; ``$PAGELENS_MODEL`` by default) behind :class:`Embedder`.

    Imported lazily so that code which only reads a collection never imports torch.
    Loads are serialised: transformers' ``from_pretrained`` is not thread-safe (two threads
    loading at once can leave "meta" tensors), and the web app loads in a thread.
    """
    from indexer.gme import load_embedder as _load

    with _LOAD_LOCK:
        return _load(model, device=device, dtype=dtype, **options)


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
    "CollectionError",
    "DocumentError",
    "Embedder",
    "FakeEmbedder",
    "ModelMismatchError",
    "ModelNotAvailableError",
    "PageLensError",
    "embedder_options",
    "load_embedder",
]
