"""The Milvus engine's word boxes: one small object per page beside its image, in the
same image store (folder or bucket), at ``words/<doc>/<n>.words`` holding
:func:`indexer.pages.words.encode_words`'s bytes.

Why an object and not a field: collections made before word boxes have a fixed schema
(adding a field to a live Milvus collection is not possible on every server this engine
supports), and the words are read only for the few pages a search shows, like images. They
sit under their own prefix, so the image checks (``image_sizes``) never count them as
orphan images; a page without its object has none recorded. Written before the page row
(as images are), deleted with the document. A mixin of
:class:`indexer.stores.milvus.collection.MilvusCollection`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from indexer.errors import DocumentNotFoundError
from indexer.pages.words import Word, decode_words, encode_words

#: Prefix of the word objects in the image store.
WORDS_PREFIX = "words"


def words_key(document_id: int, number: int) -> str:
    return f"{WORDS_PREFIX}/{int(document_id)}/{int(number):05d}.words"


class MilvusWords:
    """Word boxes in the image store; uses the collection's ``images`` and page reads."""

    images: Any

    def pages_by_id(self, page_ids: Iterable[int]) -> dict:
        raise NotImplementedError  # the collection's, earlier in its bases

    def _put_words(self, document_id: int, number: int, words: Sequence[Word] | None) -> None:
        """Store (or, for None, drop: a re-stored page must not keep its old image's boxes)
        one page's words."""
        key = words_key(document_id, number)
        if words is None:
            self.images.delete([key])
        else:
            self.images.put(key, encode_words(words))

    def page_words(self, page_id: int) -> list[Word] | None:
        return self.page_words_many([page_id]).get(int(page_id))

    def page_words_many(self, page_ids: Iterable[int]) -> dict[int, list[Word]]:
        out: dict[int, list[Word]] = {}
        for pid, page in self.pages_by_id(page_ids).items():
            try:
                data = self.images.get(words_key(page.document_id, page.number))
            except FileNotFoundError:  # ImageMissingError: none recorded
                continue
            out[int(pid)] = decode_words(data)
        return out

    def set_page_words(self, page_id: int, words: Sequence[Word]) -> None:
        page = self.pages_by_id([page_id]).get(int(page_id))
        if page is None:
            raise DocumentNotFoundError(f"No page {page_id} to record words of.")
        self._put_words(page.document_id, page.number, list(words))
