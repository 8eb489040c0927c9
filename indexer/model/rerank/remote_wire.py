"""What goes over the wire to a ``/v1/rerank`` endpoint, and what comes back.

The shape is the one vLLM, Jina and Cohere share: ``{"model", "query", "documents",
"top_n"}`` in, ``{"results": [{"index", "relevance_score"}, ...]}`` out. A text is a plain
string (what every such server takes); a page or query with an image is vLLM's multimodal
form, ``{"content": [{"type": "image_url", "image_url": {"url": "data:..."}}, {"type":
"text", "text": ...}]}``, the image an exact PNG in a data URL so the server's model sees the
pixels the in-process one would. Imports indexer.errors, the reranker seam and the remote
embedder's PNG encoding only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from indexer.errors import EndpointError
from indexer.model.remote.wire import image_data_url
from indexer.model.rerank.base import RerankPage, RerankQuery


def image_part(url: str) -> dict[str, Any]:
    """One image content part (OpenAI's chat shape, which vLLM's rerank reuses)."""
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def encode_query(query: RerankQuery, *, images: bool, url: str) -> Any:
    """The request's ``query``: a string, or the multimodal form when it has an image.

    With images turned off (a text-only server) an image query cannot be said at all: that
    is an error, not a silent text-only rerank of another question.
    """
    if query.image is None:
        return query.text or ""
    if not images:
        raise EndpointError(
            f"The reranker at {url} takes no images, so a query with an image cannot be "
            "reranked there."
        )
    parts = [image_part(image_data_url(query.image))]
    if query.text and query.text.strip():
        parts.append(text_part(query.text))
    return {"content": parts}


def encode_document(page: RerankPage, *, images: bool) -> Any:
    """One page as a document: its text alone when it has no image (or images are off),
    else its image then its text layer, as one multimodal document."""
    text = page.text or ""
    if page.image is None or not images:
        return text
    parts = [image_part(image_data_url(page.image))]
    if text.strip():
        parts.append(text_part(text))
    return {"content": parts}


def has_image(value: Any) -> bool:
    """Whether an encoded query or document carries an image part."""
    return isinstance(value, dict) and any(
        p.get("type") == "image_url" for p in value.get("content", ())
    )


def decode_results(answer: Any, count: int, *, url: str) -> list[float]:
    """The raw score of each of ``count`` documents, in document order.

    Servers sort ``results`` by score (and may cut them to ``top_n``), so each result is put
    back at its ``index``; a missing, repeated or out-of-range index, or a score that is no
    finite number, is an error rather than a page silently scored 0.
    """
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list):
        raise EndpointError(f"The reranker at {url} answered no 'results' list.")
    scores: list[float | None] = [None] * count
    for entry in results:
        index = entry.get("index") if isinstance(entry, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or scores[index] is not None:
            raise EndpointError(f"The reranker at {url} answered a bad or repeated result index.")
        value = entry.get("relevance_score", entry.get("score"))
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise EndpointError(f"The reranker at {url} answered a score that is not a number.")
        scores[index] = number
    missing = sum(s is None for s in scores)
    if missing:
        raise EndpointError(f"The reranker at {url} scored {count - missing} of {count} documents.")
    return [float(s) for s in scores if s is not None]


def to_unit_scores(raw: list[float]) -> np.ndarray:
    """Scores in [0, 1], as the :class:`~indexer.model.rerank.base.Reranker` seam promises.

    vLLM, Jina and Cohere already answer probabilities, kept as they are; a server that
    answers raw logits (some cross-encoders do) gets the logistic function over all of them
    together, which keeps their order.
    """
    values = np.asarray(raw, dtype=np.float64)
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        values = 1.0 / (1.0 + np.exp(-np.clip(values, -60.0, 60.0)))
    return values.astype(np.float32)
