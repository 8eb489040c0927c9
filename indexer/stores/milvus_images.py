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

import hashlib
import os
import shutil
from pathlib import Path

from indexer.errors import CollectionError
from indexer.stores.base import atomic_write_bytes


class FolderImages:
    """Page images in a folder (a local disk, or an NFS/SMB mount shared by all machines)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.url = str(self.root)

    def put(self, key: str, data: bytes) -> None:
        try:
            atomic_write_bytes(self.root / key, data)
        except OSError as exc:
            raise CollectionError(
                f"Cannot write page image {self.root / key}: {exc.strerror or exc}. Nothing "
                "half-stored is searchable; fix the image folder and run the same command again."
            ) from exc

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def local_path(self, key: str) -> Path:
        return self.root / key

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            (self.root / key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)


class FsspecImages:
    """Page images in an object store through fsspec (``s3://bucket/prefix`` with s3fs).

    Credentials and endpoint come from the usual places of the backend (for S3: the AWS
    environment variables or config files; ``AWS_ENDPOINT_URL`` for MinIO and other
    S3-compatible servers). Images shown or exported are cached under the work folder.
    """

    def __init__(self, url: str, cache: Path) -> None:
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - fsspec ships with the milvus extra
            raise CollectionError(
                "Page images in a bucket need fsspec and s3fs: pip install 'pagelens[milvus]'."
            ) from exc
        self.url = url.rstrip("/")
        protocol = self.url.split("://", 1)[0]
        try:
            self.fs = fsspec.filesystem(protocol)
        except (ImportError, ValueError) as exc:
            raise CollectionError(f"Cannot open the image store {url}: {exc}") from exc
        self.cache = cache

    def _full(self, key: str) -> str:
        return f"{self.url}/{key}"

    def put(self, key: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._full(key), data)
        except OSError as exc:
            raise CollectionError(f"Cannot write page image {self._full(key)}: {exc}") from exc

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self._full(key))

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._full(key)))

    def local_path(self, key: str) -> Path:
        digest = hashlib.sha256(self._full(key).encode()).hexdigest()[:16]
        path = self.cache / digest / Path(key).name
        if not path.is_file():
            atomic_write_bytes(path, self.get(key))
        return path

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            if self.fs.exists(self._full(key)):
                self.fs.rm(self._full(key))

    def delete_prefix(self, prefix: str) -> None:
        if self.fs.exists(self._full(prefix)):
            self.fs.rm(self._full(prefix), recursive=True)


ImageStore = FolderImages | FsspecImages


def open_images(location: str, work_dir: Path) -> ImageStore:
    """A folder path, or a URL with a scheme fsspec knows (``s3://bucket/prefix``)."""
    if "://" in location and not location.startswith("file://"):
        return FsspecImages(location, work_dir / "image-cache")
    return FolderImages(location.removeprefix("file://"))
