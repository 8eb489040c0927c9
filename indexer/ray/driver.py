"""The driver of a Ray job: :class:`RayIndexer`, the same job as
:class:`indexer.pipeline.Indexer` spread over a Ray cluster:

* the driver lists the files once and inspects them in parallel CPU tasks (hash, page count,
  refusal reasons), then plans them as the in-process indexer does
  (:func:`indexer.pipeline.plan_files`);
* pages are rendered in parallel CPU tasks, a few pages per task, and come back as PNG bytes;
* a pool of actors (:mod:`indexer.ray.pool`) embeds them, each actor loading GME once (one
  GPU per actor when the cluster has GPUs, a configurable CPU share otherwise);
* the driver stores pages as they arrive and sends pending pages to the actors. For a local
  collection it is the single writer and commits each batch of vectors as it comes back;
  for a Milvus collection (many writers) the actors write their vectors straight to Milvus
  and return only page ids (:class:`indexer.ray.tasks.VectorWriter`).

The guarantees are the in-process ones because the state lives in the collection, not in
Ray: a page is pending until its vector is committed, documents are found by content hash,
and a page whose image bytes already have a vector reuses it. So an actor that dies loses
only the batches it held (they are sent to a fresh actor), a driver that dies leaves a
collection that the same command finishes, and committing a page's vector twice overwrites
it (never a second copy).

Ray Core tasks and actors are used rather than Ray Data: the driver must be the single
writer that decides, page by page, what to embed (content dedupe against the collection,
pages pending from earlier runs), which is a loop over futures, not a dataset
transformation. The loop's state is one :class:`indexer.ray.schedule.Schedule`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import DocumentError, PageLensError
from indexer.pages import DocumentInfo, RenderSettings, inspect_document, iter_input_files
from indexer.pipeline import (
    FilePlan,
    FileResult,
    IndexReport,
    Meter,
    ProgressFn,
    add_file_document,
    collection_settings,
    partial_result,
    plan_files,
)
from indexer.ray.cluster import (
    RayOptions,
    Resources,
    cause_of,
    connect,
    import_ray,
    plan_resources,
)
from indexer.ray.pool import EmbedPool
from indexer.ray.schedule import Doc, Item, Schedule
from indexer.ray.tasks import inspect_task, render_task, worker_spec
from indexer.stores import Store

#: Pending pages left by an earlier run are queued from their rows read this many at a time
#: (ids first): what the queue keeps is an id and an image hash per page, not its text.
_ROWS_AT_ONCE = 500


class RayIndexer:
    """Index files with Ray; the same results as :class:`~indexer.pipeline.Indexer`.

    ``model`` and ``load`` say what the actors load (see :class:`EmbedPool`), or ``pool``
    hands in a started pool to share between collections. The collection's identity check
    uses the model the actors report. Use as a context manager (or call :meth:`close`):
    the actors live across :meth:`add` calls, and a Ray instance this object started is shut
    down at the end.
    """

    def __init__(
        self,
        store: Store,
        *,
        model: str | None = None,
        load: dict[str, Any] | None = None,
        ray_options: RayOptions | None = None,
        pool: EmbedPool | None = None,
        settings: RenderSettings | None = None,
        batch_size: int = 4,
    ) -> None:
        self.store = store
        self.options = ray_options or (pool.options if pool else RayOptions())
        self.pool = pool or EmbedPool(model, load, self.options)
        self._own_pool = pool is None
        self._own_ray = False
        self.batch_size = max(1, int(batch_size))
        self.settings = collection_settings(store, settings, self.pool.load.get("max_image_tokens"))
        self.resources: Resources | None = None
        self.worker_spec = worker_spec(store)  # set: the actors write vectors themselves

    def __enter__(self) -> RayIndexer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the actors this indexer started, and Ray if it started it."""
        if self._own_pool:
            self.pool.close()
        if self._own_ray:
            import_ray().shutdown()
            self._own_ray = False

    # -- public ------------------------------------------------------------------------
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
        on_batch: Callable[[RayIndexer], None] | None = None,
    ) -> IndexReport:
        """Index files and folders on Ray; a refused file never stops the others.

        ``on_batch`` is called after each committed vector batch (tests use it to kill an
        actor mid-job).
        """
        started = time.perf_counter()
        ray = import_ray()
        self._own_ray = connect(self.options.address, options=self.options) or self._own_ray
        if self.settings.ocr:
            from indexer.pages import ocr_tessdata

            ocr_tessdata(self.settings.ocr_language)
        self.resources = plan_resources(ray.cluster_resources(), self.options)
        files = list(iter_input_files(paths))
        ready = ray.put(frozenset(d.sha256 for d in self.store.documents() if d.ready))
        inspections = [
            self._inspect.remote(
                str(p), (passwords or {}).get(str(p), password), self.settings, ready
            )
            for p in files
        ]
        identity = self.pool.start() if embed else None  # overlaps with the inspections
        report = IndexReport()
        with self.store.writing(on_wait=on_wait):
            if identity is not None:
                self.store.bind_model(
                    identity.name,
                    identity.dim,
                    fingerprint=identity.fingerprint,
                    revision=identity.revision,
                )
            if self.store.render_settings() is None:
                self.store.set_render_settings(self.settings.as_dict())
            try:
                inspected = ray.get(inspections)
            except ray.exceptions.RayTaskError as exc:
                raise cause_of(exc) from exc
            self._check_render_room(ray)
            docs = self._plan(files, inspected, passwords, password, names)
            self._run(
                docs, report, embed=embed, progress=progress, on_file=on_file, on_batch=on_batch
            )
            report.pending = self.store.stats().pending
        report.seconds = time.perf_counter() - started
        return report

    def _check_render_room(self, ray: Any, wait_s: float = 15.0) -> None:
        """Refuse to start when no CPU is free for a render task (other jobs or actors hold
        them): the job would otherwise wait for ever. Waits a little first, since CPUs of
        actors just stopped come back asynchronously."""
        need = self.resources.render_cpus if self.resources else 1.0
        deadline = time.monotonic() + wait_s
        while True:
            free = float(ray.available_resources().get("CPU", 0.0))
            if free + 1e-9 >= need or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        if free + 1e-9 < need:
            total = float(ray.cluster_resources().get("CPU", 0.0))
            raise PageLensError(
                f"The Ray cluster has {free:g} of {total:g} CPUs free, and rendering needs "
                f"{need:g} per task: other jobs or actors hold the rest, so this job would "
                "stall. Wait for them, or lower --ray-actors / --ray-actor-cpus."
            )

    @property
    def actors(self) -> list[Any]:
        return self.pool.actors

    # -- set-up ------------------------------------------------------------------------
    @property
    def _inspect(self) -> Any:
        ray = import_ray()
        assert self.resources is not None
        return ray.remote(inspect_task).options(num_cpus=self.resources.render_cpus)

    @property
    def _render(self) -> Any:
        ray = import_ray()
        assert self.resources is not None
        return ray.remote(render_task).options(num_cpus=self.resources.render_cpus)

    def _plan(
        self,
        files: list[Path],
        inspections: list[tuple],
        passwords: dict[str, str] | None,
        password: str | None,
        names: dict[str, str] | None,
    ) -> list[Doc | FileResult]:
        """Per file: a refusal, a skip (already complete) or a document to store pages for."""
        found = dict(zip(files, inspections, strict=True))

        def inspected(path: Path, pw: str | None, sha256: str | None) -> DocumentInfo:
            result = found[path]
            if result[0] == "refused":
                raise DocumentError(path, result[1], result[2])
            if result[0] == "stored":  # no longer ready (removed meanwhile): inspect it here
                return inspect_document(path, password=pw, settings=self.settings, sha256=sha256)
            return result[1]

        def hashed(path: Path) -> str | None:
            result = found[path]
            if result[0] == "ok":
                return result[1].sha256
            return result[1] if result[0] == "stored" else None

        out: list[Doc | FileResult] = []
        for plan in plan_files(
            self.store,
            files,
            inspected,
            password=password,
            passwords=passwords,
            names=names,
            hashes=hashed,
        ):
            if isinstance(plan, FilePlan):
                skipped = plan.already_stored(embedding=False)
                out.append(skipped if skipped is not None else self._new_doc(plan))
            else:
                out.append(plan)
        return out

    def _new_doc(self, plan: FilePlan) -> Doc:
        existing = plan.existing
        doc = existing or add_file_document(self.store, plan.name, plan.path, plan.info)
        return Doc(
            doc.id, doc.name, plan.path, plan.password, plan.info.page_count, existing is not None
        )

    # -- the loop ----------------------------------------------------------------------
    def _run(
        self,
        planned: list[Doc | FileResult],
        report: IndexReport,
        *,
        embed: bool,
        progress: ProgressFn | None,
        on_file: Callable[[FileResult], None] | None,
        on_batch: Callable[[RayIndexer], None] | None,
    ) -> None:
        ray = import_ray()
        s = Schedule(report, embed, on_file)
        self._queue_renders(s, planned)
        render_total = sum(len(n) for _, n in s.renders)
        earlier = self._queue_earlier(s) if embed else 0
        if embed:
            s.meter = Meter("vectors", earlier + render_total, progress, render_total=render_total)
        else:
            s.meter = Meter("pages", render_total, progress)
        s.meter.report()
        s.load = {a: 0 for a in self.actors}
        render_limit = max(2, int(2 * float(ray.cluster_resources().get("CPU", 2))))

        while s.busy():
            while s.renders and len(s.render_jobs) < render_limit:
                doc, numbers = s.renders.popleft()
                if doc.dead:
                    continue
                ref = self._render.remote(str(doc.path), doc.password, self.settings, numbers)
                s.render_jobs[ref] = (doc, numbers)
            if embed:
                self._dispatch(s)
            pending_refs = list(s.render_jobs) + list(s.embed_jobs)
            if not pending_refs:
                continue
            ready, _ = ray.wait(pending_refs, num_returns=1)
            for ref in ready:
                if ref in s.render_jobs:
                    doc, _numbers = s.render_jobs.pop(ref)
                    self._stored(s, ref, doc)
                else:
                    actor, items = s.embed_jobs.pop(ref)
                    s.load[actor] = s.load.get(actor, 0) - 1
                    self._embedded(s, ref, actor, items)
                    if on_batch:
                        on_batch(self)

    def _queue_renders(self, s: Schedule, planned: list[Doc | FileResult]) -> None:
        """Report the files decided already; split the others' missing pages into chunks."""
        for what in planned:
            if isinstance(what, FileResult):
                s.file_done(what)
                continue
            doc = what
            s.docs[doc.id] = doc
            stored = self.store.stored_page_numbers(doc.id)
            wanted = [n for n in range(1, doc.page_count + 1) if n not in stored]
            doc.todo = len(wanted)
            step = max(1, self.options.pages_per_task)
            for i in range(0, len(wanted), step):
                s.renders.append((doc, wanted[i : i + step]))
                doc.chunks_left += 1
            if not wanted:
                self._finish_doc(s, doc)

    def _queue_earlier(self, s: Schedule) -> int:
        """Queue the pages an earlier run left without a vector; returns how many."""
        store = self.store
        earlier = store.page_ids(embedded=False)
        for start in range(0, len(earlier), _ROWS_AT_ONCE):  # their rows a chunk at a time
            chunk = earlier[start : start + _ROWS_AT_ONCE]
            rows = store.pages_by_id(chunk)
            for pid in chunk:
                if pid in rows:
                    s.queue(pid, rows[pid].document_id, rows[pid].image_sha256)
            del rows
        return len(earlier)

    def _stored(self, s: Schedule, ref: Any, doc: Doc) -> None:
        ray = import_ray()
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            raise cause_of(exc) from exc
        if doc.dead:
            return
        if result[0] == "refused":
            # A document is complete or absent: drop what was stored of it, name the file.
            doc.dead = True
            rendered = doc.rendered
            self.store.remove_document(doc.id)
            s.meter.drop(doc.todo, rendered)
            s.file_done(FileResult(str(doc.path), "refused", reason=result[1], message=result[2]))
            return
        pages, failed = result[1], result[2]
        ids = self.store.add_pages(doc.id, pages) if pages else []
        for item in pages:
            self.store.clear_failed_page(doc.id, item[0])
        for number, why in failed:  # a placeholder; 'pagelens check --repair' retries it
            self.store.add_failed_page(doc.id, number, why)
            doc.failed.append((number, why))
        s.report.pages_stored += len(ids)
        doc.rendered += len(ids)
        s.meter.rendered(len(ids), doc.name)
        if s.embed:
            rows = self.store.pages_by_id(ids)
            for pid in ids:
                s.queue(pid, doc.id, rows[pid].image_sha256)
        doc.chunks_left -= 1
        if doc.chunks_left == 0:
            self._finish_doc(s, doc)

    def _finish_doc(self, s: Schedule, doc: Doc) -> None:
        """Mark a document complete and report it, as the in-process pipeline does: added or
        resumed, partial when some pages failed to render, refused when none rendered."""
        path = str(doc.path)
        failed = sorted(doc.failed)
        result = partial_result(self.store, doc.id, path, doc.name, doc.page_count, failed)
        if result is None:
            self.store.mark_ready(doc.id)
            status = "resumed" if doc.resumed else "added"
            result = FileResult(path, status, doc.id, doc.name, doc.page_count)
        elif result.status == "refused":
            doc.dead = True
        s.file_done(result)

    def _dispatch(self, s: Schedule) -> None:
        """Send batches to actors with room; reuse stored vectors of identical images."""
        dim = self.store.dim
        for actor in list(self.actors):
            while s.waiting and s.load.get(actor, 0) < self.options.batches_per_actor:
                batch = self._next_batch(s, dim)
                batch, pngs = _read_images(self.store, batch, s.inflight)
                if not batch:
                    break
                if self.worker_spec:  # the actor writes; it is told which pages get what
                    sent = [[p[0] for p in item.pages] for item in batch]
                    ref = actor.embed_and_store.remote(self.worker_spec, pngs, sent)
                else:
                    ref = actor.embed.remote(pngs)
                s.embed_jobs[ref] = (actor, batch)
                s.load[actor] = s.load.get(actor, 0) + 1

    def _next_batch(self, s: Schedule, dim: int | None) -> list[Item]:
        """Up to a batch of waiting images for the model; an image whose vector is stored
        already (an identical image embedded earlier) is committed for its pages instead."""
        store = self.store
        batch: list[Item] = []
        while s.waiting and len(batch) < self.batch_size:
            sha, item = s.waiting.popitem(last=False)
            item.pages = [p for p in item.pages if not s.dead(p[1])]
            if not item.pages:
                continue
            reused = store.vector_for_image_sha(sha)
            if reused is not None and len(reused) == dim:
                ids = [p[0] for p in item.pages]
                store.set_vectors(ids, np.stack([reused] * len(ids)))
                s.report.pages_reused += len(ids)
                s.meter.step(len(ids))
                continue
            batch.append(item)
            s.inflight[sha] = item
        return batch

    def _embedded(self, s: Schedule, ref: Any, actor: Any, items: list[Item]) -> None:
        ray = import_ray()
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            # The actor died (killed, out of memory, node lost): nothing of this batch was
            # committed, so hand it to a fresh actor. Pages stay pending meanwhile.
            s.load.pop(actor, None)
            fresh = self.pool.replace(actor, exc)
            if fresh is not None:
                s.load[fresh] = 0
            for item in reversed(items):  # first in line again, in their order
                s.inflight.pop(item.sha, None)
                s.waiting[item.sha] = item
                s.waiting.move_to_end(item.sha, last=False)
            return
        except ray.exceptions.RayTaskError as exc:
            raise cause_of(exc) from exc
        if self.worker_spec:
            self._written(s, set(result), items)
            return
        ids, rows = [], []
        for item, vector in zip(items, result, strict=True):
            s.inflight.pop(item.sha, None)
            for page_id, _doc in item.pages:
                ids.append(page_id)
                rows.append(vector)
        if ids:
            self.store.set_vectors(ids, np.stack(rows))
        s.report.pages_embedded += len(items)
        s.report.pages_reused += len(ids) - len(items)
        s.meter.step(len(ids))

    def _written(self, s: Schedule, written: set[int], items: list[Item]) -> None:
        """An actor wrote these pages' vectors itself. Pages of the same image queued after
        the batch left are queued again (they reuse the now stored vector); pages of a
        document refused meanwhile are removed again (the actor's upsert may have raced
        the removal)."""
        stale = []
        for item in items:
            s.inflight.pop(item.sha, None)
            for page_id, doc_id in item.pages:
                if s.dead(doc_id):
                    stale.append(page_id)
                elif page_id not in written:
                    s.queue(page_id, doc_id, item.sha)
        if stale:
            self.store.remove_pages(stale)
        s.report.pages_embedded += len(items)
        s.report.pages_reused += len(written) - len(items)
        s.meter.step(len(written))


def _read_images(
    store: Store, batch: list[Item], inflight: dict[str, Item]
) -> tuple[list[Item], list[bytes]]:
    """The PNG bytes of a batch about to be sent: one image per item, read from the row of
    its first page (rows fetched now, for this batch only). An item none of whose pages is
    stored any more (removed meanwhile) is dropped."""
    rows = store.pages_by_id([pid for item in batch for pid, _doc in item.pages])
    kept: list[Item] = []
    pngs: list[bytes] = []
    for item in batch:
        page = next((rows[pid] for pid, _doc in item.pages if pid in rows), None)
        if page is None:
            inflight.pop(item.sha, None)
            continue
        kept.append(item)
        pngs.append(store.image_bytes(page))
    return kept, pngs
