"""Start-up work of the long-lived processes (``pagelens serve``, ``pagelens mcp``, the app).

Why: on CPUs without native bf16, deciding which decoder weights text queries use (and
building the faster copy) costs seconds to tens of seconds
(:meth:`indexer.gme.GmeEmbedder.prepare_queries`). A one-shot command never pays it; a
server should pay it once, right after loading the model, not on its first user's query.
It runs in a background thread so that start-up is not held up: a query that arrives
meanwhile runs on the exact weights. Embedders without the method (a remote endpoint, the
test fakes) have nothing to prepare.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


def prepare_queries(embedder: Any) -> Any | None:
    """Decide the text-query weights now; the decision, or None (nothing to prepare, or it
    failed: then queries stay exact and the failure is logged, never raised)."""
    prepare = getattr(embedder, "prepare_queries", None)
    if not callable(prepare):
        return None
    try:
        return prepare()
    except Exception:  # a server must come up even if this optimisation cannot
        log.warning("deciding the text-query weights failed; queries stay exact", exc_info=True)
        return None


def prepare_queries_in_background(embedder: Any) -> threading.Thread | None:
    """:func:`prepare_queries` in a daemon thread (returned, for tests to join); None when
    the embedder has nothing to prepare."""
    if not callable(getattr(embedder, "prepare_queries", None)):
        return None
    thread = threading.Thread(
        target=prepare_queries, args=(embedder,), name="pagelens-query-weights", daemon=True
    )
    thread.start()
    return thread


__all__ = ["prepare_queries", "prepare_queries_in_background"]
