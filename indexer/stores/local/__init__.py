"""The embedded local engine: one folder with a SQLite catalog, a FAISS cache and page images.

Modules: ``collection`` (:class:`LocalCollection`, the engine), ``catalog`` (schema,
migrations, connections), ``faiss_cache`` (the FAISS file kept in step with the catalog),
``vector_index`` (:class:`VectorIndex`, the only module that imports faiss), ``text`` (FTS5
and hybrid search), ``sources`` (source paths and times, a sync's atomic replace), ``files``
(the folder's file names, write lock, disk failures) and
``check`` (what only a folder can suffer, for :mod:`indexer.maintenance`).

May import: :mod:`indexer.errors`, :mod:`indexer.identity`, :mod:`indexer.stores.base` and
:mod:`indexer.stores.types`. Only :mod:`indexer.stores` (and the compatibility shim
:mod:`indexer.store`) import this package; nothing else names its classes.
"""

from __future__ import annotations

from indexer.stores.local.collection import LocalCollection
from indexer.stores.local.faiss_cache import APPROX_THRESHOLD, VECTORS, VECTORS_STATE
from indexer.stores.local.files import CATALOG, LOCK, PAGES_DIR, write_failure
from indexer.stores.local.text import fts_query

__all__ = [
    "APPROX_THRESHOLD",
    "CATALOG",
    "LOCK",
    "PAGES_DIR",
    "VECTORS",
    "VECTORS_STATE",
    "LocalCollection",
    "fts_query",
    "write_failure",
]
