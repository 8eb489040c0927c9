"""Collections named by requests: name -> folder under PAGELENS_HOME -> one open store each."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from pathlib import Path

from app.server.errors import ApiError
from indexer.config import collection_path, home
from indexer.errors import CollectionError
from indexer.store import CATALOG, Collection

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


class CollectionCache:
    """Opened collections by folder, shared by all requests (thread-safe)."""

    def __init__(self, resolver: Callable[[str | None], Path]) -> None:
        self.resolver = resolver
        self._open: dict[Path, Collection] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None) -> Collection:
        path = Path(self.resolver(name))
        with self._lock:
            store = self._open.get(path)
            if store is not None:
                return store
            if not (path / CATALOG).is_file():
                raise ApiError(
                    404,
                    f"No collection {name or path.name!r} on this server.",
                    param="collection",
                    code="collection_not_found",
                )
            try:
                store = Collection(path, create=False)
            except CollectionError as exc:
                raise ApiError(
                    404, str(exc), param="collection", code="collection_not_found"
                ) from exc
            self._open[path] = store
            return store

    def close(self) -> None:
        with self._lock:
            for store in self._open.values():
                with contextlib.suppress(Exception):
                    store.close()
            self._open.clear()
