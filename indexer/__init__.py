"""PageLens indexing: files -> pages -> vectors -> store.

The public names live here; each submodule holds one layer and can be used on its own:
``model/`` (embedders and loading them), ``pages/`` (files to page images and text),
``stores/`` (collections), ``pipeline`` (the indexer), ``ray/`` (bulk jobs) and
``maintenance/`` (check, repair, migrate). Beside them: ``config`` (paths and every
``PAGELENS_*`` variable), ``settings`` (the model settings a collection keeps), ``identity``
(model fingerprints), ``errors``, and the compatibility shims ``store``, ``embedder`` and
``gme`` (old import paths of public names; nothing in the package imports them).

May import nothing above it (never :mod:`retriever`, :mod:`app` or :mod:`pagelens`). Inside,
data flows one way: ``pages`` and ``model`` know nothing of ``stores``; ``pipeline`` and
``ray`` put the three together; ``maintenance`` works through the ``Store`` protocol.
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
