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
from indexer.store import CATALOG
from indexer.stores import Store, is_milvus_spec, open_collection

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
            if isinstance(path, Path) and not (path / CATALOG).is_file():
                raise ApiError(
                    404,
                    f"No collection {name or Path(path).name!r} on this server.",
                    param="collection",
                    code="collection_not_found",
                )
            try:
                store = open_collection(path, create=False)
            except CollectionError as exc:
                raise ApiError(
                    404,
                    self.scrub(str(exc), name),
                    param="collection",
                    code="collection_not_found",
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
            return message.replace(str(spec), label)
        for folder in sorted({str(path / CATALOG), str(path.resolve() / CATALOG)}, key=len)[::-1]:
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
