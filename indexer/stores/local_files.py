"""Disk failures of the local engine, said in words a user can act on."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from indexer.errors import CollectionError

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
