"""Token counts for ``usage`` and the model-length check, run on the batcher's thread."""

from __future__ import annotations

import re

from app.server.batching import WorkItem
from app.server.errors import InputTooLongError
from indexer.model import Embedder, TokenCounter

_WORD = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str | None) -> int:
    """Without a tokenizer: one token per word or punctuation mark."""
    return len(_WORD.findall(text)) if text else 0


def check_item(embedder: Embedder, item: WorkItem) -> int:
    """Token count of an item; InputTooLongError if it exceeds the model's length.

    Runs on the batcher's thread (the only one that touches the tokenizer). Embedders that
    are not a :class:`~indexer.embedder.TokenCounter` get an estimate and no length check.
    """
    if not isinstance(embedder, TokenCounter):
        return estimate_tokens(item.text)
    try:
        n = int(embedder.count_tokens(item.text, item.image, instruction=item.instruction))
    except ValueError as exc:
        raise InputTooLongError(str(exc)) from exc
    max_length = embedder.max_length
    if max_length and n >= max_length:
        # count_tokens reports the length after truncation: count the text separately.
        exact = n
        if item.text:
            frame = int(embedder.count_tokens(None, item.image, instruction=item.instruction))
            exact = frame + embedder.count_text_tokens(item.text)
        if exact > max_length:
            raise InputTooLongError(
                f"This model's maximum context length is {max_length} tokens, however this "
                f"input needs about {exact} tokens (prompt template and image included). "
                "Shorten the text."
            )
    return n
