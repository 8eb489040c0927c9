"""Dynamic batching: many concurrent requests, one thread that owns the model.

Requests :meth:`DynamicBatcher.submit` work items (a text, an image, or both, with an
instruction) and get one :class:`concurrent.futures.Future` per item. A single worker thread
waits for the first item, then for up to ``max_wait_ms`` more (or until ``max_batch`` items
are queued), takes up to ``max_batch`` items in arrival order, groups them by kind
(text / image / fused) and instruction, calls the embedder's ``embed_*`` once per group and
resolves the futures with the rows. While the model is busy, new items pile up, so under load
batches fill by themselves; a lone request waits at most ``max_wait_ms`` extra.

The queue is bounded (``max_queue`` items): :meth:`submit` is all-or-nothing and raises
:class:`QueueFullError` when a request does not fit, which the server turns into
``503 Retry-After``. Only the worker calls the model *and its tokenizer* (HF fast tokenizers
are not safe to share between threads), including the optional per-item ``check`` that the
server uses to count tokens and refuse over-length inputs.

:class:`BatchedEmbedder` puts the batcher behind the :class:`~indexer.embedder.Embedder`
interface, so library code (the retriever) shares the worker with the embeddings endpoint.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from indexer.model import Embedder, EmbedderBase, require_pairs

log = logging.getLogger(__name__)

KINDS = ("text", "image", "fused")


class QueueFullError(Exception):
    """The batcher's queue cannot take the request now; try again shortly."""


class BatcherClosedError(Exception):
    """The batcher was closed (the server is shutting down)."""


@dataclass
class Job:
    """The items of one request: if one fails its check, the others are not embedded."""

    failed: BaseException | None = None


@dataclass(eq=False)
class WorkItem:
    kind: str
    text: str | None = None
    image: Image.Image | None = None
    instruction: str | None = None
    job: Job = field(default_factory=Job)
    future: Future = field(default_factory=Future)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown item kind {self.kind!r}")


@dataclass
class BatchResult:
    """What a future resolves to: the unit vector and the item's token count (or None)."""

    vector: np.ndarray
    tokens: int | None = None


#: ``check(embedder, item) -> tokens``: runs on the worker thread before embedding; raise to
#: refuse the item (its request fails with that exception).
CheckFn = Callable[[Any, WorkItem], "int | None"]


class DynamicBatcher:
    def __init__(
        self,
        embedder: Embedder,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 10.0,
        max_queue: int = 1024,
        check: CheckFn | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("need max_batch >= 1, max_queue >= 1 and max_wait_ms >= 0")
        self.embedder = embedder
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.check = check
        self._pending: collections.deque[WorkItem] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        # statistics (read by /health and the tests)
        self.batches = 0
        self.items = 0
        self.model_calls = 0
        self.max_batch_seen = 0
        self.rejected = 0
        self.sizes: collections.Counter[int] = collections.Counter()

    # -- client side -------------------------------------------------------------------
    def submit(self, items: Sequence[WorkItem]) -> list[Future]:
        """Queue all ``items`` (or none: QueueFullError) and return their futures."""
        items = list(items)
        if len(items) > self.max_queue:
            raise QueueFullError(
                f"a request of {len(items)} items can never fit the queue ({self.max_queue})"
            )
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the server is shutting down")
            if len(self._pending) + len(items) > self.max_queue:
                self.rejected += 1
                raise QueueFullError(
                    f"the queue is full ({len(self._pending)} of {self.max_queue} items waiting)"
                )
            self._ensure_worker()
            self._pending.extend(items)
            self._cond.notify_all()
        return [i.future for i in items]

    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "batches": self.batches,
                "items": self.items,
                "model_calls": self.model_calls,
                "max_batch_seen": self.max_batch_seen,
                "mean_batch": round(self.items / self.batches, 3) if self.batches else 0.0,
                "queued": len(self._pending),
                "rejected": self.rejected,
                "max_batch": self.max_batch,
                "max_wait_ms": self.max_wait * 1000.0,
                "max_queue": self.max_queue,
            }

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work, finish what is queued, and stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:  # anything left (worker stuck or never started) fails cleanly
            left = list(self._pending)
            self._pending.clear()
        for item in left:
            _fail(item, BatcherClosedError("the server is shutting down"))

    # -- worker side -------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="pagelens-batcher", daemon=True)
            self._thread.start()

    def _next_batch(self) -> list[WorkItem] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None  # closed and drained
            deadline = time.monotonic() + self.max_wait
            while len(self._pending) < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self.max_batch, len(self._pending))
            return [self._pending.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._process(batch)
            except BaseException as exc:  # never let the worker die with futures unresolved
                log.exception("batch failed")
                for item in batch:
                    _fail(item, exc)

    def _process(self, batch: list[WorkItem]) -> None:
        tokens: dict[int, int | None] = {}
        if self.check is not None:
            for item in batch:
                if item.job.failed is not None:
                    continue
                try:
                    tokens[id(item)] = self.check(self.embedder, item)
                except Exception as exc:
                    with _suppress():
                        exc.work_item = item  # type: ignore[attr-defined]  # names the input
                    item.job.failed = exc
        live = []
        for item in batch:
            if item.job.failed is not None:
                _fail(item, item.job.failed)
            elif item.future.done():  # cancelled by its request
                continue
            else:
                live.append(item)
        groups: dict[tuple[str, str | None], list[WorkItem]] = {}
        for item in live:
            groups.setdefault((item.kind, item.instruction), []).append(item)
        calls = 0
        for (kind, instruction), items in groups.items():
            try:
                vectors = self._embed(kind, instruction, items)
                calls += 1
            except Exception as exc:
                for item in items:
                    _fail(item, exc)
                continue
            for item, row in zip(items, vectors, strict=True):
                _resolve(item, BatchResult(row, tokens.get(id(item))))
        with self._cond:
            self.batches += 1
            self.items += len(batch)
            self.model_calls += calls
            self.max_batch_seen = max(self.max_batch_seen, len(batch))
            self.sizes[len(batch)] += 1

    def _embed(self, kind: str, instruction: str | None, items: list[WorkItem]) -> np.ndarray:
        e = self.embedder
        texts = [i.text for i in items if i.text is not None]
        images = [i.image for i in items if i.image is not None]
        wanted = {"text": (len(items), 0), "image": (0, len(items))}.get(kind)
        if (len(texts), len(images)) != (wanted or (len(items), len(items))):
            raise ValueError(f"{kind} items need exactly the inputs their kind names")
        if kind == "text":
            out = e.embed_texts(texts, instruction=instruction)
        elif kind == "image":
            out = e.embed_images(images, instruction=instruction)
        else:
            out = e.embed_fused(texts, images, instruction=instruction)
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (len(items), e.dim):
            raise RuntimeError(f"embedder returned shape {out.shape} for {len(items)} items")
        return out


def _suppress() -> contextlib.suppress:
    return contextlib.suppress(AttributeError, TypeError)


def _fail(item: WorkItem, exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile by its request
        if not item.future.done():
            item.future.set_exception(exc)


def _resolve(item: WorkItem, result: BatchResult) -> None:
    with contextlib.suppress(InvalidStateError):
        if not item.future.done():
            item.future.set_result(result)


class BatchedEmbedder(EmbedderBase):
    """An :class:`~indexer.embedder.Embedder` whose calls go through a :class:`DynamicBatcher`.

    Blocking: call it from a worker thread (FastAPI runs sync endpoints in a thread pool).
    """

    def __init__(self, batcher: DynamicBatcher, *, timeout: float | None = 300.0) -> None:
        self.batcher = batcher
        inner = batcher.embedder
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.fingerprint = inner.fingerprint
        self.revision = inner.revision
        self.max_image_tokens = inner.max_image_tokens
        self.timeout = timeout

    def _run(self, items: list[WorkItem]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        job = Job()
        for item in items:
            item.job = job
        futures = self.batcher.submit(items)
        return np.stack([f.result(self.timeout).vector for f in futures]).astype(np.float32)

    def embed_texts(self, texts: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        return self._run([WorkItem("text", text=t, instruction=instruction) for t in texts])

    def embed_images(
        self, images: Sequence[Image.Image], *, instruction: str | None = None
    ) -> np.ndarray:
        return self._run([WorkItem("image", image=i, instruction=instruction) for i in images])

    def embed_fused(
        self,
        texts: Sequence[str],
        images: Sequence[Image.Image],
        *,
        instruction: str | None = None,
    ) -> np.ndarray:
        require_pairs(texts, images)
        return self._run(
            [
                WorkItem("fused", text=t, image=i, instruction=instruction)
                for t, i in zip(texts, images, strict=True)
            ]
        )
