"""PageLens retrieval: store -> hits -> prompt."""

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
