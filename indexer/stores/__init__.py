"""Collection engines behind one interface, and the one function that picks an engine.

``open_collection(spec)`` takes what ``--collection`` takes:

* a bare name (``reports``): the folder ``$PAGELENS_HOME/reports`` (local engine);
* a folder path (``./data/x``, ``~/col``, ``/mnt/c``): that folder (local engine);
* ``milvus://HOST:PORT/NAME`` (``milvuss://`` for TLS): collection ``NAME`` on that Milvus
  server (the Milvus engine, needs the ``milvus`` extra). The token, when the server wants
  one (Zilliz Cloud style ``user:password`` or an API key), comes from
  ``PAGELENS_MILVUS_TOKEN``, never from the address, so it stays out of logs and shell history.

Nothing outside this package names an engine class.
"""

from __future__ import annotations

import os
from pathlib import Path

from indexer.stores.base import CollectionStats, PageFilter, Store

__all__ = [
    "CollectionStats",
    "PageFilter",
    "Store",
    "is_milvus_spec",
    "open_collection",
    "server_collections",
    "spec_exists",
]

MILVUS_SCHEMES = ("milvus://", "milvuss://")


def is_milvus_spec(spec: str | os.PathLike[str] | None) -> bool:
    """Whether a collection spec names a Milvus collection (``milvus://`` / ``milvuss://``)."""
    return spec is not None and str(spec).lower().startswith(MILVUS_SCHEMES)


def open_collection(
    spec: str | os.PathLike[str] | None = None,
    *,
    create: bool = True,
    model_id: str | None = None,
    dim: int | None = None,
) -> Store:
    """Open (or, with ``create``, create) the collection a spec names; see module docs."""
    if is_milvus_spec(spec):
        from indexer.stores.milvus.collection import MilvusCollection

        return MilvusCollection.from_spec(str(spec), create=create, model_id=model_id, dim=dim)
    from indexer.config import collection_path
    from indexer.stores.local import LocalCollection

    # A Path is a folder already resolved (by the CLI, the app, the server); only text is
    # read with the name-or-path rule (a bare word is a collection under PAGELENS_HOME).
    path = spec if isinstance(spec, Path) else collection_path(spec)
    return LocalCollection(path, create=create, model_id=model_id, dim=dim)


def spec_exists(spec: str | os.PathLike[str] | None) -> bool:
    """Whether the collection a spec names exists, without creating it."""
    if is_milvus_spec(spec):
        from indexer.errors import CollectionError

        try:
            open_collection(spec, create=False).close()
        except CollectionError:
            return False
        return True
    from indexer.config import collection_path
    from indexer.stores.local import CATALOG

    path = spec if isinstance(spec, Path) else collection_path(spec)
    return (Path(path) / CATALOG).is_file()


def server_collections(store: Store) -> list[str]:
    """The specs of the collections on the same server as ``store`` (itself included), for
    a collection picker: every PageLens collection of a Milvus server; ``[]`` for a local
    folder (the named local ones are :func:`indexer.config.list_collections`)."""
    lister = getattr(store, "server_collections", None)
    return list(lister()) if callable(lister) else []
