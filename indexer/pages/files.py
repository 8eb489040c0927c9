"""Input files: which files a folder holds, their hash, and whether each is a PDF, an image,
an office file (by content, not suffix) or a document read by its suffix (markup, e-books).
Imports pages.types, pages.office and indexer.errors."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from indexer.errors import DocumentError
from indexer.pages.office import OFFICE_SUFFIXES, sniff_office
from indexer.pages.types import RenderSettings

logger = logging.getLogger(__name__)

PDF_SUFFIXES = frozenset({".pdf"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
#: Laid out to pages (pages.markup): the kind each suffix is read as.
MARKUP_KINDS_BY_SUFFIX = {
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
}
#: Opened by MuPDF itself (pages.native).
NATIVE_KINDS_BY_SUFFIX = {
    ".epub": "epub",
    ".xps": "xps",
    ".oxps": "xps",
    ".fb2": "fb2",
    ".mobi": "mobi",
    ".cbz": "cbz",
    ".svg": "svg",
}
MARKUP_KINDS = frozenset(MARKUP_KINDS_BY_SUFFIX.values())
NATIVE_KINDS = frozenset(NATIVE_KINDS_BY_SUFFIX.values())
DOCUMENT_SUFFIXES = frozenset(MARKUP_KINDS_BY_SUFFIX) | frozenset(NATIVE_KINDS_BY_SUFFIX)
#: Suffixes picked up when a folder is scanned (lower case; matching ignores case).
SUPPORTED_SUFFIXES = PDF_SUFFIXES | IMAGE_SUFFIXES | OFFICE_SUFFIXES | DOCUMENT_SUFFIXES

# How many leading bytes we read to recognise a file. The PDF spec allows junk before
# "%PDF-"; Acrobat looks in the first 1024 bytes and so do we.
_SNIFF_BYTES = 1024


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (files can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _is_hidden(name: str) -> bool:
    """Dot files, and the ``~$name.docx`` owner files Office leaves beside an open document."""
    return name.startswith((".", "~$"))


def iter_input_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Expand files and folders into the files to index.

    Folders are walked recursively (symlinked folders are not followed, to avoid loops),
    hidden files and folders are skipped, and only :data:`SUPPORTED_SUFFIXES` are kept,
    sorted by path. A path named explicitly is always yielded, whatever its suffix and even
    if it does not exist, so that it is refused later with a reason instead of silently
    ignored. Each file is yielded once.
    """
    seen: set[Path] = set()

    def fresh(path: Path) -> bool:
        try:
            key = path.resolve()
        except OSError:
            key = path.absolute()
        if key in seen:
            return False
        seen.add(key)
        return True

    for raw in paths:
        root = Path(raw).expanduser()
        if not root.is_dir():
            if fresh(root):
                yield root
            continue
        if _is_collection(root):
            continue
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(
            root, onerror=lambda e: logger.warning("cannot read folder: %s", e)
        ):
            dirnames[:] = sorted(
                d for d in dirnames if not _is_hidden(d) and not _is_collection(Path(dirpath, d))
            )
            for name in filenames:
                if _is_hidden(name) or Path(name).suffix.lower() not in SUPPORTED_SUFFIXES:
                    continue
                candidate = Path(dirpath) / name
                if candidate.is_file():
                    found.append(candidate)
        for path in sorted(found, key=lambda p: p.relative_to(root).parts):
            if fresh(path):
                yield path


def _is_collection(folder: Path) -> bool:
    """A PageLens collection (its page images are not documents to index again)."""
    if (folder / "catalog.sqlite").is_file():
        logger.warning("skipping %s: it is a PageLens collection, not documents", folder)
        return True
    return False


def _sniff(head: bytes) -> str | None:
    """Recognise a file from its first bytes: "pdf", "image" or None."""
    if b"%PDF-" in head[:_SNIFF_BYTES]:
        return "pdf"
    if (
        head.startswith(b"\x89PNG\r\n\x1a\n")
        or head.startswith(b"\xff\xd8\xff")
        or head.startswith((b"GIF87a", b"GIF89a"))
        or head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"))
        or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")
        or head.startswith(b"BM")
    ):
        return "image"
    return None


def classify(path: Path, settings: RenderSettings) -> str:
    """Check that a file exists, is not empty nor too big, and say whether it is a PDF ("pdf"),
    an image ("image"), an office file (its format: "docx", "odt"...) or one of the documents
    read by suffix (``MARKUP_KINDS``, ``NATIVE_KINDS``, whose readers check their content).
    For PDFs, images and office files the content decides, not the suffix: a ``.pdf`` that is
    really an HTML error page (a common failed download) is refused, and a PDF saved without
    a suffix is accepted.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DocumentError(path, "not-found", f"{path}: no such file") from None
    except OSError as exc:
        raise DocumentError(path, "not-found", f"{path}: cannot be read ({exc})") from None
    if not path.is_file():
        raise DocumentError(path, "unsupported", f"{path}: not a regular file")
    if stat.st_size == 0:
        raise DocumentError(path, "empty", f"{path}: the file is empty (0 bytes)")
    if stat.st_size > settings.max_file_bytes:
        raise DocumentError(
            path,
            "too-large",
            f"{path}: {stat.st_size:,} bytes is more than the limit of "
            f"{settings.max_file_bytes:,} bytes",
        )
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise DocumentError(path, "not-found", f"{path}: cannot be read ({exc})") from None
    kind = sniff_office(path, head) or _sniff(head)
    suffix = path.suffix.lower()
    if suffix in DOCUMENT_SUFFIXES and (kind is None or (kind == "pdf" and head[:1] != b"%")):
        # by suffix (text mentioning "%PDF-" stays text); their readers check the content
        return {**MARKUP_KINDS_BY_SUFFIX, **NATIVE_KINDS_BY_SUFFIX}[suffix]
    if kind is not None:
        return kind
    if suffix in PDF_SUFFIXES:
        raise DocumentError(
            path, "not-a-pdf", f"{path}: named .pdf but its content is not a PDF document"
        )
    if suffix in IMAGE_SUFFIXES:
        raise DocumentError(
            path, "bad-image", f"{path}: named {suffix} but its content is not a known image"
        )
    if suffix in OFFICE_SUFFIXES:
        raise DocumentError(
            path, "damaged", f"{path}: named {suffix} but its content is not such a document"
        )
    raise DocumentError(
        path,
        "unsupported",
        f"{path}: not a supported document nor image ({', '.join(sorted(SUPPORTED_SUFFIXES))})",
    )
