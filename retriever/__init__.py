"""PageLens retrieval: store -> hits -> prompt.

Holds ``search`` (:class:`Retriever`: visual, text and hybrid search with filters ->
:class:`Hit`), ``export`` (OpenAI messages, Markdown, ZIP), ``llm`` and ``ask`` (answers from
a configured vision LLM, citing pages; nothing is sent without one), ``evaluate`` (recall and
nDCG on labelled queries) and ``escaping`` (text safe for prompts and terminals).

May import :mod:`indexer` (the ``Store`` protocol, the ``Embedder`` interface, errors and
config), never :mod:`app` or :mod:`pagelens`.
"""

from retriever.export import (
    ExportSettings,
    to_markdown,
    to_openai_messages,
    to_zip,
    zip_bytes,
)
from retriever.search import MODES, Hit, PageRange, Retriever, reciprocal_rank_fusion

__all__ = [
    "MODES",
    "ExportSettings",
    "Hit",
    "PageRange",
    "Retriever",
    "reciprocal_rank_fusion",
    "to_markdown",
    "to_openai_messages",
    "to_zip",
    "zip_bytes",
]
