"""Bulk indexing on Ray: ``pagelens index --ray ADDRESS PATH...``.

The same job as :class:`indexer.pipeline.Indexer`, spread over a Ray cluster:

* the driver lists the files once and inspects them in parallel CPU tasks (hash, page count,
  refusal reasons);
* pages are rendered in parallel CPU tasks, a few pages per task, and come back as PNG bytes;
* a pool of actors embeds them, each actor loading GME once (one GPU per actor when the
  cluster has GPUs, a configurable CPU share otherwise);
* the driver stores pages as they arrive and sends pending pages to the actors. For a local
  collection it is the single writer and commits each batch of vectors as it comes back;
  for a Milvus collection (many writers) the actors write their vectors straight to Milvus
  and return only page ids (:mod:`indexer.ray_writer`).

The guarantees are the in-process ones because the state lives in the collection, not in
Ray: a page is pending until its vector is committed, documents are found by content hash,
and a page whose image bytes already have a vector reuses it. So an actor that dies loses
only the batches it held (they are sent to a fresh actor), a driver that dies leaves a
collection that the same command finishes, and committing a page's vector twice overwrites
it (never a second copy).

Sizing matters on small machines: render tasks take one CPU each and the actor pool takes
what :func:`plan_resources` leaves, so that neither stage can starve the other (an actor
pool holding every CPU would leave rendering none and the job would stall).

Ray is an optional dependency (``pip install 'pagelens[ray]'``), imported only here and only
when a job runs. Ray Core tasks and actors are used rather than Ray Data: the driver must
be the single writer that decides, page by page, what to embed (content dedupe against the
collection, pages pending from earlier runs), which is a loop over futures, not a dataset
transformation.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import DocumentError, PageLensError
from indexer.identity import ModelIdentity
from indexer.pages import (
    PageRenderError,
    RenderSettings,
    inspect_document,
    iter_input_files,
    render_pages,
)
from indexer.pipeline import (
    FileResult,
    IndexReport,
    Progress,
    ProgressFn,
    add_file_document,
    collection_settings,
)
from indexer.ray_writer import VectorWriter, worker_spec
from indexer.store import EncodedImage
from indexer.stores import Store

log = logging.getLogger(__name__)

#: ``--ray`` spellings besides a cluster address (``host:port`` or ``ray://host:port``).
LOCAL = "local"
#: Starts of a fresh local instance before giving up (see :func:`connect`).
LOCAL_START_TRIES = 3
AUTO = "auto"
#: Pending pages left by an earlier run are queued from their rows read this many at a time
#: (ids first): what the queue keeps is an id and an image hash per page, not its text.
_ROWS_AT_ONCE = 500
_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


@dataclass(frozen=True)
class RayOptions:
    """How a job uses the cluster.

    ``actors``: embedding actors (default: one per GPU, or 1 without GPUs). ``actor_cpus``:
    the CPU share of each actor (default: one with a GPU; without GPUs, what is left after
    keeping a quarter of the CPUs, at least one, for rendering, split between the actors).
    ``render_cpus``: CPUs per render task. ``pages_per_task``: pages rendered per task.
    ``object_store_mb`` and ``num_cpus`` size a ``local`` instance.
    """

    address: str = LOCAL
    actors: int | None = None
    actor_cpus: float | None = None
    actor_gpus: float | None = None
    render_cpus: float = 1.0
    pages_per_task: int = 8
    batches_per_actor: int = 2
    num_cpus: int | None = None
    object_store_mb: int | None = None
    max_actor_failures: int | None = None


@dataclass(frozen=True)
class Resources:
    """What each actor asks of Ray, and how many threads its model may use."""

    actors: int
    actor_cpus: float
    actor_gpus: float
    threads: int
    render_cpus: float


def check_address(address: str) -> str:
    """The ``--ray`` value, or a clear error for anything that is not one of its spellings."""
    text = (address or "").strip()
    if text in (LOCAL, AUTO) or _ADDRESS.match(text):
        return text
    raise PageLensError(
        f"--ray {address!r} is not a Ray address: use 'local' (start Ray on this machine), "
        "'auto' (the cluster this machine belongs to) or HOST:PORT / ray://HOST:PORT."
    )


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise PageLensError(
            "Ray is not installed: pip install 'pagelens[ray]' (or pip install ray)."
        ) from exc
    return ray


def connect(address: str, *, options: RayOptions | None = None) -> bool:
    """Connect to Ray (or start a local instance); True when this call started/joined it.

    A ``local`` instance is small and private: no dashboard, no usage statistics (nothing
    leaves the machine), a bounded object store. If Ray is already initialised in this
    process (tests, notebooks), that instance is used as it is and False is returned.
    """
    address = check_address(address)
    options = options or RayOptions(address=address)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "configure_logging": False,
    }
    if address == LOCAL:
        cpus = options.num_cpus or os.cpu_count() or 1
        store_mb = options.object_store_mb or _default_object_store_mb()
        kwargs.update(num_cpus=cpus, object_store_memory=store_mb * 1024 * 1024)
        target = "local"
    else:
        target = address
        kwargs.pop("include_dashboard")
    tries = LOCAL_START_TRIES if address == LOCAL else 1
    for attempt in range(1, tries + 1):
        try:
            ray.init(address=target, **kwargs)
            break
        except Exception as exc:  # Ray raises a bare Exception when its raylet is late
            if attempt == tries:
                raise PageLensError(f"Cannot connect to Ray at {address!r}: {exc}") from exc
            # Why more tries: a fresh local instance sometimes misses one of its own start-up
            # deadlines on a busy machine (the GCS server's port file; the raylet's
            # registration, which Ray waits for 30 s and then raises a bare Exception),
            # e.g. right after another instance shut down; the half-started processes are
            # stopped first.
            log.warning("starting a local Ray instance failed (%s); trying again", exc)
            ray.shutdown()
            time.sleep(2)
    return True


def _default_object_store_mb() -> int:
    """A tenth of the RAM, between 128 MiB and 2 GiB: pages travel as PNG, a few at a time."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * 1024**3
    return int(min(2048, max(128, ram // 10 // 1024**2)))


def plan_resources(cluster: dict[str, float], options: RayOptions) -> Resources:
    """Size the actor pool for the cluster so that rendering keeps CPUs.

    Raises :class:`PageLensError` when the asked pool cannot fit: more GPU actors than GPUs,
    or actors whose CPU shares leave less than one render task's worth of CPU (the job
    would stall waiting for a CPU that never frees).
    """
    cpus = float(cluster.get("CPU", 0))
    gpus = float(cluster.get("GPU", 0))
    if options.actor_gpus is not None:
        actor_gpus = float(options.actor_gpus)
    else:
        actor_gpus = 1.0 if gpus >= 1 else 0.0
    actors = options.actors or (int(gpus // actor_gpus) if actor_gpus else 1)
    if actors < 1:
        raise PageLensError("--ray-actors must be at least 1.")
    if actor_gpus and actors * actor_gpus > gpus + 1e-9:
        raise PageLensError(
            f"{actors} actor(s) x {actor_gpus:g} GPU need more GPUs than the Ray cluster has "
            f"({gpus:g}); lower --ray-actors."
        )
    if options.actor_cpus is not None:
        actor_cpus = float(options.actor_cpus)
    elif actor_gpus:
        actor_cpus = 1.0
    else:
        keep = max(options.render_cpus, math.floor(cpus / 4))
        actor_cpus = max(0.25, round((cpus - keep) / actors, 2))
    if actor_cpus <= 0:
        raise PageLensError("--ray-actor-cpus must be positive.")
    if actors * actor_cpus > cpus - options.render_cpus + 1e-9:
        raise PageLensError(
            f"{actors} actor(s) x {actor_cpus:g} CPU leave no CPU to render pages on this Ray "
            f"cluster ({cpus:g} CPUs): the job would stall. Lower --ray-actors or "
            "--ray-actor-cpus."
        )
    threads = max(1, int(actor_cpus))
    return Resources(actors, actor_cpus, actor_gpus, threads, options.render_cpus)


# ------------------------------------------------------------------------------ remote code


def _inspect_task(path: str, password: str | None, settings: RenderSettings) -> tuple:
    """Ray task: ``("ok", DocumentInfo)`` or ``("refused", reason, message)``."""
    try:
        return ("ok", inspect_document(path, password=password, settings=settings))
    except DocumentError as exc:
        return ("refused", exc.reason, str(exc))


def _render_task(
    path: str, password: str | None, settings: RenderSettings, numbers: Sequence[int]
) -> tuple:
    """Ray task: ``("ok", [(number, text, EncodedImage)], [(number, why)])`` or
    ``("refused", reason, msg)`` when the file itself cannot be read.

    Pages travel as PNG (lossless, the bytes the collection stores), so the writer only
    writes them and the actors decode exactly the pixels an in-process run would. A page
    that fails to render is reported and rendering goes on after it, as in-process.
    """
    out: list[tuple[int, str, EncodedImage]] = []
    failed: list[tuple[int, str]] = []
    todo = list(numbers)
    while todo:
        try:
            for page in render_pages(path, settings=settings, password=password, pages=todo):
                out.append((page.number, page.text, EncodedImage.of(page.image)))
            todo = []
        except PageRenderError as exc:
            failed.append((exc.page, str(exc)))
            todo = [n for n in todo if n > exc.page]  # pages come in the order asked
        except DocumentError as exc:
            return ("refused", exc.reason, str(exc))
    return ("ok", out, failed)


class EmbedActor:
    """Ray actor: loads GME once, then embeds batches of PNG page images."""

    def __init__(self, model: str | None, load: dict[str, Any], threads: int) -> None:
        import torch

        from indexer import load_embedder

        if load.get("device") in (None, "cpu"):
            torch.set_num_threads(max(1, int(threads)))
            from indexer.model.runtime.cpu_heap import keep_freed_memory

            keep_freed_memory()  # this worker process is ours: see indexer.cpu_heap
        options = {k: v for k, v in load.items() if k not in ("device", "dtype")}
        self.error: PageLensError | None = None
        try:
            self.embedder = load_embedder(
                model, device=load.get("device"), dtype=load.get("dtype"), **options
            )
        except PageLensError as exc:  # the model is missing: say so in one line, not a trace
            self.error = exc

    def identity(self) -> ModelIdentity | PageLensError:
        """What the collection records of this model (name, dim, weights fingerprint), or
        the reason the model could not load."""
        return self.error or ModelIdentity.of(self.embedder)

    def pid(self) -> int:
        return os.getpid()

    def embed(self, pngs: Sequence[bytes]) -> np.ndarray:
        from PIL import Image

        images = []
        for data in pngs:
            with Image.open(io.BytesIO(data)) as im:  # as Collection.load_image decodes
                images.append(im.convert("RGB"))
        return np.asarray(self.embedder.embed_documents(images), dtype=np.float32)

    def embed_and_store(
        self, spec: str, pngs: Sequence[bytes], page_ids: Sequence[Sequence[int]]
    ) -> list[int]:
        """Embed, then write the vectors to the collection ``spec`` here (a collection that
        takes many writers, see :mod:`indexer.ray_writer`); only the page ids go back."""
        if not hasattr(self, "writer"):
            self.writer = VectorWriter()
        return self.writer.write(spec, self.embed(pngs), page_ids)


# ------------------------------------------------------------------------------ the driver


@dataclass
class _Doc:
    """A document being stored: its render chunks still out, and the file's result."""

    id: int
    name: str
    path: Path
    password: str | None
    page_count: int
    resumed: bool
    chunks_left: int = 0
    todo: int = 0  # pages this run renders
    rendered: int = 0
    dead: bool = False
    failed: list[tuple[int, str]] = field(default_factory=list)  # (page, why) not rendered


@dataclass
class _Item:
    """Pages whose image bytes are identical: one model input, one vector for all."""

    sha: str
    #: (page id, document id): rows and image bytes are read when the batch is sent, so a
    #: long queue holds ids and a hash per page, not every row with its text layer.
    pages: list[tuple[int, int]] = field(default_factory=list)


class EmbedPool:
    """The embedding actors, each loading the model once; reusable across jobs.

    ``model`` and ``load`` (``device``, ``dtype`` and :func:`indexer.load_embedder` options)
    say what each actor loads. An actor that dies is replaced by :meth:`replace` (up to
    ``options.max_actor_failures`` times, default three per actor and two more).
    """

    def __init__(
        self,
        model: str | None = None,
        load: dict[str, Any] | None = None,
        options: RayOptions | None = None,
    ) -> None:
        self.model = model
        self.load = dict(load or {})
        self.options = options or RayOptions()
        self.actors: list[Any] = []  # live actor handles (tests kill one)
        self.resources: Resources | None = None
        self.failures = 0
        self._identity: ModelIdentity | None = None

    def start(self) -> ModelIdentity:
        """Start the actors (once) and return the identity of the model they loaded.

        All actors must agree; a model that cannot load surfaces here as its own error.
        """
        ray = import_ray()
        if self.resources is None:
            self.resources = plan_resources(ray.cluster_resources(), self.options)
        if not self.actors:
            self.actors = [self._new_actor() for _ in range(self.resources.actors)]
            self._identity = None
        if self._identity is None:
            try:
                ids = ray.get([a.identity.remote() for a in self.actors])
            except ray.exceptions.RayTaskError as exc:
                self.close()
                raise _cause(exc) from exc
            except ray.exceptions.RayActorError as exc:
                self.close()
                raise PageLensError(f"A Ray embedding actor could not start: {exc}") from exc
            failed = [i for i in ids if isinstance(i, PageLensError)]
            if failed:
                self.close()
                raise failed[0]
            if len({(i.name, i.dim, i.fingerprint) for i in ids}) != 1:
                self.close()
                raise PageLensError(
                    "Ray actors loaded different models (is the model folder the same on "
                    f"every node?): {sorted({i.display for i in ids})}"
                )
            self._identity = ids[0]
        return self._identity

    def _new_actor(self) -> Any:
        ray = import_ray()
        res = self.resources
        assert res is not None
        return (
            ray.remote(EmbedActor)
            .options(num_cpus=res.actor_cpus, num_gpus=res.actor_gpus, max_restarts=0)
            .remote(self.model, self.load, res.threads)
        )

    def replace(self, actor: Any, exc: BaseException) -> Any | None:
        """Swap a dead actor for a fresh one (which loads the model again); None when it was
        already replaced (its other batches fail too)."""
        if actor not in self.actors:
            return None
        self.failures += 1
        limit = self.options.max_actor_failures
        if limit is None:
            limit = 3 * max(1, len(self.actors)) + 2
        if self.failures > limit:
            raise PageLensError(
                f"Ray embedding actors died {self.failures} times; giving up (the last: "
                f"{exc}). What was committed is kept; run the same command to resume."
            )
        log.warning("a Ray embedding actor died (%s); starting a new one", exc)
        self.actors.remove(actor)
        fresh = self._new_actor()
        self.actors.append(fresh)
        return fresh

    def close(self) -> None:
        ray = import_ray()
        for actor in self.actors:
            if ray.is_initialized():
                ray.kill(actor)
        self.actors = []
        self._identity = None


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
        inspections = [
            self._inspect.remote(str(p), (passwords or {}).get(str(p), password), self.settings)
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
                raise _cause(exc) from exc
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
        return ray.remote(_inspect_task).options(num_cpus=self.resources.render_cpus)

    @property
    def _render(self) -> Any:
        ray = import_ray()
        assert self.resources is not None
        return ray.remote(_render_task).options(num_cpus=self.resources.render_cpus)

    def _plan(
        self,
        files: list[Path],
        inspections: list[tuple],
        passwords: dict[str, str] | None,
        password: str | None,
        names: dict[str, str] | None,
    ) -> list[tuple[Path, Any]]:
        """Per file: a refusal, a skip (already complete) or a document to store pages for."""
        out: list[tuple[Path, Any]] = []
        planned: dict[str, Path] = {}
        for path, result in zip(files, inspections, strict=True):
            name = (names or {}).get(str(path)) or path.name
            if result[0] == "refused":
                out.append(
                    (path, FileResult(str(path), "refused", reason=result[1], message=result[2]))
                )
                continue
            info = result[1]
            if info.sha256 in planned:  # the same bytes twice in one batch: store them once
                twin = planned[info.sha256]
                out.append(
                    (
                        path,
                        FileResult(
                            str(path),
                            "skipped",
                            name=name,
                            pages=info.page_count,
                            message=f"{path.name} has the same content as {twin.name} in "
                            "this batch; stored once.",
                        ),
                    )
                )
                continue
            planned[info.sha256] = path
            existing = self.store.find_by_sha256(info.sha256)
            if existing is not None and existing.ready:
                out.append(
                    (
                        path,
                        FileResult(
                            str(path),
                            "skipped",
                            existing.id,
                            existing.name,
                            existing.page_count,
                            message=f"{path.name} is already in the collection (same content as "
                            f"'{existing.name}').",
                        ),
                    )
                )
                continue
            doc = existing or add_file_document(self.store, name, path, info)
            pw = (passwords or {}).get(str(path), password)
            out.append(
                (path, _Doc(doc.id, doc.name, path, pw, info.page_count, existing is not None))
            )
        return out

    # -- the loop ----------------------------------------------------------------------
    def _run(
        self,
        planned: list[tuple[Path, Any]],
        report: IndexReport,
        *,
        embed: bool,
        progress: ProgressFn | None,
        on_file: Callable[[FileResult], None] | None,
        on_batch: Callable[[RayIndexer], None] | None,
    ) -> None:
        ray = import_ray()
        store = self.store
        renders: deque[tuple[_Doc, list[int]]] = deque()
        docs: dict[int, _Doc] = {}
        for _path, what in planned:
            if isinstance(what, FileResult):
                report.files.append(what)
                if on_file:
                    on_file(what)
                continue
            doc = what
            docs[doc.id] = doc
            stored = store.stored_page_numbers(doc.id)
            wanted = [n for n in range(1, doc.page_count + 1) if n not in stored]
            doc.todo = len(wanted)
            step = max(1, self.options.pages_per_task)
            for i in range(0, len(wanted), step):
                renders.append((doc, wanted[i : i + step]))
                doc.chunks_left += 1
            if not wanted:
                self._finish_doc(doc, report, on_file)

        render_total = sum(len(n) for _, n in renders)
        waiting: OrderedDict[str, _Item] = OrderedDict()  # by image sha, in arrival order
        inflight_sha: dict[str, _Item] = {}
        earlier = store.page_ids(embedded=False) if embed else []  # left by an earlier run
        for start in range(0, len(earlier), _ROWS_AT_ONCE):  # their rows a chunk at a time
            chunk = earlier[start : start + _ROWS_AT_ONCE]
            rows = store.pages_by_id(chunk)
            for pid in chunk:
                if pid in rows:
                    self._queue(
                        waiting, inflight_sha, pid, rows[pid].document_id, rows[pid].image_sha256
                    )
            del rows
        meter = _Meter(embed, render_total, len(earlier) + render_total, progress)
        meter.report()

        render_jobs: dict[Any, tuple[_Doc, list[int]]] = {}
        embed_jobs: dict[Any, tuple[Any, list[_Item]]] = {}
        load: dict[Any, int] = {a: 0 for a in self.actors}
        render_limit = max(2, int(2 * float(ray.cluster_resources().get("CPU", 2))))

        while renders or render_jobs or (embed and (waiting or embed_jobs)):
            while renders and len(render_jobs) < render_limit:
                doc, numbers = renders.popleft()
                if doc.dead:
                    continue
                ref = self._render.remote(str(doc.path), doc.password, self.settings, numbers)
                render_jobs[ref] = (doc, numbers)
            if embed:
                self._dispatch(waiting, inflight_sha, docs, embed_jobs, load, report, meter)
            pending_refs = list(render_jobs) + list(embed_jobs)
            if not pending_refs:
                continue
            ready, _ = ray.wait(pending_refs, num_returns=1)
            for ref in ready:
                if ref in render_jobs:
                    doc, numbers = render_jobs.pop(ref)
                    self._stored(
                        ref, doc, numbers, report, meter, waiting, inflight_sha, embed, on_file
                    )
                else:
                    actor, items = embed_jobs.pop(ref)
                    load[actor] = load.get(actor, 0) - 1
                    self._embedded(
                        ref, actor, items, waiting, inflight_sha, load, report, meter, docs
                    )
                    if on_batch:
                        on_batch(self)

    def _stored(self, ref, doc, numbers, report, meter, waiting, inflight_sha, embed, on_file):
        ray = import_ray()
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from exc
        if doc.dead:
            return
        if result[0] == "refused":
            # A document is complete or absent: drop what was stored of it, name the file.
            doc.dead = True
            rendered = doc.rendered
            self.store.remove_document(doc.id)
            meter.drop(doc.todo, rendered)
            file = FileResult(str(doc.path), "refused", reason=result[1], message=result[2])
            report.files.append(file)
            if on_file:
                on_file(file)
            return
        pages, failed = result[1], result[2]
        ids = self.store.add_pages(doc.id, pages) if pages else []
        for number, _text, _image in pages:
            self.store.clear_failed_page(doc.id, number)
        for number, why in failed:  # a placeholder; 'pagelens check --repair' retries it
            self.store.add_failed_page(doc.id, number, why)
            doc.failed.append((number, why))
        report.pages_stored += len(ids)
        doc.rendered += len(ids)
        meter.rendered(len(ids), doc.name)
        if embed:
            rows = self.store.pages_by_id(ids)
            for pid in ids:
                self._queue(waiting, inflight_sha, pid, doc.id, rows[pid].image_sha256)
        doc.chunks_left -= 1
        if doc.chunks_left == 0:
            self._finish_doc(doc, report, on_file)

    def _finish_doc(self, doc: _Doc, report: IndexReport, on_file) -> None:
        """Mark a document complete and report it, as the in-process pipeline does: added or
        resumed, partial when some pages failed to render, refused when none rendered."""
        failed = sorted(doc.failed)
        if failed and not self.store.stored_page_numbers(doc.id):
            doc.dead = True
            self.store.remove_document(doc.id)
            file = FileResult(str(doc.path), "refused", reason="damaged", message=failed[0][1])
        elif failed:
            self.store.mark_ready(doc.id)
            pages = ", ".join(str(n) for n, _ in failed)
            file = FileResult(
                str(doc.path),
                "partial",
                doc.id,
                doc.name,
                doc.page_count,
                reason="damaged",
                message=f"{doc.name}: {len(failed)} of {doc.page_count} page(s) could not be "
                f"rendered (page {pages}: {failed[0][1]}); the other pages are indexed, and "
                "'pagelens check --repair' retries the failed ones.",
                failed_pages=[n for n, _ in failed],
            )
        else:
            self.store.mark_ready(doc.id)
            status = "resumed" if doc.resumed else "added"
            file = FileResult(str(doc.path), status, doc.id, doc.name, doc.page_count)
        report.files.append(file)
        if on_file:
            on_file(file)

    @staticmethod
    def _queue(waiting, inflight_sha, page_id: int, doc_id: int, sha: str) -> None:
        item = inflight_sha.get(sha) or waiting.get(sha)
        if item is None:
            item = waiting[sha] = _Item(sha)
        item.pages.append((page_id, doc_id))

    def _dispatch(self, waiting, inflight_sha, docs, embed_jobs, load, report, meter) -> None:
        """Send batches to actors with room; reuse stored vectors of identical images."""
        store = self.store
        dim = store.dim
        for actor in list(self.actors):
            while waiting and load.get(actor, 0) < self.options.batches_per_actor:
                batch: list[_Item] = []
                while waiting and len(batch) < self.batch_size:
                    sha, item = waiting.popitem(last=False)
                    item.pages = [p for p in item.pages if not _dead(docs, p[1])]
                    if not item.pages:
                        continue
                    reused = store.vector_for_image_sha(sha)
                    if reused is not None and len(reused) == dim:
                        ids = [p[0] for p in item.pages]
                        store.set_vectors(ids, np.stack([reused] * len(ids)))
                        report.pages_reused += len(ids)
                        meter.embedded(len(ids))
                        continue
                    batch.append(item)
                    inflight_sha[sha] = item
                batch, pngs = _read_images(store, batch, inflight_sha)
                if not batch:
                    break
                if self.worker_spec:  # the actor writes; it is told which pages get what
                    sent = [[p[0] for p in item.pages] for item in batch]
                    ref = actor.embed_and_store.remote(self.worker_spec, pngs, sent)
                else:
                    ref = actor.embed.remote(pngs)
                embed_jobs[ref] = (actor, batch)
                load[actor] = load.get(actor, 0) + 1

    def _embedded(self, ref, actor, items, waiting, inflight_sha, load, report, meter, docs):
        ray = import_ray()
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            # The actor died (killed, out of memory, node lost): nothing of this batch was
            # committed, so hand it to a fresh actor. Pages stay pending meanwhile.
            load.pop(actor, None)
            fresh = self.pool.replace(actor, exc)
            if fresh is not None:
                load[fresh] = 0
            for item in reversed(items):  # first in line again, in their order
                inflight_sha.pop(item.sha, None)
                waiting[item.sha] = item
                waiting.move_to_end(item.sha, last=False)
            return
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from exc
        if self.worker_spec:
            self._written(set(result), items, waiting, inflight_sha, report, meter, docs)
            return
        ids, rows = [], []
        for item, vector in zip(items, result, strict=True):
            inflight_sha.pop(item.sha, None)
            for page_id, _doc in item.pages:
                ids.append(page_id)
                rows.append(vector)
        if ids:
            self.store.set_vectors(ids, np.stack(rows))
        report.pages_embedded += len(items)
        report.pages_reused += len(ids) - len(items)
        meter.embedded(len(ids))

    def _written(self, written, items, waiting, inflight_sha, report, meter, docs) -> None:
        """An actor wrote these pages' vectors itself. Pages of the same image queued after
        the batch left are queued again (they reuse the now stored vector); pages of a
        document refused meanwhile are removed again (the actor's upsert may have raced
        the removal)."""
        stale = []
        for item in items:
            inflight_sha.pop(item.sha, None)
            for page_id, doc_id in item.pages:
                if _dead(docs, doc_id):
                    stale.append(page_id)
                elif page_id not in written:
                    self._queue(waiting, inflight_sha, page_id, doc_id, item.sha)
        if stale:
            self.store.remove_pages(stale)
        report.pages_embedded += len(items)
        report.pages_reused += len(written) - len(items)
        meter.embedded(len(written))


def _read_images(
    store: Any, batch: list[_Item], inflight_sha: dict[str, _Item]
) -> tuple[list[_Item], list[bytes]]:
    """The PNG bytes of a batch about to be sent: one image per item, read from the row of
    its first page (rows fetched now, for this batch only). An item none of whose pages is
    stored any more (removed meanwhile) is dropped."""
    rows = store.pages_by_id([pid for item in batch for pid, _doc in item.pages])
    kept: list[_Item] = []
    pngs: list[bytes] = []
    for item in batch:
        page = next((rows[pid] for pid, _doc in item.pages if pid in rows), None)
        if page is None:
            inflight_sha.pop(item.sha, None)
            continue
        kept.append(item)
        pngs.append(_image_bytes(store, page))
    return kept, pngs


def _image_bytes(store: Any, page: Any) -> bytes:
    """The stored PNG of a page: read by the store where it can (an image store that is not
    a local folder), else from its file."""
    read = getattr(store, "image_bytes", None)
    return read(page) if read is not None else Path(store.image_path(page)).read_bytes()


def _dead(docs: dict[int, _Doc], doc_id: int) -> bool:
    doc = docs.get(doc_id)
    return doc is not None and doc.dead


def _cause(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task error (a PageLensError stays one)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, PageLensError):
        return cause
    return PageLensError(f"A Ray task failed: {cause or exc}")


class _Meter:
    """Progress for the overlapped stages: pages/s and ETA of the vectors (the slow stage),
    with the rendering count in the message; rendering alone when there is no model."""

    def __init__(self, embed: bool, render_total: int, total: int, cb: ProgressFn | None):
        self.embed, self.cb = embed, cb
        self.render_total, self.rendered_n = render_total, 0
        self.total = total if embed else render_total
        self.done = 0
        self.start = time.perf_counter()

    def rendered(self, n: int, file: str | None) -> None:
        self.rendered_n += n
        if not self.embed:
            self.done += n
        self.report(file=file)

    def embedded(self, n: int) -> None:
        self.done += n
        self.report()

    def drop(self, pages: int, rendered: int) -> None:
        """A refused document's ``pages`` leave the job (``rendered`` of them were counted)."""
        self.render_total -= pages
        self.rendered_n -= rendered
        self.total -= pages
        if not self.embed:
            self.done -= rendered
        self.done = min(self.done, self.total)
        self.report()

    def report(self, *, file: str | None = None) -> None:
        if self.cb is None:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed if self.done else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        message = f"rendered {self.rendered_n}/{self.render_total}" if self.embed else None
        phase = "vectors" if self.embed else "pages"
        self.cb(Progress(phase, self.done, self.total, rate, eta, file=file, message=message))
