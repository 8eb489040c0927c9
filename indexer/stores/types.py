"""The value types every engine reads and returns, shared by all of PageLens.

Documents and pages (what :class:`indexer.stores.base.Store` returns), the collection's
counts, search filters, pages to store (with already encoded PNG images), and what a check
of an engine's own storage found. Plain data: it imports nothing of PageLens (only the
standard library and Pillow), so every layer may import it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from indexer.pages.words import Word

#: How the full-text index splits and stems words (the local catalog's migration 1 created
#: ``pages_fts`` with it). The Milvus engine feeds its BM25 field the words this tokenizer
#: makes, so both engines match the same word forms (``churned`` finds ``churn``).
FTS_TOKENIZE = "porter unicode61 remove_diacritics 2"

#: Document statuses no search returns (``pagelens sync``'s atomic replace): ``staged`` is
#: a file's new version being indexed, ``replaced`` the old one it hid in the same write.
#: Engines exclude their pages inside the search, as a :class:`PageFilter`.
HIDDEN_STATUSES = ("staged", "replaced")


@dataclass(frozen=True)
class Document:
    """A file in a collection. ``status`` is ``indexing`` until every page is stored."""

    id: int
    name: str
    path: str
    sha256: str
    kind: str
    page_count: int
    title: str | None
    bytes: int
    status: str
    added_at: str
    pages_stored: int = 0
    pages_embedded: int = 0

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    @property
    def hidden(self) -> bool:
        """Staged or replaced by ``pagelens sync``: kept out of every search."""
        return self.status in HIDDEN_STATUSES

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "path": self.path,
            "pages": self.page_count,
            "pages_embedded": self.pages_embedded,
            "sha256": self.sha256,
            "kind": self.kind,
            "title": self.title,
            "bytes": self.bytes,
            "status": self.status,
            "added_at": self.added_at,
        }


@dataclass(frozen=True)
class Page:
    """One stored page; ``image`` is a path relative to the collection folder."""

    id: int
    document_id: int
    number: int
    text: str
    image: str
    image_sha256: str
    width: int
    height: int
    embedded: bool


@dataclass(frozen=True)
class CollectionStats:
    documents: int
    pages: int
    embedded: int

    @property
    def pending(self) -> int:
        return self.pages - self.embedded


@dataclass(frozen=True)
class PageFilter:
    """Which pages a search may return: document ids and/or a 1-based inclusive page range.

    Engines translate it into their own filter (SQLite ``WHERE`` over page ids, a Milvus
    boolean expression) and apply it *inside* the search, never to a top-k afterwards.
    """

    documents: tuple[int, ...] | None = None
    first: int | None = None
    last: int | None = None

    @property
    def empty(self) -> bool:
        return self.documents is None and self.first is None and self.last is None


@dataclass(frozen=True)
class EncodedImage:
    """A page image already encoded as PNG (by :func:`encode_png`, e.g. in a Ray render task),
    so that the single writer stores the bytes as they are instead of decoding and re-encoding
    them; the bytes are exactly what :meth:`Store.add_pages` would have written."""

    data: bytes
    width: int
    height: int

    @classmethod
    def of(cls, image: Image.Image) -> EncodedImage:
        return cls(encode_png(image), image.width, image.height)


def encode_png(image: Image.Image) -> bytes:
    """The PNG bytes a collection stores for a page image (lossless, fast compression)."""
    buf = io.BytesIO()
    # convert() copies even an image already in RGB (4 MiB a page at GME's budget).
    (image if image.mode == "RGB" else image.convert("RGB")).save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()


PageInput = (
    tuple[int, str, "Image.Image | EncodedImage"]
    | tuple[int, str, "Image.Image | EncodedImage", "Sequence[Word] | None"]
)
"""A page to store: (1-based number, text layer, image) and optionally its words (boxes on
that image, :mod:`indexer.pages.words`; None or absent: none recorded); an
:class:`EncodedImage` is stored as it is (Ray render tasks and migration hand over PNG
bytes, never re-encoded)."""


def page_input_parts(
    item: PageInput,
) -> tuple[int, str, Image.Image | EncodedImage, Sequence[Word] | None]:
    """(number, text, image, words or None) of a :data:`PageInput` of either length."""
    if len(item) == 4:
        number, text, image, words = item
        return int(number), text, image, words
    number, text, image = item[:3]
    return int(number), text, image, None


@dataclass
class Problem:
    """One kind of problem a check found; ``extra`` holds machine-readable details (counts,
    ids, names). See :mod:`indexer.maintenance.check` for the kinds."""

    kind: str
    detail: str
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "detail": self.detail, **self.extra}


@dataclass
class StorageFindings:
    """What an engine's check of its own storage found (see
    :class:`indexer.stores.base.StorageChecks`), each list in the place the report gives it:
    ``catalog`` first, ``vectors`` (bad stored vectors) before pending vectors, ``cache`` (a
    vector cache out of step) after them. ``missing_images`` and ``orphan_files`` are the
    engine's own image check; ``orphan_names`` names the first few orphans for the report."""

    catalog: list[Problem] = field(default_factory=list)
    vectors: list[Problem] = field(default_factory=list)
    bad_vectors: list[int] = field(default_factory=list)
    cache: list[Problem] = field(default_factory=list)
    missing_images: list[Page] = field(default_factory=list)
    orphan_files: list[Path] = field(default_factory=list)
    orphan_names: list[str] = field(default_factory=list)
