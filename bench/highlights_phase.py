"""Bench section ``highlights``: what text evidence costs a search (issue 23).

Every hit of a search carries the boxes of the query's words on its page, read from the
store in one ``page_words_many`` call and matched with text search's stemming
(:func:`retriever.search.with_evidence`). Measured here on a local collection of ``k`` pages
of ``WORDS`` words each (text pages, as a dense document page holds), by the same text
search with ``evidence="none"`` and ``evidence="text"``, ``k`` hits each: the difference is
what the highlights cost per search and per hit (wall time, and this process's CPU time,
which a busy machine does not inflate).
"""

from __future__ import annotations

import hashlib
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

WORDS = 400  # words per page: a dense page of a report or manual
VOCAB = [f"term{i}" for i in range(2000)] + ["churn", "revenue", "pump", "growth"]


def _pages(k: int, seed: int) -> list[tuple[int, str, Image.Image, list[Any]]]:
    from indexer.pages import Word

    rng = random.Random(seed)
    tiny = Image.new("RGB", (8, 8), (255, 255, 255))
    out = []
    for n in range(1, k + 1):
        texts = [rng.choice(VOCAB) for _ in range(WORDS - 2)] + ["churn", "revenue"]
        words = [
            Word(
                t,
                ((i % 10) / 10, (i // 10) / 40, (i % 10 + 0.9) / 10, (i // 10 + 0.9) / 40),
                i // 10,
            )
            for i, t in enumerate(texts)
        ]
        out.append((n, " ".join(texts), tiny, words))
    return out


def run_highlights(k: int = 50, *, reps: int = 20, seed: int = 0) -> dict:
    """The ``highlights`` section of a bench report (see module docs)."""
    from indexer.stores import open_collection
    from retriever.search import Retriever

    with tempfile.TemporaryDirectory() as tmp:
        store = open_collection(str(Path(tmp) / "col"))
        try:
            with store.writing():
                sha = hashlib.sha256(b"bench-highlights").hexdigest()
                doc = store.add_document(
                    name="h.pdf", path="/bench/h.pdf", sha256=sha, kind="pdf", page_count=k
                )
                store.add_pages(doc.id, _pages(k, seed))
                store.mark_ready(doc.id)
            retriever = Retriever(None, store)
            times: dict[str, list[float]] = {"none": [], "text": []}
            cpu: dict[str, list[float]] = {"none": [], "text": []}
            boxes = 0
            for _ in range(reps):
                for evidence in ("none", "text"):
                    started, cpu_started = time.perf_counter(), time.process_time()
                    hits = retriever.search("churn revenue", k, mode="text", evidence=evidence)
                    times[evidence].append(time.perf_counter() - started)
                    cpu[evidence].append(time.process_time() - cpu_started)
                    boxes = max(boxes, sum(len(h.highlights) for h in hits))
        finally:
            store.close()
    plain, text = (statistics.median(times[e]) for e in ("none", "text"))
    cpu_plain, cpu_text = (statistics.median(cpu[e]) for e in ("none", "text"))
    return {
        "k": k,
        "words_per_page": WORDS,
        "method": "local collection, text search for 2 words, k hits; median of "
        f"{reps} runs each with evidence none and text",
        "search_ms_without": round(1000 * plain, 2),
        "search_ms_with": round(1000 * text, 2),
        "highlights_ms_per_search": round(1000 * (text - plain), 2),
        "highlights_ms_per_hit": round(1000 * (text - plain) / k, 3),
        # CPU time of this process: what the work costs on a machine shared with others
        "highlights_cpu_ms_per_search": round(1000 * (cpu_text - cpu_plain), 2),
        "boxes": boxes,
    }
