"""Evidence for a hit: where on the page image the match is.

Holds ``highlights`` (:class:`Highlight`, the boxes of a query's words on a page, matched
with text search's own tokenizer and stemming, and the boxes of a quote for answer
citations), ``draw`` (:func:`draw_highlights`: the boxes drawn onto a page image, used by
exports, the MCP server and the app), ``visual`` (a heat map over a page from embedded
overlapping crops, an approximation) and ``cache``
(:class:`~retriever.evidence.cache.EvidenceCache`, so a second request for the same page,
query and model is free). Pure functions over a page's words and image; the store is read
by :mod:`retriever.search`, never here.

May import :mod:`indexer` (the page words, the text-search tokenizer, the ``Embedder``
interface, config, progress), never :mod:`retriever.search` (which imports this),
:mod:`app` or :mod:`pagelens`.
"""

from retriever.evidence.draw import draw_highlights
from retriever.evidence.highlights import (
    EVIDENCE,
    Highlight,
    Stemmer,
    quote_highlights,
    text_highlights,
)

__all__ = [
    "EVIDENCE",
    "Highlight",
    "Stemmer",
    "draw_highlights",
    "quote_highlights",
    "text_highlights",
]
