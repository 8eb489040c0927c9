"""The collection store: catalog + FAISS kept consistent, identity, dedupe, delete, reopen."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from PIL import Image

from indexer.errors import (
    CollectionError,
    CollectionLockedError,
    DocumentNotFoundError,
    ModelMismatchError,
)
from indexer.store import CATALOG, VECTORS, Collection, PageFilter, fts_query


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _add_doc(store: Collection, name: str, n: int, sha: str | None = None) -> list[int]:
    doc = store.add_document(
        name=name, path=f"/x/{name}", sha256=sha or name, kind="pdf", page_count=n
    )
    pages = [
        (i, f"{name} page {i} text", Image.new("RGB", (20, 30), (i * 10 % 255, 0, 0)))
        for i in range(1, n + 1)
    ]
    ids = store.add_pages(doc.id, pages)
    store.mark_ready(doc.id)
    return ids


def test_round_trip_and_reopen_identical(open_store):
    store = open_store(model_id="m", dim=8)
    vecs = _unit(5, 8)
    with store.writing():
        ids = _add_doc(store, "a.pdf", 5)
        store.set_vectors(ids, vecs)
    before = store.search(vecs[2], 3)
    store.close()
    again = open_store(model_id="m", dim=8)
    after = again.search(vecs[2], 3)
    assert before == after
    assert after[0][0] == ids[2] and after[0][1] == pytest.approx(1.0, abs=1e-5)
    assert again.stats().embedded == 5 and again.stats().pending == 0
    doc = again.documents()[0]
    assert (doc.name, doc.page_count, doc.pages_embedded, doc.status) == ("a.pdf", 5, 5, "ready")
    page = again.page(ids[0])
    assert again.image_path(page).is_file() and page.number == 1


def test_model_mismatch_is_a_clear_error(open_store):
    open_store(model_id="org/model-a", dim=8).close()
    with pytest.raises(ModelMismatchError, match="model-a"):
        open_store(model_id="org/model-b", dim=8)
    with pytest.raises(ModelMismatchError):
        open_store(model_id="org/model-a", dim=16)
    # a local folder with the model's name is the same model
    open_store(model_id="/models/model-a", dim=8).close()


def test_remove_document_removes_rows_vectors_images(open_store):
    store = open_store(model_id="m", dim=8)
    with store.writing():
        a = _add_doc(store, "a.pdf", 3)
        b = _add_doc(store, "b.pdf", 2)
        store.set_vectors(a + b, _unit(5, 8))
        images = [store.image_path(store.page(i)) for i in a]
        removed = store.remove_document("a.pdf")
    assert removed.name == "a.pdf"
    assert [d.name for d in store.documents()] == ["b.pdf"]
    assert not any(p.exists() for p in images)
    hits = store.search(_unit(1, 8, seed=5)[0], 10)
    assert {pid for pid, _ in hits} == set(b)
    with pytest.raises(DocumentNotFoundError):
        store.document("a.pdf")
    # reopening agrees with the in-memory state
    store.close()
    assert {pid for pid, _ in open_store().search(_unit(1, 8)[0], 10)} == set(b)


def test_faiss_file_lost_or_stale_is_rebuilt_from_catalog(tmp_path):
    store = Collection(tmp_path / "c", model_id="m", dim=8)
    vecs = _unit(4, 8)
    with store.writing():
        ids = _add_doc(store, "a.pdf", 4)
        store.set_vectors(ids, vecs)
    store.close()
    (tmp_path / "c" / VECTORS).write_bytes(b"garbage")
    again = Collection(tmp_path / "c")
    assert again.search(vecs[1], 1)[0][0] == ids[1]
    assert len(again.index()) == 4


def test_reader_sees_vectors_committed_by_a_writer(open_store):
    writer = open_store(model_id="m", dim=8)
    reader = open_store()
    vecs = _unit(3, 8)
    assert reader.search(vecs[0], 1) == []
    with writer.writing():
        ids = _add_doc(writer, "a.pdf", 3)
        writer.set_vectors(ids, vecs)
    assert reader.search(vecs[0], 1)[0][0] == ids[0]


def test_filtered_search_and_text_search(open_store):
    store = open_store(model_id="m", dim=8)
    with store.writing():
        a = _add_doc(store, "a.pdf", 3)
        b = _add_doc(store, "b.pdf", 3)
        store.set_vectors(a + b, _unit(6, 8))
    only_b = store.page_ids(documents=[store.document("b.pdf").id])
    assert set(only_b) == set(b)
    hits = store.search(_unit(1, 8, 9)[0], 10, page_ids=only_b)
    assert {pid for pid, _ in hits} == set(b)
    where = PageFilter(documents=(store.document("b.pdf").id,), first=2)
    assert {pid for pid, _ in store.search(_unit(1, 8, 9)[0], 10, where=where)} == set(b[1:])
    assert {pid for pid, _ in store.search_text("page", 10, where=where)} == set(b[1:])
    assert sorted(store.page_ids(first=2, last=2)) == sorted([a[1], b[1]])
    text_hits = store.search_text('b.pdf "page" 3', 2)
    assert text_hits[0][0] == b[2]
    assert store.search_text("zzzz-nothing", 5) == []
    assert fts_query('he said "x" AND: -y') == '"he" OR "said" OR "x" OR "and" OR "y"'


def test_writes_need_the_lock_and_the_lock_serialises(tmp_path):
    store = Collection(tmp_path / "c")
    with pytest.raises(RuntimeError):
        store.add_document(name="a", path="a", sha256="a", kind="pdf", page_count=1)
    other = Collection(tmp_path / "c")
    messages = []
    with store.writing():
        from indexer.errors import CollectionLockedError

        with pytest.raises(CollectionLockedError):
            with other.writing(timeout=0.2, on_wait=messages.append):
                pass
    assert messages and "waiting for another process" in messages[0]
    with other.writing(timeout=1):
        pass


def test_not_a_folder_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CollectionError, match="not a folder"):
        Collection(f)
    with pytest.raises(CollectionError, match="No collection"):
        Collection(tmp_path / "missing", create=False)


def test_set_vectors_twice_replaces(open_store):
    store = open_store(model_id="m", dim=8)
    v = _unit(2, 8)
    with store.writing():
        ids = _add_doc(store, "a.pdf", 1)
        store.set_vectors(ids, v[:1])
        store.set_vectors(ids, v[1:])
    assert store.stats().embedded == 1 and len(store.search(v[1], 5)) == 1
    assert store.search(v[1], 1)[0][1] == pytest.approx(1.0, abs=1e-5)


def test_index_built_before_model_bound_is_rebuilt(tmp_path):
    store = Collection(tmp_path / "c")
    with store.writing():
        ids = _add_doc(store, "a.pdf", 2)
    assert store.search(np.ones(8, np.float32) / np.sqrt(8), 3) == []  # no model yet: dim 1
    store.bind_model("m", 8)
    vecs = _unit(2, 8)
    with store.writing():
        store.set_vectors(ids, vecs)
    assert store.search(vecs[1], 1)[0][0] == ids[1]


def test_large_collection_switches_to_ivf_and_stays_exact_enough(tmp_path, monkeypatch):
    import indexer.stores.local.faiss_cache as store_mod
    from indexer.stores.local.vector_index import VectorIndex

    monkeypatch.setattr(store_mod, "APPROX_THRESHOLD", 2000)
    rng = np.random.default_rng(3)
    centres = _unit(40, 16, seed=4)
    labels = rng.integers(0, 40, 3000)
    vecs = centres[labels] + 0.05 * rng.standard_normal((3000, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = Collection(tmp_path / "c", model_id="m", dim=16)
    with store.writing():
        doc = store.add_document(name="big", path="/x", sha256="s", kind="pdf", page_count=3000)
        # rows without images are enough for the vector side
        with sqlite3.connect(tmp_path / "c" / CATALOG) as db:  # as another writer would
            db.executemany(
                "INSERT INTO pages(document_id, number, image, image_sha256, width, height) "
                "VALUES(?,?,?,?,1,1)",
                [(doc.id, n, f"p{n}", f"h{n}") for n in range(1, 3001)],
            )
        ids = store.page_ids()
        store.set_vectors(ids, vecs)
    index = store.index()
    assert index.kind == "ivf" and len(index) == 3000
    # reopening reads the IVF file back, and search agrees with exact search
    store.close()
    again = Collection(tmp_path / "c")
    assert VectorIndex.load(tmp_path / "c" / "vectors.faiss").kind == "ivf"
    hits_found = 0
    for qi in range(0, 3000, 150):
        exact = np.argsort(-(vecs @ vecs[qi]))[:10]
        got = [pid for pid, _ in again.search(vecs[qi], 10)]
        hits_found += len({ids[i] for i in exact} & set(got))
        top_pid, top_score = again.search(vecs[qi], 1)[0]
        assert top_score == pytest.approx(float(vecs[ids.index(top_pid)] @ vecs[qi]), abs=1e-5)
    assert hits_found / (20 * 10) >= 0.95
    with again.writing():
        again.remove_document("big")
    assert again.search(vecs[0], 5) == [] and len(again.index()) == 0


def test_text_search_matches_word_forms(open_store):
    """Both engines stem alike (Milvus's BM25 field holds the words of the local FTS5
    tokenizer, :data:`indexer.stores.types.FTS_TOKENIZE`), accents folded."""
    store = open_store(model_id="m", dim=8)
    with store.writing():
        doc = store.add_document(name="r.pdf", path="/r", sha256="r", kind="pdf", page_count=2)
        img = Image.new("RGB", (10, 10))
        ids = store.add_pages(
            doc.id, [(1, "Revenue grew in Europe.", img), (2, "Customers churned in 2023.", img)]
        )
    assert [pid for pid, _ in store.search_text("churn of customer", 2)] == [ids[1]]
    assert [pid for pid, _ in store.search_text("résumé or revenues", 2)] == [ids[0]]
    assert [pid for pid, _ in store.search_text("EUROPÉ", 2)] == [ids[0]]


def test_milvus_terms_are_the_local_tokenizer_words():
    from indexer.stores.local.catalog import FTS_TOKENIZE, MIGRATIONS
    from indexer.stores.milvus.schema import text_terms

    assert f"tokenize='{FTS_TOKENIZE}'" in MIGRATIONS[0]
    assert text_terms("Customers churned; b.pdf Café") == "custom churn b pdf cafe"
    assert text_terms("  ") == "" and text_terms("a\x00b") == "a b"


def test_read_views_for_checks(tmp_path):
    """The public views integrity checks use instead of reaching into the catalog."""
    store = Collection(tmp_path / "c", model_id="m", dim=8)
    vecs = _unit(3, 8)
    with store.writing():
        ids = _add_doc(store, "a.pdf", 4)
        store.set_vectors(ids[:3], vecs)
    assert store.quick_check() == ["ok"]
    lean = store.pages(with_text=False)
    assert [p.id for p in lean] == ids and {p.text for p in lean} == {""}
    assert [p.text for p in store.pages()][0] == "a.pdf page 1 text"
    got = store.vectors(ids)  # the pending page has none
    assert sorted(got) == ids[:3] and np.array_equal(got[ids[1]], vecs[1])
    assert store.pages_with_vector_not_of_dim(8) == []
    assert store.pages_with_vector_not_of_dim(4) == ids[:3]


def test_lock_if_free_never_waits_and_says_whether_it_holds(tmp_path):
    path = tmp_path / "c"
    writer, checker = Collection(path), Collection(path)
    with checker.lock_if_free() as free:
        assert free
        with pytest.raises(CollectionLockedError):  # held for real while the check runs
            with writer.writing(timeout=0):
                pass
    with writer.writing():
        with checker.lock_if_free() as free:
            assert not free  # another writer is at work: no wait, just the answer
        with writer.lock_if_free() as free:
            assert free  # this object holds it already
    with writer.writing(timeout=0):  # released after the check
        pass


def test_failed_page_placeholders_are_kept_and_cleared(open_store):
    store = open_store(model_id="m", dim=8)
    with store.writing():
        ids = _add_doc(store, "a.pdf", 2)
        doc = store.document("a.pdf")
        store.add_failed_page(doc.id, 3, "broken content stream")
    (failed,) = store.failed_pages()
    assert (failed["document"], failed["page"], failed["reason"]) == (
        "a.pdf",
        3,
        "broken content stream",
    )
    assert store.failed_pages(doc.id) == [failed] and len(ids) == 2
    with store.writing():
        store.clear_failed_page(doc.id, 3)
    assert store.failed_pages() == []


def test_documents_by_id_name_path_in_the_order_added(open_store):
    """``docs`` lists documents in the order they were added, and a document is named by id,
    name, path or name in any case; an ambiguous name or an unknown one is a clear error."""
    store = open_store(model_id="m", dim=8)
    names = ["zeta.pdf", "Alpha.pdf", "mid.pdf", "alpha.pdf"]
    with store.writing():
        for i, name in enumerate(names):
            store.add_document(
                name=name, path=f"/d{i}/{name}", sha256=_sha(str(i)), kind="pdf", page_count=1
            )
    docs = store.documents()
    assert [d.name for d in docs] == names
    zeta = docs[0]
    for ref in (zeta.id, str(zeta.id), "zeta.pdf", "/d0/zeta.pdf", "ZETA.PDF"):
        assert store.document(ref) == zeta
    assert store.document("Alpha.pdf").path == "/d1/Alpha.pdf"  # exact name first
    with pytest.raises(DocumentNotFoundError, match="More than one document is named 'ALPHA.pdf'"):
        store.document("ALPHA.pdf")
    with pytest.raises(DocumentNotFoundError, match="No document 'nope.pdf' in collection"):
        store.document("nope.pdf")
    assert store.documents_by_id([zeta.id, 12345]) == {zeta.id: zeta}
    assert store.find_by_sha256(_sha("2")).name == "mid.pdf"
    assert store.find_by_sha256(_sha("9")) is None


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def test_filters_run_inside_the_search_not_on_a_top_k(open_store):
    """40 pages of a.pdf beat every page of b.pdf; a filter to b.pdf still fills k, in every
    mode, so it was applied inside the search (a post-filtered top-k would come back empty)."""
    store = open_store(model_id="m", dim=8)
    query = _unit(1, 8, seed=1)[0]
    near = query + 0.05 * _unit(40, 8, seed=2)
    far = -query + 0.05 * _unit(5, 8, seed=3)
    with store.writing():
        a = store.add_document(name="a.pdf", path="/a", sha256=_sha("a"), kind="pdf", page_count=40)
        b = store.add_document(name="b.pdf", path="/b", sha256=_sha("b"), kind="pdf", page_count=5)
        img = Image.new("RGB", (8, 8))
        a_ids = store.add_pages(a.id, [(i, "pump pump pump pump", img) for i in range(1, 41)])
        b_ids = store.add_pages(b.id, [(i, "pump and valve notes", img) for i in range(1, 6)])
        store.set_vectors(a_ids + b_ids, np.vstack([near, far]).astype(np.float32))
    assert {pid for pid, _ in store.search(query, 3)} <= set(a_ids)
    assert {pid for pid, _ in store.search_text("pump", 3)} <= set(a_ids)
    only_b = PageFilter(documents=(b.id,))
    pages_2_3 = PageFilter(documents=(b.id,), first=2, last=3)
    for where, want in ((only_b, 3), (pages_2_3, 2)):
        allowed = set(b_ids) if where is only_b else set(b_ids[1:3])
        for hits in (
            store.search(query, 3, where=where),
            store.search_text("pump", 3, where=where),
            store.search_hybrid(query, "pump", 3, depth=3, where=where)[0],
        ):
            assert len(hits) == want and {pid for pid, _ in hits} <= allowed
    assert {pid for pid, _ in store.search(query, 3, page_ids=b_ids[:2])} == set(b_ids[:2])
    nothing = PageFilter(documents=())
    assert store.search(query, 3, page_ids=[]) == [] == store.search_text("pump", 3, page_ids=[])
    assert (
        store.search(query, 3, where=nothing) == [] == store.search_text("pump", 3, where=nothing)
    )
    assert store.search_hybrid(query, "pump", 3, depth=3, where=nothing)[0] == []
    assert store.search(query, 3, where=PageFilter(first=41)) == []
