"""Visual evidence ("where on this page?"): region geometry, GME's document path for a crop
(against an oracle written from the recipe, not from PageLens's code), localisation with an
embedder whose vectors follow the content by construction, the cache, the CLI and the API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.model import EmbedderBase, FakeEmbedder
from retriever.evidence.cache import EvidenceCache
from retriever.evidence.visual import (
    NOTE,
    heatmap,
    heatmap_image,
    regions,
    shrink_to_budget,
    visual_evidence,
)

IMAGE_PAD_ID = 151655
#: Quadrants: top-left, top-right, bottom-left, bottom-right.
PALETTE = np.array([(220, 30, 30), (30, 180, 40), (40, 60, 220), (240, 220, 20)], dtype=float)


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("size", [(1000, 1400), (37, 53), (5, 4)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_each_grid_covers_the_page_and_neighbours_overlap(size, overlap):
    width, height = size
    for grid in ((2, 2), (3, 3), (1, 4)):
        boxes = regions(width, height, (grid,), overlap)
        assert len(boxes) == grid[0] * grid[1]
        cover = np.zeros((height, width), dtype=int)
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            cover[y0:y1, x0:x1] += 1
        assert cover.min() >= 1  # the whole page, whatever the rounding
        if overlap == 0.0 and width >= 10:
            assert cover.max() == 1  # no overlap asked: a partition
        if overlap > 0 and width >= 10:
            cols = grid[0]
            for left, right in zip(boxes[: cols - 1], boxes[1:cols], strict=True):
                assert right[0] < left[2]  # side by side, sharing a band
            assert cover.max() >= 2


def test_both_default_grids_in_order():
    boxes = regions(300, 300)
    assert len(boxes) == 4 + 9
    assert boxes[0][:2] == (0, 0) and boxes[4][:2] == (0, 0)  # each grid starts top-left
    assert boxes[3][2:] == (300, 300) and boxes[-1][2:] == (300, 300)


@pytest.mark.parametrize(
    "args",
    [
        {"width": 0, "height": 10},
        {"width": 10, "height": 10, "grids": ((0, 2),)},
        {"width": 10, "height": 10, "grids": ()},
        {"width": 10, "height": 10, "overlap": 1.0},
        {"width": 10, "height": 10, "overlap": -0.1},
    ],
)
def test_bad_geometry_is_refused_clearly(args):
    with pytest.raises(ValueError):
        regions(**args)


def test_heatmap_is_the_mean_of_covering_regions_scaled():
    boxes = [(0, 0, 4, 4), (2, 0, 6, 4)]
    heat = heatmap(boxes, [1.0, 0.0], 6, 4)
    assert heat[0, 0] == 1.0 and heat[0, 5] == 0.0 and heat[0, 3] == pytest.approx(0.5)
    assert not heatmap(boxes, [0.3, 0.3], 6, 4).any()  # flat scores: no peak to show


# ----------------------------------------------------------------------------- GME path


def _random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def oracle_document_vector(model_dir: Path, model, crop: Image.Image, tokens: int) -> np.ndarray:
    """GME's document embedding of one image at a ``tokens`` budget, from the published recipe:
    convert("RGB"), qwen-vl-utils' fetch_image, the Qwen2-VL image processor at
    min(256, tokens)..tokens visual tokens, the default-instruction prompt with the pads
    expanded, plain positions, last token, L2 norm."""
    from qwen_vl_utils import fetch_image
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    image = fetch_image({"image": crop.convert("RGB")})
    px = 28 * 28
    size = {"shortest_edge": min(256, tokens) * px, "longest_edge": tokens * px}
    out = processor(images=[image], size=size, return_tensors="pt")
    n = int(out["image_grid_thw"].prod()) // 4
    assert n <= tokens
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n<|endoftext|>"
    )
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    inner = model.model
    with torch.no_grad():
        emb = inner.language_model.embed_tokens(ids)
        feats = inner.get_image_features(out["pixel_values"], out["image_grid_thw"])
        emb[ids == IMAGE_PAD_ID] = torch.cat(feats.pooler_output)
        hidden = inner.language_model(inputs_embeds=emb).last_hidden_state[0, -1]
    return torch.nn.functional.normalize(hidden, dim=-1).numpy()


def test_a_crop_goes_through_gmes_document_path_at_the_smaller_budget(tiny_model_dir):
    from indexer import load_embedder

    gme = load_embedder(tiny_model_dir, device="cpu", dtype="float32")
    page = _random_image(420, 560, seed=3)
    tokens = 64
    first_crop = page.crop(regions(*page.size, ((2, 2),))[0])
    expected = oracle_document_vector(tiny_model_dir, gme.model, first_crop, tokens)
    at_page_budget = gme.embed_documents([first_crop])[0]
    assert float(at_page_budget @ expected) < 0.9999  # the budget matters: the test can fail

    calls = []
    original = gme.embed_images

    def spy(images, *, instruction=None, max_image_tokens=None):
        calls.append((len(images), instruction, max_image_tokens))
        return original(images, instruction=instruction, max_image_tokens=max_image_tokens)

    gme.embed_images = spy  # type: ignore[method-assign]
    rng = np.random.default_rng(0)
    probe = rng.standard_normal(gme.dim).astype(np.float32)
    for query in (expected, probe / np.linalg.norm(probe)):
        found = visual_evidence(gme, page, query, grids=((2, 2),), max_image_tokens=tokens)
        assert found.regions[0].score == pytest.approx(float(query @ expected), abs=1e-4)
    assert calls == [(4, None, tokens)] * 2  # all crops in one call, document side, budget
    assert gme.max_image_tokens == 1280  # the model's own budget is untouched
    assert np.allclose(gme.embed_documents([first_crop])[0], at_page_budget, atol=1e-6)


# ----------------------------------------------------------------------------- localisation


class ColourEmbedder(EmbedderBase):
    """Vectors that follow the content by construction: an image's vector is the share of
    its pixels nearest each palette colour (unit norm), so a crop of one colour points at
    that colour's axis. Counts its calls and what it was given."""

    model_id, dim, max_image_tokens = "test/colour", 4, 1280

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def _row(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 1, 3)
        nearest = np.argmin(((pixels - PALETTE[None]) ** 2).sum(-1), axis=1)
        row = np.bincount(nearest, minlength=4).astype(np.float32)
        return row / np.linalg.norm(row)

    def embed_images(self, images, *, instruction=None, max_image_tokens=None):
        self.calls.append(
            {"n": len(images), "instruction": instruction, "tokens": max_image_tokens}
        )
        return np.stack([self._row(i) for i in images])

    def embed_texts(self, texts, *, instruction=None):
        raise NotImplementedError

    def embed_fused(self, texts, images, *, instruction=None):
        raise NotImplementedError


def quadrant_page(width: int = 480, height: int = 640) -> Image.Image:
    """Four quadrants, each its own colour with a little texture of noise."""
    rng = np.random.default_rng(7)
    page = np.zeros((height, width, 3), dtype=float)
    h2, w2 = height // 2, width // 2
    for i, (ys, xs) in enumerate(
        [
            (slice(0, h2), slice(0, w2)),
            (slice(0, h2), slice(w2, width)),
            (slice(h2, height), slice(0, w2)),
            (slice(h2, height), slice(w2, width)),
        ]
    ):
        page[ys, xs] = PALETTE[i]
    page += rng.normal(0, 12, page.shape)
    return Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("quadrant", [0, 1, 2, 3])
def test_best_region_and_heat_peak_lie_in_the_matching_quadrant(quadrant):
    page = quadrant_page()
    width, height = page.size
    query = np.eye(4, dtype=np.float32)[quadrant]
    embedder = ColourEmbedder()
    found = visual_evidence(embedder, page, query)
    col, row = quadrant % 2, quadrant // 2

    def inside(x: float, y: float) -> bool:  # fractions of the page
        return (x >= 0.5) == bool(col) and (y >= 0.5) == bool(row)

    x0, y0, x1, y1 = found.best.box
    assert inside((x0 + x1) / 2, (y0 + y1) / 2), found.best
    peak_y, peak_x = np.unravel_index(int(np.argmax(found.heatmap)), found.heatmap.shape)
    assert inside(peak_x / width, peak_y / height)
    assert found.heatmap.shape == (height, width)
    assert 0.0 == found.heatmap.min() and found.heatmap.max() == 1.0
    assert found.note == NOTE and "approximat" in found.note
    assert all(r.source == "visual" and "approximate" in r.text for r in found.regions)
    assert embedder.calls == [{"n": 13, "instruction": None, "tokens": 256}]  # one batch
    overlay = heatmap_image(page, found)
    assert overlay.size == page.size and overlay.mode == "RGB"


def test_region_dict_has_the_highlight_keys():
    found = visual_evidence(ColourEmbedder(), quadrant_page(), np.eye(4, dtype=np.float32)[0])
    d = found.best.as_dict()
    assert set(d) == {"box", "text", "source", "score"} and d["source"] == "visual"
    assert len(d["box"]) == 4 and all(0.0 <= v <= 1.0 for v in d["box"])
    assert json.dumps(found.as_dict())  # JSON-ready, without the heat map


def test_bad_query_vectors_are_refused_clearly():
    page = quadrant_page(40, 40)
    for bad in (np.zeros(4), np.ones(3), np.array([np.nan, 0, 0, 1])):
        with pytest.raises(ValueError, match="query vector"):
            visual_evidence(ColourEmbedder(), page, bad)


def test_an_embedder_without_a_budget_gets_crops_shrunk_to_it():
    class NoBudget(FakeEmbedder):
        seen: list[tuple[int, int]] = []

        def embed_images(self, images, *, instruction=None):
            self.seen.extend(i.size for i in images)
            return super().embed_images(images, instruction=instruction)

    emb = NoBudget()
    page = _random_image(1200, 1600)
    visual_evidence(emb, page, emb.embed_queries(["x"])[0], max_image_tokens=64)
    assert len(emb.seen) == 13 and all(w * h <= 64 * 28 * 28 for w, h in emb.seen)
    small = _random_image(50, 40)
    assert shrink_to_budget(small, 64) is small


# ----------------------------------------------------------------------------- cache


def test_a_cached_page_costs_no_second_embed(tmp_path):
    page = quadrant_page()
    red, green = np.eye(4, dtype=np.float32)[:2]
    embedder = ColourEmbedder()
    cache = EvidenceCache(folder=tmp_path / "evidence")
    first = visual_evidence(embedder, page, red, cache=cache)
    again = visual_evidence(embedder, page, red, cache=cache)
    assert len(embedder.calls) == 1 and again.cached and not first.cached
    assert [r.score for r in again.regions] == [r.score for r in first.regions]
    assert np.array_equal(again.heatmap, first.heatmap)
    visual_evidence(embedder, page, green, cache=cache)  # another query: computed
    visual_evidence(embedder, page, red, cache=cache, max_image_tokens=128)  # other budget
    assert len(embedder.calls) == 3

    fresh = EvidenceCache(folder=tmp_path / "evidence")  # the next process
    visual_evidence(embedder, page, red, cache=fresh)
    assert len(embedder.calls) == 3 and fresh.hits == 1
    for f in (tmp_path / "evidence").rglob("*.json"):
        f.write_text("{not json")  # damaged entries are recomputed, never an error
    visual_evidence(embedder, page, red, cache=EvidenceCache(folder=tmp_path / "evidence"))
    assert len(embedder.calls) == 4


def test_memory_cache_keeps_its_capacity():
    cache = EvidenceCache(capacity=2)
    for i in range(3):
        cache.put(str(i), [float(i)])
    assert cache.get("0") is None and cache.get("2") == [2.0]


# ----------------------------------------------------------------------------- CLI and API


def _assert_visual_hits(hits: list[dict]) -> None:
    assert hits
    for hit in hits:
        visual = [h for h in hit["highlights"] if h["source"] == "visual"]
        assert len(visual) == 13
        scores = [h["score"] for h in visual]
        assert scores == sorted(scores, reverse=True)  # best region first
        assert all(len(h["box"]) == 4 and "approximate" in h["text"] for h in visual)


def test_cli_search_evidence_visual_json(tiny_model_dir, monkeypatch, tmp_path, make_pdf):
    from typer.testing import CliRunner

    from app.cli import cli

    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_IMAGE_TOKENS", "16")
    monkeypatch.setenv("PAGELENS_COLLECTION", str(tmp_path / "coll"))
    pdf = make_pdf("report.pdf", ["Revenue grew.", "Churn rose to nine percent."])
    runner = CliRunner()
    assert runner.invoke(cli, ["index", str(pdf)], catch_exceptions=False).exit_code == 0
    args = ["search", "churn", "-k", "2", "--json", "--evidence", "visual"]
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["evidence"] == "visual" and data["evidence_note"] == NOTE
    _assert_visual_hits(data["hits"])
    assert "visual evidence" in result.stderr  # progress
    assert list((tmp_path / "pagelens-cache" / "evidence").rglob("*.json"))  # kept on disk

    plain = runner.invoke(cli, ["search", "churn", "--json"], catch_exceptions=False)
    hits = json.loads(plain.stdout)["hits"]
    assert all(h["source"] != "visual" for hit in hits for h in hit["highlights"])
    bad = runner.invoke(cli, ["search", "churn", "--evidence", "pixels"])
    assert bad.exit_code == 2 and "--evidence" in bad.output
    text_mode = runner.invoke(cli, ["search", "churn", "--mode", "text", "--evidence", "visual"])
    assert text_mode.exit_code == 2


def test_api_search_evidence_visual(make_pdf, _isolated_home):
    from fastapi.testclient import TestClient

    from app.server import create_app
    from indexer.pipeline import Indexer
    from indexer.stores import open_collection

    pdf = make_pdf("report.pdf", ["Quarterly revenue grew.", "Customer churn rose."])
    fake = FakeEmbedder()
    store = open_collection(str(_isolated_home / "reports"))
    Indexer(store, fake).add([pdf])
    store.close()
    with TestClient(create_app(fake, max_wait_ms=1)) as client:
        body = {"query": "churn", "k": 2, "collection": "reports", "evidence": "visual"}
        r = client.post("/v1/search", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["evidence_note"] == NOTE
        _assert_visual_hits(r.json()["hits"])
        before = len(fake.calls)
        assert client.post("/v1/search", json=body).json() == r.json()
        assert [c for c in fake.calls[before:] if c[0] == "images"] == []  # cached
        plain = client.post("/v1/search", json={**body, "evidence": "text"}).json()
        assert all(h["source"] != "visual" for hit in plain["hits"] for h in hit["highlights"])
        bad = client.post("/v1/search", json={**body, "evidence": "pixels"})
        assert bad.status_code == 400
        text_mode = client.post("/v1/search", json={**body, "mode": "text"})
        assert text_mode.status_code == 400 and "evidence" in text_mode.text


def test_where_on_page_for_the_app(make_pdf, tmp_path):
    from indexer.errors import QueryError
    from indexer.pipeline import Indexer
    from indexer.stores import open_collection
    from retriever.search import Retriever

    pdf = make_pdf("report.pdf", ["Quarterly revenue grew.", "Customer churn rose."])
    fake = FakeEmbedder()
    store = open_collection(str(tmp_path / "coll"))
    Indexer(store, fake).add([pdf])
    retriever = Retriever(fake, store)
    hit = retriever.search("churn", k=1)[0]
    assert all(h.source != "visual" for h in hit.highlights)  # nothing visual unless asked
    found = retriever.where_on_page(hit, "churn")
    with Image.open(hit.image) as page:
        assert found.heatmap.shape == (page.height, page.width)
        assert heatmap_image(page, found).size == page.size
    assert not found.cached and retriever.where_on_page(hit, "churn").cached
    with pytest.raises(QueryError, match="Unknown evidence"):
        retriever.search("churn", evidence="pixels")
    with pytest.raises(QueryError, match="needs the model"):
        Retriever(None, store).search("churn", mode="text", evidence="visual")
    store.close()


def test_an_unwritable_cache_folder_still_serves_from_memory(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cache = EvidenceCache(folder=blocker / "evidence")
    embedder = ColourEmbedder()
    page, red = quadrant_page(60, 60), np.eye(4, dtype=np.float32)[0]
    visual_evidence(embedder, page, red, cache=cache)
    assert visual_evidence(embedder, page, red, cache=cache).cached
    assert len(embedder.calls) == 1 and blocker.read_text().startswith("a file")
