"""VectorIndex on its own: the FAISS layer under the store (flat and IVF-SQ8)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from indexer.stores.local.vector_index import INDEX_KINDS, VectorIndex


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _exact_top(vecs: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return ids[np.argsort(-(vecs @ q))[:k]].tolist()


def test_flat_is_exact_and_keyed_by_page_ids(tmp_path):
    vecs, ids = _unit(200, 16), np.arange(1000, 1200, dtype=np.int64)
    index = VectorIndex(16)
    index.add(ids, vecs)
    assert len(index) == 200 and sorted(index.ids().tolist()) == ids.tolist()
    scores, found = index.search(vecs[:3], 5)
    assert found[:, 0].tolist() == [1000, 1001, 1002]  # each vector finds itself first
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert found[1].tolist() == _exact_top(vecs, ids, vecs[1], 5)
    np.testing.assert_allclose(index.reconstruct(1007), vecs[7])

    assert index.remove([1000, 1001, 5]) == 2  # unknown ids are ignored
    assert len(index) == 198 and 1000 not in index.search(vecs[:1], 5)[1]

    index.save(tmp_path / "v.faiss")
    again = VectorIndex.load(tmp_path / "v.faiss")
    assert (again.kind, again.dim, len(again)) == ("flat", 16, 198)
    assert np.array_equal(again.search(vecs[5:6], 4)[1], index.search(vecs[5:6], 4)[1])
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left nothing behind


def test_filtered_search_stays_inside_the_allowed_ids():
    vecs, ids = _unit(6000, 8, seed=1), np.arange(6000, dtype=np.int64)
    index = VectorIndex(8)
    index.add(ids, vecs)
    q = vecs[10]
    small = list(range(0, 6000, 3))[:1500]  # scored directly (few thousand)
    large = list(range(1, 6000, 2)) + [10]  # a FAISS selector (more than 4096)
    for allowed in (small, large):
        _, found = index.search(q[None], 7, allowed_ids=allowed)
        assert set(found[0].tolist()) <= set(allowed)
        keep = np.isin(ids, allowed)
        assert found[0].tolist() == _exact_top(vecs[keep], ids[keep], q, 7)
    assert index.search(q[None], 3, allowed_ids=[])[1].shape == (1, 0)


def test_empty_index_and_bad_input():
    index = VectorIndex(4)
    scores, found = index.search(_unit(2, 4), 3)
    assert scores.shape == found.shape == (2, 0)
    with pytest.raises(ValueError, match="differ in length"):
        index.add([1, 2], _unit(3, 4))
    with pytest.raises(ValueError, match="unknown index kind 'hnsw'"):
        VectorIndex(4, kind="hnsw")
    assert INDEX_KINDS == ("flat", "ivf")


def test_ivf_trains_adds_removes_and_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    centres = _unit(20, 16, seed=3)
    vecs = centres[rng.integers(0, 20, 3000)] + 0.05 * rng.standard_normal((3000, 16))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(3000, dtype=np.int64) + 7
    index = VectorIndex(16, kind="ivf", nlist=32, nprobe=8)
    assert not index.is_trained
    with pytest.raises(ValueError, match="at least 32 training vectors"):
        index.train(vecs[:10])
    index.train(vecs)
    index.add(ids, vecs)
    assert index.is_trained and len(index) == 3000
    assert sorted(index.ids().tolist()) == ids.tolist()
    hits = 0
    for row in range(0, 3000, 100):
        found = index.search(vecs[row : row + 1], 10)[1][0].tolist()
        hits += len(set(found) & set(_exact_top(vecs, ids, vecs[row], 10)))
    assert hits / (30 * 10) >= 0.8  # approximate, but close (the store re-ranks exactly)

    assert index.remove(ids[:100].tolist()) == 100
    assert len(index) == 2900 and not set(ids[:100].tolist()) & set(index.ids().tolist())
    index.save(tmp_path / "ivf.faiss")
    again = VectorIndex.load(tmp_path / "ivf.faiss")
    assert (again.kind, len(again)) == ("ivf", 2900)
    np.testing.assert_allclose(again.reconstruct(500), vecs[493], atol=0.02)  # SQ8: close


def test_a_foreign_index_file_is_refused(tmp_path):
    """A FAISS file PageLens did not write (here an HNSW graph) is not taken for one."""
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(8, 16, faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(_unit(5, 8), np.arange(5, dtype=np.int64))
    faiss.write_index(hnsw, str(tmp_path / "x.faiss"))
    with pytest.raises(RuntimeError, match="not a PageLens vector index"):
        VectorIndex.load(tmp_path / "x.faiss")


def test_reserve_makes_room_once_and_changes_nothing_else(tmp_path):
    """Room for the vectors a job will add, taken once: adding up to it never reallocates
    (the buffer FAISS searches stays where it is), and the index holds what it held."""
    vecs = _unit(40, 32, seed=3)
    index = VectorIndex(32)
    index.add(range(100, 105), vecs[:5])
    assert index.room == 0 and index.reserve(40) and index.room == 40
    assert len(index) == 5  # the room is not content
    flat = faiss.downcast_index(index._index.index)
    where = flat.codes.data()
    for start in range(5, 40, 5):
        index.add(range(100 + start, 105 + start), vecs[start : start + 5])
    assert flat.codes.data() == where  # never moved: no second copy while growing
    _, ids = index.search(vecs[:40], 1)
    assert ids[:, 0].tolist() == list(range(100, 140))
    index.save(tmp_path / "v.faiss")
    assert len(VectorIndex.load(tmp_path / "v.faiss")) == 40
    ivf = VectorIndex(32, kind="ivf")
    assert not ivf.reserve(10) and ivf.room > 10**9  # IVF lists grow on their own
