"""Compatibility shim: the embedder interface and the fake live in :mod:`indexer.model`."""

from indexer.model import (
    DEFAULT_INSTRUCTION,
    QUERY_INSTRUCTION,
    Embedder,
    EmbedderBase,
    FakeEmbedder,
    TokenCounter,
    require_pairs,
)

__all__ = [
    "DEFAULT_INSTRUCTION",
    "QUERY_INSTRUCTION",
    "Embedder",
    "EmbedderBase",
    "FakeEmbedder",
    "TokenCounter",
    "require_pairs",
]
