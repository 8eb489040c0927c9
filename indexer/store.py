"""Compatibility names for the store: ``from indexer.store import Collection`` keeps working.

The store is an interface (:class:`indexer.stores.base.Store`) with engines under
:mod:`indexer.stores`; ``Collection`` is the embedded local engine, which a folder path
opens. To open any collection spec (a name, a folder, ``milvus://host:port/name``) use
:func:`indexer.stores.open_collection`.
"""

from __future__ import annotations

from indexer.stores import UPLOADS_DIR
from indexer.stores.base import (
    CollectionStats,
    EncodedImage,
    PageFilter,
    Store,
    atomic_write_bytes,
    encode_png,
    mismatch_message,
    utcnow,
)
from indexer.stores.local import (
    APPROX_THRESHOLD,
    CATALOG,
    LOCK,
    PAGES_DIR,
    VECTORS,
    VECTORS_STATE,
    LocalCollection,
    fts_query,
    write_failure,
)

#: The embedded local engine (one folder), under its historical name.
Collection = LocalCollection

__all__ = [
    "APPROX_THRESHOLD",
    "CATALOG",
    "LOCK",
    "PAGES_DIR",
    "UPLOADS_DIR",
    "VECTORS",
    "VECTORS_STATE",
    "Collection",
    "CollectionStats",
    "EncodedImage",
    "LocalCollection",
    "PageFilter",
    "Store",
    "atomic_write_bytes",
    "encode_png",
    "fts_query",
    "mismatch_message",
    "utcnow",
    "write_failure",
]
