"""What the web app needs beyond the library calls themselves: long-lived objects.

A Streamlit script reruns on every click, but a model, an open collection and a background
embedding job must live for the whole process. This module holds them, with no Streamlit
import, so that they can be tested and reused:

* :class:`AppSettings` reads the environment the ``pagelens app`` command sets.
* :class:`ModelLoader` loads GME in a thread (the app opens at once; text search works
  while the model loads) and reports loading / ready / failed.
* :class:`EmbedJob` runs :meth:`Indexer.embed_pending` in a thread with progress, and can
  be paused so that the app can write (add, remove) without two writers at once.
* :class:`Workspace` is one open collection: its store, its embedding job and the lock
  that serialises the app's writers; ``add_files`` is the two-phase indexing of uploads.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.warmup import prepare_queries
from app.web.uploads import discard_upload
from indexer import config
from indexer.config import COLLECTION_ENV, collection_path
from indexer.errors import CollectionError, PageLensError
from indexer.model import Embedder
from indexer.pipeline import FileResult, Indexer, IndexReport, Progress
from indexer.settings import ModelSettings
from indexer.stores import Store, is_milvus_spec, open_collection
from indexer.stores.types import Document, Page

#: Rough pages/s of GME-2B at 1280 visual tokens per page, used for an estimate before the
#: first batch has been timed (then the measured rate replaces it).
_GUESS_RATE = {"cuda": 2.5, "mps": 0.5, "cpu": 0.08}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class AppSettings:
    """The environment of the app: ``PAGELENS_COLLECTION`` and the model settings
    (:class:`~indexer.settings.ModelSettings`, the same ones as the CLI's global options,
    which ``pagelens app`` passes on as ``PAGELENS_*`` variables)."""

    collection: str | None = None
    model: ModelSettings = field(default_factory=ModelSettings)

    @classmethod
    def from_env(cls) -> AppSettings:
        return cls(
            collection=config.get(COLLECTION_ENV),
            model=ModelSettings.from_env(),
        )

    @property
    def collection_dir(self) -> Path:
        return collection_path(self.collection)

    @property
    def collection_spec(self) -> str:
        """The collection the app opens first: a Milvus address as given, else the folder."""
        if is_milvus_spec(self.collection):
            return str(self.collection)
        return str(self.collection_dir.expanduser().resolve())


def validate_collection_name(name: str) -> str:
    """A new collection's name: a bare word (letters, digits, ``.``, ``_``, ``-``)."""
    name = (name or "").strip()
    if not _NAME.fullmatch(name):
        raise CollectionError(
            "A collection name is one word of letters, digits, '.', '_' or '-' "
            "(at most 64 characters), e.g. 'reports-2024'."
        )
    return name


class ModelLoader:
    """Loads the embedder once, in a background thread; ``wait()`` blocks until it is ready.

    Once loaded (and ``wait()`` released) the same thread decides the text-query weights
    (:mod:`app.warmup`), so the app's first search is on the fast path where there is one.
    """

    def __init__(
        self,
        settings: ModelSettings | str | None = None,
        *,
        loader: Callable[..., Embedder] | None = None,
    ) -> None:
        if not isinstance(settings, ModelSettings):
            settings = ModelSettings(model=settings)
        self.settings = settings
        self.model = settings.display
        self._loader = loader
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.embedder: Embedder | None = None
        self.error: str | None = None
        self.seconds: float | None = None

    @property
    def state(self) -> str:
        """``idle``, ``loading``, ``ready`` or ``failed``."""
        if self.embedder is not None:
            return "ready"
        if self.error is not None:
            return "failed"
        return "loading" if self._thread is not None else "idle"

    def start(self) -> ModelLoader:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._load, name="pagelens-model-loader", daemon=True
                )
                self._thread.start()
        return self

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            loader = self._loader
            if loader is None:
                from indexer import load_embedder

                loader = load_embedder
            self.embedder = loader(self.settings.load_target, **self.settings.load_options())
        except PageLensError as exc:
            self.error = str(exc)
        except Exception as exc:  # a bug or an environment problem: say it, do not crash
            self.error = f"The model '{self.model}' could not be loaded: {exc}"
        finally:
            self.seconds = time.perf_counter() - started
            self._done.set()
        if self.embedder is not None:  # searches may start; their weights are decided now
            prepare_queries(self.embedder)

    @property
    def ready_event(self) -> threading.Event:
        """Set once loading has ended (successfully or not)."""
        return self._done

    def wait(self, timeout: float | None = None) -> Embedder:
        """The loaded embedder; raises :class:`PageLensError` if loading failed or timed out."""
        self.start()
        if not self._done.wait(timeout):
            raise PageLensError(f"The model '{self.model}' is still loading; try again shortly.")
        if self.embedder is None:
            raise PageLensError(self.error or f"The model '{self.model}' could not be loaded.")
        return self.embedder

    def info(self) -> dict:
        """What the sidebar shows: id, device, dtype, dim, visual tokens, state."""
        e = self.embedder
        return {
            "model_id": getattr(e, "model_id", None) or self.model,
            "device": str(getattr(e, "device", None) or self.settings.device or "auto"),
            "dtype": str(getattr(e, "dtype", None) or self.settings.dtype or "auto").replace(
                "torch.", ""
            ),
            "dim": getattr(e, "dim", None),
            "max_image_tokens": getattr(e, "max_image_tokens", None) or self.settings.tokens,
            "state": self.state,
            "error": self.error,
            "seconds": self.seconds,
        }


def describe_embedding_failures(report: IndexReport) -> str:
    """One message naming the pages that got no vector (they stay pending) and why."""
    named = [f"{f['document']} p.{f['page']}" for f in report.failed]
    shown = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
    parts = []
    if named:
        parts.append(
            f"{len(named)} page(s) could not be embedded ({shown}): {report.failed[0]['reason']}"
        )
    if report.stopped:
        parts.append(f"embedding stopped: {report.stopped}")
    return "; ".join(parts) + ". They stay pending; embedding again fills them in."


class EmbedJob:
    """Embeds a collection's pending pages in a background thread.

    ``progress`` is the latest :class:`Progress`, ``error`` the message of a failed run.
    :meth:`paused` stops the job after its current batch, for a writer to go in.
    """

    def __init__(self, store: Store, model: ModelLoader, *, batch_size: int | None = None) -> None:
        self.store = store
        self.model = model
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.progress: Progress | None = None
        self.error: str | None = None
        self.embedded = 0
        self.rate: float | None = None  # pages/s measured by the last run
        self.finished_at: float | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def state(self) -> str:
        """``running``, ``failed``, ``done`` (ran and finished) or ``idle``."""
        if self.running:
            return "running"
        if self.error:
            return "failed"
        return "done" if self.finished_at else "idle"

    def start(self) -> bool:
        """Start embedding if pages are pending and no run is going; True if one started."""
        with self._lock:
            if self.running or self.store.stats().pending == 0:
                return False
            self._stop.clear()
            self.error = None
            self.progress = None
            self._thread = threading.Thread(
                target=self._run,
                name=f"pagelens-embed-{Path(self.store.location).name}",
                daemon=True,
            )
            self._thread.start()
            return True

    def _on_progress(self, p: Progress) -> None:
        self.progress = p
        if p.rate:
            self.rate = p.rate

    def _run(self) -> None:
        try:
            self.model.start()
            while not self.model.ready_event.wait(0.2):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                return
            embedder = self.model.wait()
            indexer = Indexer(self.store, embedder, batch_size=self.batch_size)
            report = IndexReport()
            self.embedded += indexer.embed_pending(
                progress=self._on_progress, should_stop=self._stop.is_set, report=report
            )
            if report.failed or report.stopped:  # e.g. a remote embedder gave up
                self.error = describe_embedding_failures(report)
        except PageLensError as exc:
            self.error = str(exc)
        except Exception as exc:  # keep the app alive; show what happened
            self.error = f"Embedding stopped: {exc}"
        finally:
            self.finished_at = time.time()

    def stop(self, *, timeout: float | None = None) -> bool:
        """Ask the job to stop after its current batch and wait; True if it has stopped."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    @contextlib.contextmanager
    def paused(self, *, timeout: float | None = None) -> Iterator[None]:
        """Hold the job stopped for the duration (the caller writes meanwhile)."""
        was_running = self.running
        if not self.stop(timeout=timeout):
            raise CollectionError(
                "Background embedding did not pause in time; try again in a moment."
            )
        try:
            yield
        finally:
            self._stop.clear()
            if was_running:
                self.start()

    def estimate_seconds(self, pages: int | None = None) -> float | None:
        """Time to embed ``pages`` (default: all pending): measured rate, else a guess."""
        if pages is None:
            pages = self.store.stats().pending
        if pages <= 0:
            return 0.0
        if self.running and self.progress and self.progress.eta_s is not None:
            return self.progress.eta_s
        rate = self.rate or self._guess_rate()
        return pages / rate if rate else None

    def _guess_rate(self) -> float | None:
        info = self.model.info()
        device = str(info["device"]).split(":")[0]
        base = _GUESS_RATE.get(device) or (_GUESS_RATE["cpu"] if device == "auto" else None)
        if base is None:
            return None
        tokens = info.get("max_image_tokens") or 1280
        return base * 1280 / max(int(tokens), 64)


class Workspace:
    """One open collection in the app process: store, embedding job, writer lock."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        model: ModelLoader,
    ) -> None:
        self.store = open_collection(path)
        self.model = model
        self.job = EmbedJob(self.store, model)
        self._write = threading.Lock()

    @property
    def path(self) -> Path:
        # The local folder of the collection (uploads live there; Milvus: a work folder).
        return Path(getattr(self.store, "path", None) or self.store.work_dir)  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def writing(self) -> Iterator[Store]:
        """Exclusive write access for this process (the job paused), then the file lock."""
        with self._write, self.job.paused(timeout=600):
            with self.store.writing() as store:
                yield store

    def indexer(self, embedder: Embedder | None = None) -> Indexer:
        """An indexer that renders pages for the configured visual-token budget."""
        settings = None
        if self.store.render_settings() is None:
            settings = self.model.settings.render_settings()
        return Indexer(self.store, embedder, settings=settings)

    def add_files(
        self,
        paths: list[Path],
        *,
        names: dict[str, str] | None = None,
        passwords: dict[str, str] | None = None,
        progress: Callable[[Progress], None] | None = None,
        on_file: Callable[[FileResult], None] | None = None,
        on_wait: Callable[[str], None] | None = None,
        embed: bool = True,
    ) -> IndexReport:
        """Phase 1 now (pages + text, searchable at once), phase 2 in the background.

        Uploaded copies of refused or duplicate files are deleted again, except files that
        wait for a password (so that a retry can use them).
        """
        with self._write, self.job.paused(timeout=600):
            self._bind_model_if_needed()
            report = self.indexer().add(
                paths,
                names=names,
                passwords=passwords,
                embed=False,
                progress=progress,
                on_file=on_file,
                on_wait=on_wait,
            )
        indexed = {d.path for d in self.store.documents()}
        for result in report.files:
            keep = result.status in ("added", "resumed") or result.reason in (
                "needs-password",
                "wrong-password",
            )
            if not keep and str(Path(result.path).resolve()) not in indexed:
                discard_upload(self.path, result.path)
        if embed:
            self.job.start()
        return report

    def sync_folder(
        self, folder: Path, *, prune: bool, sync: Callable[..., Any] | None = None
    ) -> Any:
        """Bring one watched folder in step (``sync_folders`` of :mod:`indexer.sync`), as an
        upload is: pages and text now, vectors by the background job afterwards."""
        from indexer.sync import sync_folders

        run = sync or sync_folders
        with self._write, self.job.paused(timeout=600):
            self._bind_model_if_needed()
            report = run(
                self.store,
                None,
                [folder],
                prune=prune,
                settings=self.indexer().settings,
            )
        self.job.start()
        return report

    def _bind_model_if_needed(self) -> None:
        """A new Milvus collection learns its model before its first page: its page rows
        carry a vector field of the model's size (a local one stores pages without a model,
        so uploads there never wait for it)."""
        if self.store.dim is not None or not is_milvus_spec(self.store.location):
            return
        embedder = self.model.wait(timeout=1800)  # a failure to load is the upload's message
        with self.store.writing() as store:
            store.bind_embedder(embedder)

    def remove(self, document_id: int) -> Document:
        """Remove a document (pages, vectors, images) and its uploaded copy, if any."""
        with self.writing() as store:
            doc = store.remove_document(document_id)
        if not any(d.path == doc.path for d in self.store.documents()):
            discard_upload(self.path, doc.path)
        return doc

    def model_mismatch(self) -> str | None:
        """Why the loaded model cannot search this collection (the ``model-mismatch``
        problem of ``pagelens check``, same rule: weights fingerprint, else name), or None."""
        from indexer.identity import ModelIdentity
        from indexer.maintenance.check import model_problem

        embedder = self.model.embedder
        if embedder is None:
            return None
        ident = ModelIdentity.of(embedder)
        problem = model_problem(self.store, ident.name, ident.dim, ident.fingerprint)
        return None if problem is None else f"This collection cannot be searched: {problem.detail}."

    def first_page(self, document_id: int) -> Page | None:
        ids = self.store.page_ids(documents=[document_id], first=1, last=1)
        return self.store.page(ids[0]) if ids else None
