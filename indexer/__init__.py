"""PageLens indexing: files -> pages -> vectors -> store.

The public names live here; each submodule holds one layer and can be used on its own:
``model/`` (embedders and loading them), ``pages/`` (files to page images and text),
``stores/`` (collections), ``pipeline`` (the indexer), ``ray/`` (bulk jobs) and
``maintenance/`` (check, repair, migrate).
"""

from __future__ import annotations

from indexer.errors import (
    CollectionError,
    DocumentError,
    ModelMismatchError,
    ModelNotAvailableError,
    PageLensError,
)
from indexer.model import (
    DEFAULT_INSTRUCTION,
    QUERY_INSTRUCTION,
    Embedder,
    FakeEmbedder,
    embedder_options,
    load_embedder,
    remote_url,
)

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
    "remote_url",
]
