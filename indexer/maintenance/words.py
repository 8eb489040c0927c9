"""Word boxes for pages stored without them (collections made before word boxes), part of
``pagelens check --repair``.

A page's words are read again from its source file when that file is still there with the
same SHA-256, placed on the image the collection's render settings make, and recorded only
if that image has the stored image's size (same settings, so the same pixels): no image is
rendered or stored again and nothing is embedded. Pages whose source is gone or changed are
left without boxes (they simply show none).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.errors import PageLensError
from indexer.stores.base import Store
from indexer.stores.types import Document

if TYPE_CHECKING:
    from indexer.pages import RenderSettings

__all__ = ["repair_words"]

log = logging.getLogger(__name__)


def repair_words(
    store: Store,
    settings: RenderSettings,
    password: str | None,
    note: Callable[..., None],
) -> int:
    """Record the words of every stored page that has none, from its unchanged source file;
    returns how many pages got them (and notes each document so repaired)."""
    total = 0
    for doc in store.documents():
        pages = store.pages(doc.id, with_text=False)
        have = store.page_words_many([p.id for p in pages])
        missing = {p.number: p for p in pages if p.id not in have}
        if not missing or not _source_unchanged(doc):
            continue
        try:
            done = _record(store, doc, missing, settings, password)
        except PageLensError as exc:
            log.warning("%s: word boxes not recorded (%s)", doc.name, exc)
            continue
        if done:
            total += done
            note(
                "word-boxes",
                f"{doc.name}: recorded the word boxes of {done} page(s) from {doc.path}",
                document=doc.name,
                count=done,
            )
    return total


def _record(
    store: Store,
    doc: Document,
    missing: dict,
    settings: RenderSettings,
    password: str | None,
) -> int:
    from indexer.pages import document_words

    done = 0
    for number, words, size in document_words(
        doc.path, pages=sorted(missing), password=password, settings=settings
    ):
        page = missing[number]
        if size != (page.width, page.height):
            log.info("%s p.%d: image size differs from the stored one", doc.name, number)
            continue
        store.set_page_words(page.id, words)
        done += 1
    return done


def _source_unchanged(doc: Document) -> bool:
    from indexer.pages import file_sha256

    path = Path(doc.path)
    try:
        return path.is_file() and file_sha256(path) == doc.sha256
    except OSError:
        return False
