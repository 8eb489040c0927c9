"""The code Ray runs on workers: the inspect and render tasks, the embedding actor, and the
vector writer actors use with a collection that takes many writers.

Ray finds these by module path (``indexer.ray.tasks``): workers import this module, so it
imports what a worker needs (the pages, the model loader inside the actor, the stores) and
nothing of the driver.

Pages travel as PNG bytes. For a local folder collection the driver is the single writer
(:mod:`indexer.ray.driver`) and an actor returns vectors. A Milvus collection takes any
number of concurrent writers: ids are deterministic and a page's vector is stored by a row
upsert that also sets ``embedded = true`` (see :mod:`indexer.stores.milvus`), so writing a
batch twice (an actor killed after writing, its batch retried on a fresh actor) stores the
same rows again, never a second copy. With such a collection the embedding actors write
each batch's vectors themselves and hand the driver only the page ids: vectors go from the
GPU node straight to Milvus, and the driver keeps only the cheap decisions (what to embed,
content dedupe, pending pages).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import DocumentError, PageLensError
from indexer.identity import ModelIdentity
from indexer.pages import PageRenderError, RenderSettings, Word, inspect_document, render_pages
from indexer.pipeline.plan import sha256_or_none
from indexer.stores import Store, is_milvus_spec, open_collection
from indexer.stores.types import EncodedImage


def inspect_task(
    path: str, password: str | None, settings: RenderSettings, ready: frozenset[str]
) -> tuple:
    """Ray task: ``("ok", DocumentInfo)``, ``("stored", sha256)`` when the file's bytes are
    one of the ``ready`` documents (hashed first: an office file is not converted again),
    or ``("refused", reason, message)``."""
    try:
        sha256 = sha256_or_none(Path(path))
        if sha256 in ready:
            return ("stored", sha256)
        info = inspect_document(path, password=password, settings=settings, sha256=sha256)
        return ("ok", info)
    except DocumentError as exc:
        return ("refused", exc.reason, str(exc))


def render_task(
    path: str, password: str | None, settings: RenderSettings, numbers: Sequence[int]
) -> tuple:
    """Ray task: ``("ok", [(number, text, EncodedImage, words)], [(number, why)])`` or
    ``("refused", reason, msg)`` when the file itself cannot be read.

    Pages travel as PNG (lossless, the bytes the collection stores), so the writer only
    writes them and the actors decode exactly the pixels an in-process run would. A page
    that fails to render is reported and rendering goes on after it, as in-process.
    """
    out: list[tuple[int, str, EncodedImage, list[Word]]] = []
    failed: list[tuple[int, str]] = []
    todo = list(numbers)
    while todo:
        try:
            for page in render_pages(path, settings=settings, password=password, pages=todo):
                out.append((page.number, page.text, EncodedImage.of(page.image), page.words))
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
        takes many writers, see :class:`VectorWriter`); only the page ids go back."""
        if not hasattr(self, "writer"):
            self.writer = VectorWriter()
        return self.writer.write(spec, self.embed(pngs), page_ids)


def worker_spec(store: Store) -> str | None:
    """The spec actors open to write vectors themselves, or None (the driver writes)."""
    location = str(getattr(store, "location", "") or "")
    return location if is_milvus_spec(location) else None


class VectorWriter:
    """Held by an actor: opens each collection once, on its first batch, and keeps it."""

    def __init__(self) -> None:
        self._stores: dict[str, Store] = {}

    def write(self, spec: str, vectors: np.ndarray, page_ids: Sequence[Sequence[int]]) -> list[int]:
        """Store ``vectors[i]`` for every page of ``page_ids[i]`` (pages whose images are
        identical share one vector); returns the page ids written."""
        ids = [int(pid) for group in page_ids for pid in group]
        if not ids:
            return []
        rows = np.repeat(np.asarray(vectors, np.float32), [len(g) for g in page_ids], axis=0)
        store = self._stores.get(spec)
        if store is None:
            store = self._stores[spec] = open_collection(spec, create=False)
        store.set_vectors(ids, rows)
        return ids
