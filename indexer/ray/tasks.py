"""Ray actors that write their own vectors, into a collection that takes many writers.

A Milvus collection takes any number of concurrent writers: ids are deterministic and a
page's vector is stored by a row upsert that also sets ``embedded = true`` (see
:mod:`indexer.stores.milvus`), so writing a batch twice (an actor killed after writing,
its batch retried on a fresh actor) stores the same rows again, never a second copy. With
such a collection the embedding actors write each batch's vectors themselves and hand the
driver only the page ids: vectors go from the GPU node straight to Milvus, and the driver
keeps only the cheap decisions (what to embed, content dedupe, pending pages). A local
folder collection has one writer, the driver (:mod:`indexer.ray_job`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from indexer.stores import Store, is_milvus_spec, open_collection


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
