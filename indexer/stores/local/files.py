"""The local engine's folder: the names of its files, the write lock that serialises
writers, and disk failures said in words a user can act on."""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.errors import CollectionError, CollectionLockedError

CATALOG = "catalog.sqlite"
PAGES_DIR = "pages"
LOCK = "write.lock"

_WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
)


def write_failure(path: Path, exc: BaseException) -> CollectionError | None:
    """A readable error for a write that the collection's disk refused (full, read-only...),
    or None when ``exc`` is not such a failure (then it is a bug, and stays as it is)."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if not any(s in text.lower() for s in ("full", "readonly", "read-only", "disk i/o")):
            return None
        reason = text
    elif isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        reason = exc.strerror or str(exc)
        if exc.filename:
            reason += f" ({exc.filename})"
    else:
        return None
    return CollectionError(
        f"Cannot write to collection {path}: {reason}. Everything committed before is intact; "
        "free some space (or make the folder writable) and run the same command again to resume."
    )


class WriteLock:
    """Mixin of :class:`~indexer.stores.local.collection.LocalCollection`: the collection's
    file lock (``write.lock``), held by the one process allowed to write."""

    path: Path
    read_only: bool
    _mutex: threading.RLock
    _lock_depth: int
    _filelock: Any

    if TYPE_CHECKING:  # provided by LocalCollection

        def flush(self) -> None: ...

    @contextlib.contextmanager
    def writing(
        self, *, timeout: float = -1, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[Any]:
        """Hold the collection's write lock (re-entrant within this object).

        ``on_wait`` is told once, with a readable message, when another process holds the
        lock and we start waiting; ``timeout`` < 0 waits for ever.
        """
        if self.read_only:
            raise CollectionError(f"Collection folder {self.path} is read-only.")
        from filelock import FileLock, Timeout

        with self._mutex:
            if self._lock_depth == 0:
                lock = FileLock(str(self.path / LOCK))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    if on_wait:
                        on_wait(f"waiting for another process indexing into {self.path} ...")
                    try:
                        lock.acquire(timeout=timeout)
                    except Timeout as exc:
                        raise CollectionLockedError(
                            f"Collection {self.path} is busy: another process is writing to it."
                        ) from exc
                self._filelock = lock
            self._lock_depth += 1
        try:
            yield self
        except (OSError, sqlite3.OperationalError) as exc:
            failure = write_failure(self.path, exc)
            if failure is None:
                raise
            raise failure from exc
        finally:
            with self._mutex:
                if self._lock_depth == 1:
                    try:
                        self.flush()  # while the lock is still ours: flush() needs it
                    finally:
                        self._lock_depth = 0
                        self._filelock.release()
                        self._filelock = None
                else:
                    self._lock_depth -= 1

    @contextlib.contextmanager
    def lock_if_free(self) -> Iterator[bool]:
        """Hold the write lock if no other process does, without waiting; yields whether the
        view is now free of concurrent writers.

        For readers that want a consistent view but write nothing (``pagelens check``): none
        of :meth:`writing`'s side effects (no flush, no write-failure mapping). A read-only
        folder, or one where the lock file cannot be created, has no writers: True.
        """
        from filelock import FileLock, Timeout

        if self.read_only or self._lock_depth:  # no one can write / we already hold it
            yield True
            return
        lock = FileLock(str(self.path / LOCK))
        held = free = False
        try:
            lock.acquire(timeout=0)
            held = free = True
        except Timeout:
            pass
        except OSError:  # cannot even create the lock file, so nobody writes here either
            free = True
        try:
            yield free
        finally:
            if held:
                lock.release()

    def _require_lock(self) -> None:
        if self._lock_depth == 0:
            raise RuntimeError("write outside Collection.writing()")
