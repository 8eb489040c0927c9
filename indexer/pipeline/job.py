"""The in-process indexing job (:class:`Indexer`): files -> pages -> vectors, into a store.

See :mod:`indexer.pipeline` for the two phases and what a re-run resumes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from indexer.errors import DocumentError, EmbeddingError, PageLensError
from indexer.model import Embedder
from indexer.model.runtime.memory import BatchChoice, release_free_heap
from indexer.pages import (
    PageRenderError,
    RenderSettings,
    inspect_document,
    iter_input_files,
    render_pages,
)
from indexer.pipeline.plan import FilePlan, add_file_document, collection_settings, plan_files
from indexer.pipeline.results import (
    FileResult,
    IndexReport,
    Meter,
    ProgressFn,
    partial_result,
)
from indexer.stores import Store
from indexer.stores.types import EncodedImage, Page

log = logging.getLogger(__name__)


class Indexer:
    """Adds files to a collection with an injected embedder.

    ``embedder`` may be None for a text-only pass (pages and text layer now, vectors later).
    """

    def __init__(
        self,
        store: Store,
        embedder: Embedder | None = None,
        *,
        settings: RenderSettings | None = None,
        batch_size: int | None = None,
        commit_every: int = 16,
    ) -> None:
        self.store = store
        self.embedder = embedder
        #: Pages per model batch; None: the largest that fits free memory, chosen when
        #: embedding starts (:func:`indexer.memory.auto_batch_size`, logged at INFO).
        self.batch_size = None if not batch_size else max(1, int(batch_size))
        # A remote embedder says how many pages per call keep all its requests busy.
        hint = getattr(embedder, "batch_hint", None)
        if isinstance(hint, int) and (self.batch_size is None or hint > self.batch_size):
            self.batch_size = hint
        #: What the automatic choice decided in the last :meth:`embed_pending`, if it ran.
        self.batch_choice: BatchChoice | None = None
        self.commit_every = max(1, int(commit_every))
        self._staged: set[Path] = set()
        self.settings = collection_settings(
            store, settings, embedder.max_image_tokens if embedder is not None else None
        )

    # -- phase 1 -----------------------------------------------------------------------
    def add(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        password: str | None = None,
        passwords: dict[str, str] | None = None,
        names: dict[str, str] | None = None,
        embed: bool = True,
        progress: ProgressFn | None = None,
        on_wait: Callable[[str], None] | None = None,
        on_file: Callable[[FileResult], None] | None = None,
        staged: Iterable[str | os.PathLike[str]] = (),
    ) -> IndexReport:
        """Index files and folders; a refused file never stops the others.

        ``passwords`` maps a file path to its password (``password`` applies to all);
        ``names`` maps a path to the display name (uploads keep their original names).
        ``staged``: files whose new document stays ``staged`` (no search sees it) once
        complete, for the caller to publish with ``Store.replace_document`` (a sync's
        changed files: the old version stays visible until the new one is whole).
        """
        self._staged = {Path(p).resolve() for p in staged}
        started = time.perf_counter()
        report = IndexReport()
        if self.settings.ocr:  # fail before touching the collection if Tesseract is missing
            from indexer.pages import ocr_tessdata

            ocr_tessdata(self.settings.ocr_language)
        with self.store.writing(on_wait=on_wait):
            if self.embedder is not None and (embed or self.store.dim is None):
                # A text-only pass with a model at hand records it too when none is yet: a
                # Milvus collection needs the vector width before its first page row.
                self.store.bind_embedder(self.embedder)
            if self.store.render_settings() is None:
                self.store.set_render_settings(self.settings.as_dict())
            plans: list[FilePlan] = []
            for planned in plan_files(
                self.store,
                iter_input_files(paths),
                lambda path, pw, sha: inspect_document(
                    path, password=pw, settings=self.settings, sha256=sha
                ),
                password=password,
                passwords=passwords,
                names=names,
            ):
                if isinstance(planned, FilePlan):
                    plans.append(planned)
                    continue
                report.files.append(planned)
                if on_file:
                    on_file(planned)
            total = sum(p.todo for p in plans)
            meter = Meter("pages", total, progress)
            meter.report()
            for plan in plans:
                result = self._store_pages(plan, meter, report)
                report.files.append(result)
                if on_file:
                    on_file(result)
            release_free_heap()  # what rendering freed, before the vectors phase
            if embed and self.embedder is not None:
                self.embed_pending(progress=progress, report=report)
            report.pending = self.store.stats().pending
        report.seconds = time.perf_counter() - started
        return report

    def _store_pages(self, plan: FilePlan, meter: Meter, report: IndexReport) -> FileResult:
        skipped = plan.already_stored(embedding=self.embedder is not None)
        if skipped is not None:
            return skipped
        path, info, existing = plan.path, plan.info, plan.existing
        stage = Path(path).resolve() in self._staged
        doc = existing or add_file_document(
            self.store, plan.name, path, info, status="staged" if stage else "indexing"
        )
        wanted = [n for n in range(1, info.page_count + 1) if n not in plan.stored]
        try:
            failed = self._render_into(doc, path, wanted, plan.password, meter, report)
        except DocumentError as exc:
            # The file itself cannot be read (not one page of it): it is absent, not partial.
            self.store.remove_document(doc.id)
            return FileResult(str(path), "refused", reason=exc.reason, message=str(exc))
        except (OSError, sqlite3.OperationalError):
            # The collection's disk refused a write (full, read-only): undo this run's new
            # document so the collection is as it was, then let writing() explain it.
            if existing is None:
                with contextlib.suppress(Exception):
                    self.store.remove_document(doc.id)
            raise
        partial = partial_result(
            self.store, doc.id, str(path), doc.name, info.page_count, failed, ready=not stage
        )
        if partial is not None:
            return partial
        if not stage:
            self.store.mark_ready(doc.id)
        status = "resumed" if existing else "added"
        return FileResult(str(path), status, doc.id, doc.name, info.page_count)

    def _render_into(
        self,
        doc,
        path: Path,
        wanted: list[int],
        password: str | None,
        meter: Meter,
        report: IndexReport,
    ) -> list[tuple[int, str]]:
        """Render and store ``wanted`` pages in batches; a page that fails to render becomes
        a placeholder (reason recorded) and rendering goes on after it. Returns the failures
        as ``(page number, reason)``.

        A DocumentError that is not about one page (the file cannot be opened) propagates.
        """
        failed: list[tuple[int, str]] = []
        todo = list(wanted)
        while todo:
            batch: list = []
            try:
                for page in render_pages(
                    path, settings=self.settings, password=password, pages=todo
                ):
                    # Encoded at once: a commit holds PNG bytes, not decoded pages (16 of
                    # those would be ~64 MiB at GME's budget, RGB being 4 bytes a pixel).
                    batch.append((page.number, page.text, EncodedImage.of(page.image), page.words))
                    del page
                    if len(batch) >= self.commit_every:
                        self._commit(doc, batch, meter, report)
                        batch = []
                todo = []
            except PageRenderError as exc:
                failed.append((exc.page, str(exc)))
                self.store.add_failed_page(doc.id, exc.page, str(exc))
                # Pages are rendered in the order asked: those before it are done.
                todo = [n for n in todo if n > exc.page]
                meter.step(1, file=doc.name, message=f"page {exc.page} failed")
            if batch:
                self._commit(doc, batch, meter, report)
        return failed

    def _commit(self, doc, batch: list, meter: Meter, report: IndexReport) -> None:
        self.store.add_pages(doc.id, batch)
        for item in batch:
            self.store.clear_failed_page(doc.id, item[0])
        report.pages_stored += len(batch)
        meter.step(len(batch), file=doc.name)

    # -- phase 2 -----------------------------------------------------------------------
    def embed_pending(
        self,
        *,
        progress: ProgressFn | None = None,
        report: IndexReport | None = None,
        limit: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Embed pages that have no vector yet; returns how many got one."""
        embedder = self.embedder
        if embedder is None:
            raise PageLensError("No model loaded: cannot compute page vectors.")
        report = report or IndexReport()
        with self.store.writing():
            self.store.bind_embedder(embedder)
            # Ids only: a long PDF's pending rows (text layer included) are read batch by
            # batch, so what this holds grows by 8 bytes a page, not by the text's size.
            pending = self.store.page_ids(embedded=False)
            if limit:
                pending = pending[: int(limit)]
            meter = Meter("vectors", len(pending), progress)
            meter.report()
            size = self._batch_size() if pending else 1
            batches = [pending[i : i + size] for i in range(0, len(pending), size)]
            done = 0
            # Read the next batch (rows and PNG bytes) while the model works on this one;
            # decoding waits for its turn, so one batch of decoded pages is alive at a time.
            # The read starts once this batch is decoded (its PNG bytes freed), so one batch
            # of encoded pages is alive at a time too: started before, the reading thread
            # held two (~1.1 MiB more at 2,000 text-heavy pages, measured).
            with ThreadPoolExecutor(max_workers=1) as pool:
                ahead: list[Future[list[tuple[Page, bytes | None]]]] = []
                for i in range(len(batches)):
                    read = ahead.pop() if ahead else pool.submit(self._read_batch, batches[i])
                    batch = read.result()
                    following = batches[i + 1] if i + 1 < len(batches) else None

                    def read_next(ids: list[int] | None = following) -> None:
                        if ids is not None:
                            ahead.append(pool.submit(self._read_batch, ids))

                    try:
                        done += self._embed_batch(embedder, batch, report, decoded=read_next)
                    except _StopEmbedding as stop:
                        done += stop.stored
                        report.stopped = stop.reason
                        log.warning("embedding stopped: %s", stop.reason)
                        break
                    meter.step(len(batch), file=None)
                    del batch
                    release_free_heap()  # else this batch's leftovers sit beside the next
                    if should_stop and should_stop():
                        break
        return done

    def _batch_size(self) -> int:
        """The fixed batch size, or the largest that fits the memory available now; the
        embedder's own model batch follows it (it splits bigger calls otherwise)."""
        if self.batch_size is not None:
            return self.batch_size
        from indexer.model.runtime.memory import auto_batch_size

        choice = auto_batch_size(self.embedder)
        self.batch_choice = choice
        log.info("indexing with %s", choice.describe())
        if hasattr(self.embedder, "batch_size"):
            setattr(self.embedder, "batch_size", choice.size)  # noqa: B010 - not on the protocol
        return choice.size

    def _embed_images(self, embedder: Embedder, images: list) -> np.ndarray:
        """``embed_documents``, halving the batch on an allocation failure instead of dying."""
        from indexer.model.runtime.memory import is_out_of_memory

        try:
            return embedder.embed_documents(images)
        except Exception as exc:
            if len(images) < 2 or not is_out_of_memory(exc):
                raise
        half = len(images) // 2
        model_batch = getattr(embedder, "batch_size", None)
        if isinstance(model_batch, int) and model_batch > half:
            setattr(embedder, "batch_size", max(1, half))  # noqa: B010 - not on the protocol
        log.warning("out of memory with %d pages in a batch; retrying with %d", len(images), half)
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return np.concatenate(
            [
                self._embed_images(embedder, images[:half]),
                self._embed_images(embedder, images[half:]),
            ]
        )

    def _read_batch(self, page_ids: Sequence[int]) -> list[tuple[Page, bytes | None]]:
        """The rows of a batch of pages and their stored image bytes (still encoded)."""
        by_id = self.store.pages_by_id(page_ids)
        pages = [by_id[i] for i in page_ids if i in by_id]  # a page removed meanwhile: gone
        return [(page, self.store.image_bytes(page)) for page in pages]

    def _embed_batch(
        self,
        embedder: Embedder,
        batch: list[tuple[Page, bytes | None]],
        report: IndexReport,
        *,
        decoded: Callable[[], None] | None = None,
    ) -> int:
        """Embed one batch read by :meth:`_read_batch` and store its vectors; ``decoded`` is
        called once its pages are decoded (their PNG bytes freed), before the model runs."""
        ids: list[int] = []
        vectors: list[np.ndarray] = []
        todo: list[tuple[int, int]] = []
        todo_images: list = []
        seen: dict[str, int] = {}
        pages = [page for page, _data in batch]
        for k, page in enumerate(pages):
            data, batch[k] = batch[k][1], (page, None)  # the PNG bytes go once decoded
            assert data is not None  # read by _read_batch, taken once
            reused = self.store.vector_for_image_sha(page.image_sha256)
            if reused is not None and len(reused) == embedder.dim:
                ids.append(page.id)
                vectors.append(reused)
                report.pages_reused += 1
            elif page.image_sha256 in seen:
                todo.append((page.id, seen[page.image_sha256]))
                report.pages_reused += 1
            else:
                seen[page.image_sha256] = len(todo_images)
                todo.append((page.id, len(todo_images)))
                todo_images.append(_decode(data))  # only the pages the model needs
            data = None
        if decoded is not None:
            decoded()
        stop: _StopEmbedding | None = None
        if todo_images:
            failed: dict[int, str] = {}
            try:
                fresh = self._embed_images(embedder, todo_images)
            except EmbeddingError as exc:
                # Keep what did come back; the failed pages stay pending (never stored
                # without a vector) and are named, so a later run fills them in.
                failed = exc.failed
                fresh = np.asarray(exc.vectors if exc.vectors is not None else np.zeros((0, 0)))
                if exc.retryable:  # the endpoint is gone: stop sending it more work
                    stop = _StopEmbedding(str(exc))
            # The decoded pages go before the vectors are stored: the vector cache may grow
            # (and copy itself) there, and the two together would exceed one batch's worth.
            embedded = len(todo_images)
            todo_images.clear()
            by_id = {p.id: p for p in pages}
            for page_id, row in todo:
                if row in failed:
                    page = by_id[page_id]
                    report.failed.append(
                        {
                            "page_id": page_id,
                            "document": self._document_name(page.document_id),
                            "page": page.number,
                            "reason": failed[row],
                        }
                    )
                    continue
                ids.append(page_id)
                vectors.append(fresh[row])
            report.pages_embedded += embedded - len(failed)
        if ids:
            self.store.set_vectors(ids, np.stack(vectors))
        if stop is not None:
            stop.stored = len(ids)
            raise stop
        return len(ids)

    def _document_name(self, document_id: int) -> str:
        try:
            return self.store.document(document_id).name
        except PageLensError:
            return f"document {document_id}"


def _decode(data: bytes) -> Image.Image:
    """A stored page image, decoded as ``Store.load_image`` decodes it, without the copy
    ``convert("RGB")`` makes of an image that is RGB already (4 MiB a page at GME's budget).

    The buffer is closed once decoded: a PNG image opened from a file object keeps it (for
    APNG frames) after ``load()``, and with it the PNG bytes, so a decoded batch would hold
    its encoded copy too (~0.3 MiB a text page at 1280 tokens, measured with tracemalloc)."""
    with io.BytesIO(data) as buffer:
        image = Image.open(buffer)
        image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


class _StopEmbedding(Exception):
    """The embedder is unreachable: end the vectors phase; what was stored stays."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stored = 0
