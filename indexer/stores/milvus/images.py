"""Where a Milvus collection keeps its page images: a shared folder or an S3-compatible bucket.

Every PageLens process working on one Milvus collection must read the same images, so the
location is recorded in the collection (meta ``image_store``) by the process that creates it,
and may be overridden per machine (``?images=`` in the address or ``PAGELENS_MILVUS_IMAGES``)
where a shared mount sits at another path. Keys are ``pages/<document id>/<number>.png``,
the same relative names a local collection uses.

Images are written before the page row that names them (atomic rename in a folder; a single
PUT in S3), so a page that is searchable always has its image.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
import time
from pathlib import Path

from indexer.errors import CollectionError
from indexer.stores.base import atomic_write_bytes


class ImageMissingError(CollectionError, FileNotFoundError):
    """A page row names an image that is not in the image store (deleted, or lost).

    A ``CollectionError`` (one line for the user, who is told how to repair it) and a
    ``FileNotFoundError`` (what callers that tolerate a missing file already catch)."""

    def __init__(self, location: str, key: str) -> None:
        super().__init__(
            f"Page image {key} is missing from {location}: 'pagelens check --repair' and then "
            "'pagelens index' of the same files restore it."
        )


class FolderImages:
    """Page images in a folder (a local disk, or an NFS/SMB mount shared by all machines)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        """The file of ``key``; a key that would leave the folder (``..``, an absolute
        path: keys come from page rows, which anyone who can write to the Milvus server can
        change) is refused before any file is read, written or deleted."""
        if Path(key).is_absolute() or ".." in Path(key).parts:
            raise CollectionError(f"Page image key {key!r} leaves the image folder {self.root}.")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        try:
            atomic_write_bytes(self._path(key), data)
        except OSError as exc:
            raise CollectionError(
                f"Cannot write page image {self._path(key)}: {exc.strerror or exc}. Nothing "
                "half-stored is searchable; fix the image folder and run the same command again."
            ) from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ImageMissingError(self.url, key) from exc
        except OSError as exc:
            raise CollectionError(
                f"Cannot read page image {self._path(key)}: {exc.strerror or exc}."
            ) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def local_path(self, key: str, sha256: str | None = None) -> Path:
        return self._path(key)

    def age(self, key: str) -> float | None:
        """Seconds since the image was written; None if it is not there."""
        try:
            return max(0.0, time.time() - self._path(key).stat().st_mtime)
        except OSError:
            return None

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as exc:  # e.g. another machine's file on a root-squashed mount
                raise CollectionError(
                    f"Cannot delete page image {self._path(key)}: {exc.strerror or exc}."
                ) from exc

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every file under ``prefix`` as ``{key: size in bytes}`` (checks list them once)."""
        out: dict[str, int] = {}
        base = self._path(prefix)
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                path = Path(dirpath) / name
                try:
                    out[path.relative_to(self.root).as_posix()] = path.stat().st_size
                except OSError:
                    continue  # removed meanwhile
        return out


class FsspecImages:
    """Page images in an object store through fsspec (``s3://bucket/prefix`` with s3fs).

    Credentials and endpoint come from the usual places of the backend. For S3 and every
    S3-compatible server (MinIO, Ceph RGW, Cloudflare R2, ...): ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` (or ``~/.aws``), and ``AWS_ENDPOINT_URL`` (or
    ``AWS_ENDPOINT_URL_S3``) for a server that is not AWS. Every call is bounded by
    ``timeout`` (PageLens's Milvus timeout) and a failure is one
    :class:`~indexer.errors.CollectionError` line; listings are never cached, because other
    machines add and remove images all the time. Images shown or exported are cached under
    the work folder by content hash, so a cached copy is never stale.
    """

    def __init__(self, url: str, cache: Path, *, timeout: float = 10.0) -> None:
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - fsspec ships with the milvus extra
            raise CollectionError(
                "Page images in a bucket need fsspec and s3fs: pip install 'pagelens[milvus]'."
            ) from exc
        self.url = url.rstrip("/")
        protocol = self.url.split("://", 1)[0]
        options: dict = {"use_listings_cache": False, "skip_instance_cache": True}
        if protocol in ("s3", "s3a"):
            options["config_kwargs"] = {
                "connect_timeout": timeout,
                "read_timeout": timeout,
                "retries": {"max_attempts": 2, "mode": "standard"},
            }
        try:
            self.fs = fsspec.filesystem(protocol, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise CollectionError(f"Cannot open the image store {url}: {exc}") from exc
        if hasattr(self.fs, "retries"):
            self.fs.retries = 2  # s3fs's own retry loop around botocore's (default 5)
        self.cache = cache

    def _full(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _fail(self, what: str, key: str, exc: BaseException) -> CollectionError:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        kept = "Nothing half-stored is searchable; " if what == "writing" else ""
        return CollectionError(
            f"Image store {self.url} failed while {what} {key} ({reason}). {kept}Run the same "
            "command again when the store is back."
        )

    def put(self, key: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._full(key), data)
        except Exception as exc:  # botocore/aiohttp errors are not OSErrors
            raise self._fail("writing", key, exc) from exc

    def get(self, key: str) -> bytes:
        """The image's bytes; :class:`ImageMissingError` if the object is gone."""
        try:
            return bytes(self.fs.cat_file(self._full(key)))
        except FileNotFoundError as exc:
            raise ImageMissingError(self.url, key) from exc
        except Exception as exc:
            raise self._fail("reading", key, exc) from exc

    def exists(self, key: str) -> bool:
        try:
            return bool(self.fs.exists(self._full(key)))
        except Exception as exc:
            raise self._fail("looking for", key, exc) from exc

    def local_path(self, key: str, sha256: str | None = None) -> Path:
        """A local copy (downloaded once; by content hash when known, so never stale).

        A missing object gives a path that does not exist, as a folder's missing file does.
        """
        if not (sha256 and _HEX64.fullmatch(sha256)):  # a row's value names no path
            sha256 = hashlib.sha256(self._full(key).encode()).hexdigest()
        name = sha256
        path = self.cache / name[:2] / f"{name}{Path(key).suffix}"
        if not path.is_file():
            try:
                atomic_write_bytes(path, self.get(key))
            except FileNotFoundError:
                pass
        return path

    def age(self, key: str) -> float | None:
        """Seconds since the object was written; None if it is not there."""
        try:
            info = self.fs.info(self._full(key))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._fail("looking for", key, exc) from exc
        when = info.get("LastModified") or info.get("mtime") or info.get("created")
        if isinstance(when, datetime.datetime):
            when = when.timestamp()
        return max(0.0, time.time() - float(when)) if when is not None else None

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.fs.rm_file(self._full(key))
            except FileNotFoundError:
                pass
            except Exception as exc:
                raise self._fail("deleting", key, exc) from exc

    def delete_prefix(self, prefix: str) -> None:
        try:
            if self.fs.exists(self._full(prefix)):
                self.fs.rm(self._full(prefix), recursive=True)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._fail("deleting", prefix, exc) from exc

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every object under ``prefix`` as ``{key: size in bytes}`` (one listing)."""
        root = self.url.split("://", 1)[1].rstrip("/") + "/"
        try:
            found = self.fs.find(self._full(prefix), detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:
            raise self._fail("listing", prefix, exc) from exc
        out: dict[str, int] = {}
        for path, info in found.items():
            key = str(path).split("://", 1)[-1]
            if key.startswith(root):
                out[key[len(root) :]] = int(info.get("size") or 0)
        return out


ImageStore = FolderImages | FsspecImages
_HEX64 = re.compile(r"[0-9a-f]{64}")

#: An atomic write's temporary file (``.NAME.<random>.tmp``) lives for milliseconds; one this
#: old is the leftover of a killed process, never another writer's work in progress.
TEMP_FILE_GRACE = 300.0


def is_temp_file(key: str) -> bool:
    """Whether an image-store key is an atomic write's temporary file (``.NAME.<rand>.tmp``,
    see :func:`indexer.stores.base.atomic_write_bytes`)."""
    name = key.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def redact_userinfo(text: str) -> str:
    """``text`` (an address or a location) fit to show: everything from its scheme to the
    last ``@`` in it replaced by ``***`` (``milvus://***@host:19530/docs``).

    A password may hold any character (``/``, ``#``, ``?``, ``@``, a space), so where the
    ``user:secret`` part ends cannot be told from the text: ``milvus://u:p/a#b@host`` is
    split by URL rules at the ``/``, with the host ``u`` and the port ``p``. Only what
    follows the last ``@`` is surely no part of it, so that alone is shown.
    """
    text = str(text)
    at = text.rfind("@")
    if at < 0:
        return text
    scheme = _SCHEME.match(text)
    keep = scheme.end() if scheme and scheme.end() <= at else 0
    return f"{text[:keep]}***{text[at:]}"


def carries_credentials(location: str) -> bool:
    """Whether a URL (``scheme://...``) may carry a ``user:secret@`` part: an ``@`` anywhere
    in it, since a password may hold ``/``, ``?`` or ``#`` and so end the URL's host part
    early (``s3://KEY:se/cret@bucket`` has, by URL rules, the host ``KEY:se``)."""
    return "://" in location and "@" in location


def refuse_credentials(location: str) -> None:
    """A :class:`CollectionError` if an image location carries credentials
    (``s3://KEY:SECRET@bucket/prefix``): the location is recorded in the collection, which
    every process reads, and shown in messages; S3 keys come from the environment."""
    if carries_credentials(location):
        raise CollectionError(
            f"The image location '{redact_userinfo(location)}' carries credentials (an '@'): "
            "give them the usual way instead (for S3: AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or ~/.aws); a location is recorded in the collection and "
            "shown in messages."
        )


def open_images(location: str, work_dir: Path, *, timeout: float = 10.0) -> ImageStore:
    """A folder path, or a URL with a scheme fsspec knows (``s3://bucket/prefix``)."""
    refuse_credentials(location)
    if "://" in location and not location.startswith("file://"):
        return FsspecImages(location, work_dir / "image-cache", timeout=timeout)
    return FolderImages(location.removeprefix("file://"))
