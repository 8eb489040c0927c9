"""Collection engines behind one interface, and the one function that picks an engine.

``open_collection(spec)`` takes what ``--collection`` takes:

* a bare name (``reports``): the folder ``$PAGELENS_HOME/reports`` (local engine);
* a folder path (``./data/x``, ``~/col``, ``/mnt/c``): that folder (local engine);
* ``milvus://HOST:PORT/NAME`` (``milvuss://`` for TLS): collection ``NAME`` on that Milvus
  server (the Milvus engine, needs the ``milvus`` extra). The token, when the server wants
  one (Zilliz Cloud style ``user:password`` or an API key), comes from
  ``PAGELENS_MILVUS_TOKEN``, never from the address, so it stays out of logs and shell history.

Nothing outside this package names an engine class: callers use :class:`Store`, the
optional capabilities in :mod:`indexer.stores.base` (``StorageChecks``, ``ImageAudit``) and
the functions here. Holds ``base`` (the protocol), ``types`` (the value types), ``binding``
(the model-identity rule) and one subpackage or module per engine (``local``, ``milvus``).
May import :mod:`indexer.errors`, :mod:`indexer.identity`, :mod:`indexer.config` and
:mod:`indexer.pages.words` (the word-box value type and its encoding); never the pipeline,
the model or the maintenance code above it.
"""

from __future__ import annotations

import os
from pathlib import Path

from indexer.stores.base import CollectionStats, PageFilter, Store

__all__ = [
    "UPLOADS_DIR",
    "CollectionStats",
    "PageFilter",
    "Store",
    "canonical_spec",
    "catalog_file",
    "describe_unopenable",
    "is_milvus_spec",
    "open_collection",
    "server_collections",
    "server_of",
    "spec_exists",
]

MILVUS_SCHEMES = ("milvus://", "milvuss://")

#: The folder of a collection's uploaded source files (inside a local collection's folder;
#: the app's work folder for a Milvus collection).
UPLOADS_DIR = "uploads"


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
    from indexer.stores.local.collection import LocalCollection

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

    path = spec if isinstance(spec, Path) else collection_path(spec)
    return catalog_file(path).is_file()


def catalog_file(folder: str | os.PathLike[str]) -> Path:
    """The catalog file of a local collection folder (whether the folder holds a
    collection; where its messages may name it)."""
    from indexer.stores.local.files import CATALOG

    return Path(folder) / CATALOG


def describe_unopenable(folder: str | os.PathLike[str]) -> str:
    """Why a local collection whose catalog exists could not be opened, for a check report:
    whether SQLite can read the catalog at all."""
    from indexer.stores.local.catalog import describe_unopenable as describe

    return describe(catalog_file(folder))


def canonical_spec(spec: str) -> str:
    """A server collection's address without its options, spelled one way (lower-case
    scheme and host); :class:`~indexer.errors.CollectionError` when it is not one."""
    from indexer.stores.milvus.address import MilvusAddress

    return MilvusAddress.parse(spec).spec


def server_of(spec: str) -> str:
    """``host:port`` of a server collection's address (to keep it out of messages)."""
    from indexer.stores.milvus.address import MilvusAddress

    address = MilvusAddress.parse(spec)
    return f"{address.host}:{address.port}"


def server_collections(store: Store) -> list[str]:
    """The specs of the collections on the same server as ``store`` (itself included), for
    a collection picker: every PageLens collection of a Milvus server; ``[]`` for a local
    folder (the named local ones are :func:`indexer.config.list_collections`)."""
    lister = getattr(store, "server_collections", None)
    return list(lister()) if callable(lister) else []
