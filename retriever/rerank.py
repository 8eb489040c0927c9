"""The second stage: rerank the first stage's top pages with a :class:`Reranker`.

The first stage (one vector per page, or BM25, or both fused) is cheap and finds the right
page somewhere in its top tens; a reranker reads the query and each candidate page together
and is far better at putting it first, at a cost per page. So only the first ``depth`` hits
are reranked, and the best ``k`` of them returned:

* the final order is the rerank score, ties broken by first-stage rank (a stable sort of
  the first-stage order), so equal scores never shuffle what the first stage decided;
* each hit keeps its first-stage scores and gains ``scores["first_stage"]`` (its score
  before) and ``scores["rerank"]``; ``score`` becomes the rerank score;
* filters (documents, page range) hold because they ran inside the first stage;
* pages still waiting for vectors (found by their text layer) are reranked like the others;
* a reranker that fails (a killed server, a missing model, a wrong answer) costs one note
  and the first-stage ranking, never an empty result: reranking is an improvement, so its
  failure must not take search down with it.

Reads pages only through the :class:`~indexer.stores.base.Store` protocol.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from indexer.errors import UsageError
from indexer.model.rerank import Reranker, RerankPage, RerankQuery
from indexer.stores.base import Store

if TYPE_CHECKING:  # retriever.search calls this module: the type only, no import cycle
    from retriever.search import Hit

log = logging.getLogger(__name__)

#: How many first-stage hits a configured reranker reads when no depth is asked for (the
#: issue's default): deep enough to hold the right page for most first stages, shallow
#: enough to stay interactive on a GPU.
DEFAULT_DEPTH = 20

#: Largest depth accepted: a rerank reads every page image it is given.
MAX_DEPTH = 200

#: Seconds per reranked page for an in-process reranker on the CPU, used to warn before a
#: CPU rerank starts. Measured, not guessed: ``pagelens bench --rerank-pages 3`` (phase H),
#: bench/results/xeon-amx-2core-rerank-fp32-run2-2026-12-06.json: the full-size
#: Qwen3-VL-Reranker-2B architecture (random weights) in float32, as PageLens loads it on a
#: CPU, at its default budget, on pages of the test PDF rendered at PageLens's defaults (962
#: visual tokens, ~1.36k tokens a pair with the text layer): 52.5 s/page on a 2-core Intel
#: Xeon VM with AMX, load average 1.4-2.9 (the same run under load 3.2-6.0 from other jobs,
#: bench/results/xeon-amx-2core-rerank-2026-12-06.json, took 112.9). A CPU with more cores
#: should take less (not measured yet); a reranker that knows its rate says so with a
#: ``seconds_per_page`` attribute.
CPU_SECONDS_PER_PAGE = 52.5

#: Pages per ``score`` call when progress is reported (one call otherwise, so a batched
#: model fills its batches).
PROGRESS_CHUNK = 4

Notify = Callable[[str], None]
Progress = Callable[[int, int], None]


def resolve_depth(depth: int | None, k: int, reranker: Reranker | None) -> int:
    """How many first-stage hits to rerank: 0 for none.

    ``None`` means the default: :data:`DEFAULT_DEPTH` (at least ``k``) when a reranker is
    there, else none. An explicit depth below ``k`` is refused (the best ``k`` of fewer
    than ``k`` reranked pages cannot be given), as is a depth with no reranker to run it.
    """
    if depth is None:
        return max(DEFAULT_DEPTH, k) if reranker is not None else 0
    if depth < 0 or depth > MAX_DEPTH:
        raise UsageError(f"rerank must be between 0 (off) and {MAX_DEPTH} pages, not {depth}.")
    if depth == 0:
        return 0
    if reranker is None:
        raise UsageError(
            f"Reranking the top {depth} pages needs a reranker, and none is configured: set "
            "PAGELENS_RERANK_MODEL (a model run here) or PAGELENS_RERANK_URL (a /v1/rerank "
            "endpoint), or search without rerank."
        )
    check_depth(depth, k)
    return depth


def check_depth(depth: int, k: int) -> None:
    """Refuse ``k`` above the rerank depth, with what to do instead."""
    if 0 < depth < k:
        raise UsageError(
            f"Cannot return the best {k} pages of only {depth} reranked: rerank at least "
            f"{k} pages (rerank {k} or more) or ask for at most {depth} (k {depth})."
        )


def estimate_seconds(reranker: Reranker, pages: int) -> float | None:
    """Seconds a rerank of ``pages`` pages should take when it runs on this CPU, else None
    (a GPU or a remote server: fast enough not to warn about).

    The reranker's own ``seconds_per_page`` (a measured rate) wins over
    :data:`CPU_SECONDS_PER_PAGE`; a reranker without a ``device`` (remote) is not local.
    """
    rate = getattr(reranker, "seconds_per_page", None)
    if isinstance(rate, int | float) and rate > 0:
        return float(rate) * pages
    device = getattr(reranker, "device", None)
    if device is None or not str(device).startswith("cpu"):
        return None
    return CPU_SECONDS_PER_PAGE * pages


def describe_seconds(seconds: float) -> str:
    """``about 40 s`` / ``about 3 min``: a rough duration for a person."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {round(seconds / 60)} min"


def rerank_hits(
    hits: Sequence[Hit],
    *,
    query: str | None,
    image: Image.Image | None,
    store: Store,
    reranker: Reranker,
    k: int,
    depth: int,
    notify: Notify | None = None,
    progress: Progress | None = None,
) -> list[Hit]:
    """The best ``k`` of the first ``depth`` first-stage ``hits``, by rerank score.

    On any failure of the reranker, ``notify`` (default: a logged warning) gets one line and
    the first ``k`` first-stage hits come back unchanged. ``progress(done, total)`` is called
    as pages are scored (then the pages go to the reranker a few at a time).
    """
    check_depth(depth, k)
    head = list(hits[:depth])
    if not head:
        return []
    try:
        scores = _score(head, query, image, store, reranker, progress)
    except Exception as exc:  # any failure: say it once, keep the first stage
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        message = (
            f"reranking failed ({reason}); showing the first-stage ranking "
            f"(reranker {reranker.model_id})"
        )
        (notify or log.warning)(message)
        return head[:k]
    order = sorted(range(len(head)), key=lambda i: -scores[i])  # stable: ties keep rank
    return [_reranked(head[i], float(scores[i])) for i in order[:k]]


def _score(
    head: list[Hit],
    query: str | None,
    image: Image.Image | None,
    store: Store,
    reranker: Reranker,
    progress: Progress | None,
) -> np.ndarray:
    """One score in [0, 1] per hit, in order; ValueError for an answer of the wrong shape."""
    wanted = RerankQuery(text=(query or "").strip() or None, image=image)
    pages = _pages(head, store)
    size = PROGRESS_CHUNK if progress is not None else len(pages)
    parts = []
    for start in range(0, len(pages), size):
        if progress is not None:
            progress(start, len(pages))
        chunk = pages[start : start + size]
        got = np.asarray(reranker.score(wanted, chunk), dtype=np.float32).reshape(-1)
        if got.shape[0] != len(chunk):
            raise ValueError(f"the reranker gave {got.shape[0]} scores for {len(chunk)} pages")
        parts.append(got)
    if progress is not None:
        progress(len(pages), len(pages))
    scores = np.concatenate(parts)
    return np.clip(np.nan_to_num(scores, nan=0.0), 0.0, 1.0)


def _pages(head: list[Hit], store: Store) -> list[RerankPage]:
    """Each hit's stored image and text layer. A page whose image cannot be read (still
    being written, or gone from a remote image store) is read by its text alone."""
    rows = store.pages_by_id(h.page_id for h in head)
    out = []
    for hit in head:
        row = rows.get(hit.page_id)
        picture = None
        if row is not None:
            try:
                picture = store.load_image(row)
            except Exception as exc:  # noqa: BLE001 (the text layer still answers)
                log.debug("page %s image unreadable for reranking: %s", hit.page_id, exc)
        text = row.text if row is not None else hit.text
        out.append(RerankPage(image=picture, text=text or ""))
    return out


def _reranked(hit: Hit, score: float) -> Hit:
    """``hit`` with the rerank score as its score, its first-stage score kept beside it."""
    scores = {**hit.scores, "first_stage": float(hit.score), "rerank": score}
    return dataclasses.replace(hit, score=score, scores=scores)


__all__ = [
    "CPU_SECONDS_PER_PAGE",
    "DEFAULT_DEPTH",
    "MAX_DEPTH",
    "check_depth",
    "describe_seconds",
    "estimate_seconds",
    "rerank_hits",
    "resolve_depth",
]
