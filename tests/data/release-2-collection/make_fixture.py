"""Build tests/data/release-2-collection with the code of the last release (ddaf2e2 + prep)."""
import json, shutil, sys
from pathlib import Path
import pymupdf
from indexer.embedder import FakeEmbedder
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from retriever.search import Retriever

out = Path(sys.argv[1]); shutil.rmtree(out, ignore_errors=True)
src = Path("/tmp/fx/src"); shutil.rmtree(src, ignore_errors=True); src.mkdir()
texts = {
    "engines.pdf": ["Steam engines convert heat into mechanical work.", "Diesel engines ignite fuel by compression."],
    "gardens.pdf": ["Tomatoes need full sun and regular watering.", "Compost improves soil structure for roses."],
}
for name, pages in texts.items():
    doc = pymupdf.open()
    for t in pages:
        p = doc.new_page(width=300, height=200)
        p.insert_text((20, 40), t, fontsize=9)
    doc.save(src / name)
emb = FakeEmbedder()
store = open_collection(out / "col")
Indexer(store, emb).add([src / "engines.pdf", src / "gardens.pdf"])
r = Retriever(emb, store)
expected = {"documents": [{"id": d.id, "name": d.name, "sha256": d.sha256, "pages": d.page_count} for d in store.documents()], "searches": []}
for q in ["diesel compression", "roses soil", "heat work"]:
    for mode in ["visual", "text", "hybrid"]:
        hits = r.search(q, k=3, mode=mode)
        expected["searches"].append({"query": q, "mode": mode, "hits": [[h.document, h.page, round(float(h.score), 5)] for h in hits]})
(out / "expected.json").write_text(json.dumps(expected, indent=1))
print(json.dumps(expected)[:600])
