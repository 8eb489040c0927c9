"""Collections named by requests -> one open store each.

What a request's ``collection`` may name (``/v1/search``, ``/v1/ask``, page images):

* nothing: the server's default collection (``pagelens --collection ... serve``: a name, a
  folder or a ``milvus://`` address);
* a bare name: a local collection under ``PAGELENS_HOME``; never a path;
* a ``milvus://`` / ``milvuss://`` address: only one the operator configured at start
  (``--collection`` or ``--allow-collection``), compared by scheme, host, port and name.
  Any other address is refused with 403 ``collection_not_allowed`` before anything is
  contacted: a request must never make the server connect to a host of its choosing
  (SSRF). A request's ``?images=`` part is ignored: the configured address's is used.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from app.server.errors import ApiError
from indexer.config import collection_path, home
from indexer.errors import CollectionError, CollectionNotFoundError
from indexer.stores import (
    Store,
    canonical_spec,
    catalog_file,
    is_milvus_spec,
    open_collection,
    server_of,
)

_COLLECTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def resolve_collection_name(name: str | None) -> Path:
    """A collection *name* -> its folder under PAGELENS_HOME; paths are refused."""
    if name is None or name == "":
        return collection_path(None)
    if not _COLLECTION_NAME.fullmatch(name) or ".." in name:
        raise ApiError(
            400,
            f"Collection {name!r} is not a collection name (letters, digits, '_', '-', '.'; "
            "paths are not accepted over HTTP).",
            param="collection",
            code="invalid_collection",
        )
    path = collection_path(name)
    root = home()
    if path.parent.resolve() != root.resolve():  # a same-named folder in the cwd
        path = root / name
    return path


#: Any URL left in a message of a Milvus collection (a client library's endpoint URL).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


def milvus_key(spec: str) -> str:
    """A Milvus address without its options, spelled one way (lower-case scheme and host)."""
    return canonical_spec(spec)


def make_resolver(
    default: Path | str, allowed: Iterable[str] = ()
) -> Callable[[str | None], Path | str]:
    """The request-name -> collection rule of ``pagelens serve`` (see the module docs):
    ``default`` for no name, local names under PAGELENS_HOME, and of Milvus addresses only
    ``allowed`` ones (plus ``default`` when it is one)."""
    configured = [str(default)] if is_milvus_spec(default) else []
    permitted = {milvus_key(spec): spec for spec in [*configured, *allowed]}

    def resolve(name: str | None) -> Path | str:
        if not name:
            return default
        if is_milvus_spec(name):
            try:
                key = milvus_key(name)
            except CollectionError:
                key = None
            if key not in permitted:
                raise ApiError(
                    403,
                    "This server does not serve that Milvus collection: requests may name "
                    "only the addresses it was started with (--collection, "
                    "--allow-collection), or local collections by name.",
                    param="collection",
                    code="collection_not_allowed",
                )
            return permitted[key]
        return resolve_collection_name(name)

    return resolve


class CollectionCache:
    """Opened collections by folder, shared by all requests (thread-safe)."""

    def __init__(self, resolver: Callable[[str | None], Path | str]) -> None:
        self.resolver = resolver
        self._open: dict[Path | str, Store] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None) -> Store:
        spec = self.resolver(name)
        # A Milvus address (the operator's --collection) stays a string; folders are paths.
        path: Path | str = spec if is_milvus_spec(spec) else Path(spec)
        with self._lock:
            store = self._open.get(path)
            if store is not None:
                return store
            if isinstance(path, Path) and not catalog_file(path).is_file():
                raise ApiError(
                    404,
                    f"No collection {name or Path(path).name!r} on this server.",
                    param="collection",
                    code="collection_not_found",
                )
            try:
                store = open_collection(path, create=False)
            except CollectionError as exc:
                message = self.scrub(str(exc), name)
                if is_milvus_spec(path) and not isinstance(exc, CollectionNotFoundError):
                    # The Milvus server did not answer: the client may retry later.
                    raise ApiError(
                        503, message, param="collection", code="collection_unavailable"
                    ) from exc
                raise ApiError(
                    404, message, param="collection", code="collection_not_found"
                ) from exc
            self._open[path] = store
            return store

    def scrub(self, message: str, name: str | None) -> str:
        """``message`` with the collection's folder (and PAGELENS_HOME) replaced by its name:
        error bodies must not tell clients where the server keeps its files."""
        try:
            spec = self.resolver(name)
        except ApiError:
            return message
        path = Path(spec)
        label = repr(name or path.name)
        if is_milvus_spec(spec):  # the server's Milvus address is not the client's business
            message = message.replace(str(spec), label).replace(canonical_spec(str(spec)), label)
            store = self._open.get(spec)  # no lock: get() calls this while holding it
            images = getattr(store, "image_location", None)  # a folder, or s3://bucket/...
            if images:
                message = message.replace(f"Image store {images}", "The collection's image store")
                message = message.replace(str(images), "the collection's image store")
            message = message.replace(server_of(str(spec)), "the collection's server")
            # what a client library adds (an S3 endpoint URL with the bucket and key) too
            return _URL.sub("(an address of the server's)", message)
        catalogs = {str(catalog_file(path)), str(catalog_file(path.resolve()))}
        for folder in sorted(catalogs, key=len)[::-1]:
            message = message.replace(folder, f"the catalog of collection {label}")
        for folder in sorted({str(path), str(path.resolve())}, key=len, reverse=True):
            message = message.replace(folder, label)
        for root in sorted({str(home()), str(home().resolve())}, key=len, reverse=True):
            message = message.replace(root, "PAGELENS_HOME")
        return message

    def close(self) -> None:
        with self._lock:
            for store in self._open.values():
                with contextlib.suppress(Exception):
                    store.close()
            self._open.clear()
