"""What only a local collection folder can suffer, checked and repaired by the engine itself.

The local engine's side of :class:`indexer.stores.base.StorageChecks`: SQLite's own integrity
check (``catalog-corrupt``), stored vectors of the wrong width (``vector-bad``), the FAISS
cache out of step with the catalog (``faiss-*``), page image files missing or empty
(``image-missing``) and files no row names (``orphan-files``). :mod:`indexer.maintenance`
calls these through the capability and never names this engine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.stores.local.faiss_cache import VECTORS
from indexer.stores.local.files import PAGES_DIR
from indexer.stores.types import Page, Problem, StorageFindings

log = logging.getLogger(__name__)

#: Problem kinds that a rebuild of the FAISS file fixes.
FAISS_KINDS = frozenset(
    {"faiss-unreadable", "faiss-missing-ids", "faiss-orphan-ids", "faiss-stale-vectors"}
)

_SAMPLE = 10  # how many examples a problem lists


class LocalChecks:
    """Mixin of :class:`~indexer.stores.local.collection.LocalCollection`: the
    :class:`~indexer.stores.base.StorageChecks` capability."""

    path: Path

    if TYPE_CHECKING:  # provided by LocalCollection

        @property
        def dim(self) -> int | None: ...

        def _query(self, sql: str, args: Sequence = ()) -> list[tuple]: ...

        def vectors(self, page_ids: Sequence[int]) -> dict[int, np.ndarray]: ...

        def rebuild_index(self) -> int: ...

    def pages_with_vector_not_of_dim(self, dim: int) -> list[int]:
        """Ids of pages whose stored vector does not have ``dim`` float32 values."""
        return [
            r[0]
            for r in self._query(
                "SELECT id FROM pages WHERE vector IS NOT NULL AND length(vector) != ? ORDER BY id",
                (int(dim) * 4,),
            )
        ]

    def quick_check(self) -> list[str]:
        """SQLite's ``PRAGMA quick_check`` of the catalog: ``["ok"]`` when it is sound."""
        return [str(r[0]) for r in self._query("PRAGMA quick_check")]

    def extra_checks(self, pages: Sequence[Page]) -> StorageFindings:
        """The catalog file, stored vector widths, the FAISS cache and the image files."""
        found = StorageFindings()
        rows = self.quick_check()
        if rows != ["ok"]:
            found.catalog.append(
                Problem(
                    "catalog-corrupt",
                    "SQLite integrity check failed: "
                    + "; ".join(rows[:_SAMPLE])
                    + ". Restore the collection from a backup, or index the files again "
                    "into a new collection.",
                )
            )
        stored_dim = self.dim
        if stored_dim:
            found.bad_vectors = self.pages_with_vector_not_of_dim(stored_dim)
            if found.bad_vectors:
                bad = found.bad_vectors
                found.vectors.append(
                    Problem(
                        "vector-bad",
                        f"{len(bad)} stored vector(s) are not of dim {stored_dim}",
                        {"count": len(bad), "pages": bad[:_SAMPLE]},
                    )
                )
        embedded = np.array(sorted(p.id for p in pages if p.embedded), dtype=np.int64)
        good = np.setdiff1d(embedded, np.array(found.bad_vectors, dtype=np.int64))
        found.cache = self._check_faiss(good, stored_dim)
        found.missing_images = self._missing_images(pages)
        found.orphan_files = self._orphan_files({p.image for p in pages})
        found.orphan_names = [str(f.relative_to(self.path)) for f in found.orphan_files[:_SAMPLE]]
        return found

    def delete_orphan_files(self, files: Sequence[Path]) -> int:
        """Delete files no row names (a file that cannot be deleted is logged and kept),
        then the folders under ``pages/`` left empty."""
        removed = 0
        for path in files:
            try:
                Path(path).unlink()
                removed += 1
            except OSError as exc:
                log.warning("cannot delete %s: %s", path, exc)
        _prune_empty_dirs(self.path / PAGES_DIR)
        return removed

    def extra_repairs(self, findings: StorageFindings) -> list[dict]:
        """Rebuild the FAISS file from the catalog when it was out of step, or when bad
        vectors were cleared."""
        kinds = {p.kind for p in findings.cache}
        if not (kinds & FAISS_KINDS or findings.bad_vectors):
            return []
        size = self.rebuild_index()
        detail = f"rebuilt {VECTORS} from the catalog ({size} vectors)"
        return [{"kind": "faiss", "detail": detail, "count": size}]

    def _missing_images(self, pages: Iterable[Page]) -> list[Page]:
        missing = []
        for page in pages:
            try:
                if (self.path / page.image).stat().st_size == 0:
                    missing.append(page)
            except OSError:
                missing.append(page)
        return missing

    def _check_faiss(self, want: np.ndarray, dim: int | None) -> list[Problem]:
        from indexer.stores.local.vector_index import VectorIndex

        path = self.path / VECTORS
        if not path.exists():
            if not len(want):
                return []
            return [
                Problem(
                    "faiss-missing-ids",
                    f"no {VECTORS} file, but {len(want)} vector(s) in the catalog",
                    {"count": int(len(want))},
                )
            ]
        try:
            index = VectorIndex.load(path)
        except Exception as exc:  # any failure to read the cache means: rebuild it
            return [Problem("faiss-unreadable", f"{VECTORS} cannot be read ({exc})")]
        if dim and index.dim != dim and (len(index) or len(want)):
            detail = f"{VECTORS} has dim {index.dim}, the collection {dim}"
            return [Problem("faiss-unreadable", detail)]
        return self._compare_faiss(index, want)

    def _compare_faiss(self, index, want: np.ndarray) -> list[Problem]:
        """Duplicate, missing, orphan and stale ids of a readable FAISS file."""
        found: list[Problem] = []
        have = index.ids()
        unique = np.unique(have)
        if len(unique) != len(have):
            found.append(
                Problem(
                    "faiss-orphan-ids",
                    f"{len(have) - len(unique)} duplicate id(s) in {VECTORS}",
                    {"count": int(len(have) - len(unique))},
                )
            )
        missing = np.setdiff1d(want, unique)
        orphans = np.setdiff1d(unique, want)
        if len(missing):
            found.append(
                Problem(
                    "faiss-missing-ids",
                    f"{len(missing)} vector(s) of the catalog are not in {VECTORS}",
                    {"count": int(len(missing)), "pages": missing[:_SAMPLE].tolist()},
                )
            )
        if len(orphans):
            found.append(
                Problem(
                    "faiss-orphan-ids",
                    f"{len(orphans)} id(s) in {VECTORS} have no vector in the catalog",
                    {"count": int(len(orphans)), "ids": orphans[:_SAMPLE].tolist()},
                )
            )
        stale = self._stale_ids(index, np.intersect1d(want, unique))
        if stale:
            found.append(
                Problem(
                    "faiss-stale-vectors",
                    f"{len(stale)} vector(s) in {VECTORS} differ from the catalog's",
                    {"count": len(stale), "pages": stale[:_SAMPLE]},
                )
            )
        return found

    def _stale_ids(self, index, both: np.ndarray) -> list[int]:
        stale = []
        for start in range(0, len(both), 1024):
            chunk = [int(i) for i in both[start : start + 1024]]
            for pid, ours in self.vectors(chunk).items():
                if ours.shape != (index.dim,) or not np.allclose(
                    index.reconstruct(int(pid)), ours, atol=1e-5
                ):
                    stale.append(int(pid))
        return stale

    def _orphan_files(self, named: set[str]) -> list[Path]:
        """Files under pages/ that no row names, and temporary files of interrupted writes."""
        out: list[Path] = []
        root = self.path / PAGES_DIR
        if root.is_dir():
            for dirpath, _dirs, files in os.walk(root):
                for name in files:
                    path = Path(dirpath) / name
                    if path.relative_to(self.path).as_posix() not in named:
                        out.append(path)
        for path in self.path.iterdir():
            if (
                path.is_file()
                and path.name.endswith(".tmp")
                and (path.name.startswith(VECTORS + ".") or path.name.startswith("."))
            ):
                out.append(path)
        return sorted(out)


def _prune_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for dirpath, dirs, files in os.walk(root, topdown=False):
        if not dirs and not files and Path(dirpath) != root:
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
