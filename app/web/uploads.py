"""Storing uploaded files safely inside a collection folder.

The web app receives files as (name, bytes) from a browser: the name is untrusted text.
Every upload lands in ``<collection>/uploads/`` and nowhere else, under a sanitised name
(no folders, no ``..``, no control characters, no Windows device names), streamed to a
temporary file first so that a too-large or interrupted upload leaves nothing behind.
A second upload with the same name but other content gets a new name (``report-2.pdf``)
instead of overwriting the first; the same content under the same name reuses the file.

The size limit is ``$PAGELENS_MAX_UPLOAD_MB`` megabytes (default 200).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from indexer import config
from indexer.config import MAX_UPLOAD_MB_ENV
from indexer.errors import DocumentError, PageLensError
from indexer.stores import UPLOADS_DIR

DEFAULT_MAX_UPLOAD_MB = 200
_CHUNK = 1 << 20
_MAX_NAME_BYTES = 150

#: Names Windows reserves for devices, with or without an extension.
_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{dev}{i}" for dev in ("COM", "LPT") for i in range(10)
}
_UNSAFE = re.compile(r"[^\w .()+,=@\[\]-]", re.UNICODE)


def max_upload_mb() -> int:
    """The upload limit in megabytes: ``$PAGELENS_MAX_UPLOAD_MB`` or 200."""
    raw = (config.get(MAX_UPLOAD_MB_ENV) or "").strip()
    if not raw:
        return DEFAULT_MAX_UPLOAD_MB
    try:
        value = int(float(raw))
    except ValueError as exc:
        raise PageLensError(
            f"PAGELENS_MAX_UPLOAD_MB must be a number of megabytes, not '{raw}'."
        ) from exc
    if value < 1:
        raise PageLensError("PAGELENS_MAX_UPLOAD_MB must be at least 1.")
    return value


def max_upload_bytes() -> int:
    return max_upload_mb() * 1024 * 1024


def safe_filename(name: str | None, *, default: str = "upload") -> str:
    """A file name that is safe to create in one folder on any OS, keeping it readable.

    Only the last path component survives (``../../etc/passwd`` -> ``passwd``); characters
    outside letters, digits and a few punctuation marks become ``_``; leading dots (hidden
    files, ``..``) and trailing dots and spaces go; device names (``CON``, ``nul.pdf``) get
    a ``_`` prefix; the result is at most 150 UTF-8 bytes and keeps its extension.
    """
    text = unicodedata.normalize("NFC", str(name or ""))
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = re.split(r"[/\\]", text)[-1]
    text = _UNSAFE.sub("_", text)
    text = re.sub(r"\s+", " ", text).strip(" .")
    text = re.sub(r"_{2,}", "_", text)
    if not text or set(text) <= {"_", " ", "."}:
        text = default
    stem, dot, suffix = text.rpartition(".")
    if not dot:
        stem, suffix = text, ""
    if stem.split(".")[0].upper() in _RESERVED or (not stem and suffix.upper() in _RESERVED):
        text = "_" + text
        stem = "_" + stem
    if len(text.encode("utf-8")) > _MAX_NAME_BYTES:
        ext = ("." + suffix[:16]) if dot and stem else ""
        budget = _MAX_NAME_BYTES - len(ext.encode("utf-8"))
        base = (stem if dot and stem else text).encode("utf-8")[:budget]
        text = base.decode("utf-8", errors="ignore").rstrip(" .") + ext
    return text


def uploads_dir(collection: str | os.PathLike[str]) -> Path:
    """``<collection>/uploads``, created if needed; refused if it leads outside the collection."""
    root = Path(collection).expanduser()
    folder = root / UPLOADS_DIR
    if folder.is_symlink():
        raise PageLensError(f"{folder} is a symbolic link; uploads must stay in the collection.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PageLensError(f"Cannot create the uploads folder {folder}: {exc}") from exc
    return folder


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def is_upload(collection: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file stored by :func:`save_upload` in this collection."""
    folder = Path(collection).expanduser() / UPLOADS_DIR
    p = Path(path)
    return (
        p.is_file()
        and not p.is_symlink()
        and _inside(p, folder)
        and p.parent.resolve() == folder.resolve()
    )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _candidates(name: str):
    yield name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    ext = f".{suffix}" if suffix else ""
    for i in range(2, 10_000):
        yield f"{stem}-{i}{ext}"
    raise PageLensError(f"Too many uploads named {name}.")


def save_upload(
    collection: str | os.PathLike[str],
    name: str | None,
    data: bytes | bytearray | memoryview | BinaryIO,
    *,
    max_bytes: int | None = None,
) -> Path:
    """Store one uploaded file in ``<collection>/uploads/`` and return where it went.

    ``data`` is the content or a binary file object (read in chunks). Raises
    :class:`~indexer.errors.DocumentError` with reason ``too-large`` over the limit
    (``max_bytes``, default :func:`max_upload_bytes`) or ``empty`` for an empty file;
    nothing is left on disk in either case.
    """
    shown = str(name or "upload")
    limit = max_upload_bytes() if max_bytes is None else int(max_bytes)
    folder = uploads_dir(collection)
    safe = safe_filename(name)
    fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            chunks: Iterable[bytes]
            if isinstance(data, bytes | bytearray | memoryview):
                chunks = (bytes(data),)
            else:
                if hasattr(data, "seek"):
                    data.seek(0)
                chunks = iter(lambda: data.read(_CHUNK), b"")
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise DocumentError(
                        shown,
                        "too-large",
                        f"{shown} is larger than the upload limit of {_mb(limit)} "
                        "(set PAGELENS_MAX_UPLOAD_MB to change it).",
                    )
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise DocumentError(shown, "empty", f"{shown} is empty (0 bytes).")
        sha = digest.hexdigest()
        for candidate in _candidates(safe):
            target = folder / candidate
            if target.exists() or target.is_symlink():
                if target.is_file() and not target.is_symlink() and _sha256_file(target) == sha:
                    return target  # the same file uploaded again
                continue
            try:
                os.link(tmp, target)  # fails if the name was taken meanwhile: never overwrites
            except FileExistsError:
                continue
            except OSError:  # no hard links on this file system
                if target.exists():
                    continue
                os.replace(tmp, target)
            if not _inside(target, folder):  # pragma: no cover - defence in depth
                target.unlink(missing_ok=True)
                raise PageLensError(f"Refusing to store {shown} outside {folder}.")
            return target
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        tmp.unlink(missing_ok=True)


def discard_upload(collection: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Delete a stored upload; files outside ``<collection>/uploads/`` are never touched."""
    p = Path(path)
    if not is_upload(collection, p):
        return False
    p.unlink(missing_ok=True)
    return True


def _mb(n: int) -> str:
    value = n / (1024 * 1024)
    return f"{value:.0f} MB" if value >= 1 else f"{n} bytes"
