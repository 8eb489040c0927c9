"""A smaller visual-token budget for one call, without loading a second model.

Visual evidence (``retriever.evidence.visual``) embeds a dozen crops of a page through the
document path at a budget below the page's. The budget reaches the image processor through
:class:`~indexer.model.gme.embedder.GmeEmbedder`'s ``min/max`` pixels, read deep inside the
batching path. Why a context variable and not an attribute swap: one embedder is shared by
the API server's threads, and a swapped attribute would resize another request's pages; a
``ContextVar`` is seen only by the calling thread (or task) and is reset when the call ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

#: (id of the embedder, min tokens, max tokens) while a call runs at its own budget.
_OVERRIDE: ContextVar[tuple[int, int, int] | None] = ContextVar("gme_image_budget", default=None)


def tokens(embedder: Any) -> tuple[int, int]:
    """(min, max) visual tokens per image for ``embedder`` in the current call."""
    override = _OVERRIDE.get()
    if override is not None and override[0] == id(embedder):
        return override[1], override[2]
    return int(embedder.min_image_tokens), int(embedder.max_image_tokens)


@contextmanager
def image_budget(embedder: Any, max_image_tokens: int | None) -> Iterator[None]:
    """Within the block, ``embedder`` sizes images to at most ``max_image_tokens`` (and at
    least ``min(its min_image_tokens, max_image_tokens)``, as its constructor would); None
    keeps its own budget."""
    if max_image_tokens is None:
        yield
        return
    top = int(max_image_tokens)
    if top < 1:
        raise ValueError(f"max_image_tokens must be at least 1, got {max_image_tokens}")
    mark = _OVERRIDE.set((id(embedder), min(int(embedder.min_image_tokens), top), top))
    try:
        yield
    finally:
        _OVERRIDE.reset(mark)


__all__ = ["image_budget", "tokens"]
