"""Visual evidence, "where on this page?": a heat map from embedded overlapping crops.

The page is cut into overlapping regions (by default a 2x2 and a 3x3 grid, each cell grown
by a quarter of its size into its neighbours), every region is embedded through the
embedder's *document* path (GME's document prompt, resizing and pooling, exactly as a page)
at a smaller visual-token budget, and scored by cosine against the query's vector. Each
pixel of the heat map is the mean score of the regions covering it, scaled to 0..1; the best
region is outlined. Why crops and not attention maps: GME pools one token, so its attention
says little about where the match is, while a crop's vector is the model's own answer to
"does this part of the page match?". It is an approximation (a region out of context, a
coarse grid) and every result says so in :data:`NOTE`.

All crops of a page go through one ``embed_images`` call. An embedder that takes a per-call
``max_image_tokens`` (GME in process, the fake) gets the budget there; one that does not (a
remote endpoint, the API server's batcher) gets crops already shrunk to the budget here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from indexer.model import Embedder
from retriever.evidence.cache import EvidenceCache, image_digest, model_key, vector_digest
from retriever.evidence.highlights import Highlight

#: Grids as (columns, rows): coarse regions that hold a whole table, fine ones a paragraph.
DEFAULT_GRIDS: tuple[tuple[int, int], ...] = ((2, 2), (3, 3))
#: How far a cell grows into each neighbour, as a fraction of the cell (split on both sides):
#: a match on a grid line still lies wholly inside some region.
DEFAULT_OVERLAP = 0.25
#: Visual tokens per crop: a 2x2 cell of a page rendered at 1280 tokens holds about 320, so
#: 256 keeps most of its detail at a fifth of the page's cost per crop.
DEFAULT_TOKENS = 256
#: Pixels per visual token side (Qwen2-VL: 14-px patches merged 2x2).
TOKEN_PX = 28
NOTE = (
    "approximate: each region was embedded on its own at a reduced budget and compared "
    "with the query; the heat map shows where the model matches, not an exact location"
)

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class VisualRegion:
    """One scored region. ``box`` is (x0, y0, x1, y1) as fractions 0..1 of the page image;
    ``pixels`` the same in pixels of the image that was cut. Its :meth:`as_dict` has the
    keys of every highlight (``box``, ``text``, ``source``, ``score``)."""

    box: tuple[float, float, float, float]
    pixels: Box
    score: float
    text: str
    source: str = "visual"

    def as_dict(self) -> dict[str, Any]:
        """The same JSON as every other highlight (:meth:`Highlight.as_dict`)."""
        return Highlight(self.box, self.text, self.source, self.score).as_dict()


@dataclass(frozen=True)
class VisualEvidence:
    """The regions of one page with their scores, the heat map (H x W floats 0..1 over the
    page image), the best region, and the note that it is an approximation."""

    regions: list[VisualRegion]
    heatmap: np.ndarray = field(repr=False)
    best: VisualRegion
    note: str = NOTE
    max_image_tokens: int = DEFAULT_TOKENS
    grids: tuple[tuple[int, int], ...] = DEFAULT_GRIDS
    #: The scores came from the cache (no crop was embedded).
    cached: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, without the heat map (rebuild it with :func:`heatmap`)."""
        return {
            "regions": [r.as_dict() for r in self.regions],
            "best": self.best.as_dict(),
            "note": self.note,
            "max_image_tokens": self.max_image_tokens,
            "grids": [list(g) for g in self.grids],
        }


def _check_grids(grids: Sequence[tuple[int, int]], overlap: float) -> tuple[tuple[int, int], ...]:
    out = tuple((int(c), int(r)) for c, r in grids)
    if not out or any(c < 1 or r < 1 for c, r in out):
        raise ValueError(f"grids must be (columns, rows) pairs of at least 1, got {grids!r}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return out


def regions(
    width: int,
    height: int,
    grids: Sequence[tuple[int, int]] = DEFAULT_GRIDS,
    overlap: float = DEFAULT_OVERLAP,
) -> list[Box]:
    """Pixel boxes (x0, y0, x1, y1), grid after grid, row by row: each grid's cells grown by
    ``overlap`` of a cell (half on each side) and clipped to the page, so every grid covers
    the page and neighbouring regions share a band. Every box is at least 1 px wide/high."""
    checked = _check_grids(grids, overlap)
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"a page needs a positive size, got {width}x{height}")
    boxes: list[Box] = []
    for cols, rows in checked:
        xs = [round(c * width / cols) for c in range(cols + 1)]  # edges: a partition
        ys = [round(r * height / rows) for r in range(rows + 1)]
        mx = math.ceil(overlap / 2 * width / cols)  # then each side grown by this margin
        my = math.ceil(overlap / 2 * height / rows)
        for r in range(rows):
            for c in range(cols):
                x0 = min(max(0, xs[c] - mx), width - 1)
                y0 = min(max(0, ys[r] - my), height - 1)
                x1 = min(width, xs[c + 1] + mx)
                y1 = min(height, ys[r + 1] + my)
                boxes.append((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
    return boxes


def heatmap(boxes: Sequence[Box], scores: Sequence[float], width: int, height: int) -> np.ndarray:
    """(height, width) float32: each pixel the mean score of the boxes covering it, scaled so
    the page's lowest is 0 and highest 1 (all zeros when every region scores the same)."""
    total = np.zeros((height, width), dtype=np.float32)
    count = np.zeros((height, width), dtype=np.float32)
    for (x0, y0, x1, y1), s in zip(boxes, scores, strict=True):
        total[y0:y1, x0:x1] += float(s)
        count[y0:y1, x0:x1] += 1.0
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    low, high = float(mean.min()), float(mean.max())
    if high - low <= 1e-12:
        return np.zeros_like(mean)
    return (mean - low) / (high - low)


def takes_budget(embedder: Any) -> bool:
    """Whether ``embedder.embed_images`` takes a per-call ``max_image_tokens``."""
    try:
        params = inspect.signature(embedder.embed_images).parameters
    except (TypeError, ValueError):
        return False
    return "max_image_tokens" in params


def shrink_to_budget(image: Image.Image, tokens: int) -> Image.Image:
    """``image`` scaled down (aspect kept) to at most ``tokens`` visual tokens' worth of
    pixels; unchanged if already within. For embedders that cannot take a budget per call."""
    limit = int(tokens) * TOKEN_PX * TOKEN_PX
    if image.width * image.height <= limit:
        return image
    scale = math.sqrt(limit / (image.width * image.height))
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def embed_crops(embedder: Embedder, crops: list[Image.Image], tokens: int) -> np.ndarray:
    """The crops' vectors through the document path (default instruction), one call."""
    if takes_budget(embedder):
        return np.asarray(embedder.embed_images(crops, max_image_tokens=int(tokens)))  # type: ignore[call-arg]
    return np.asarray(embedder.embed_documents([shrink_to_budget(c, tokens) for c in crops]))


def _query(vector: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(vector, dtype=np.float32).reshape(-1)
    if q.shape[0] != dim:
        raise ValueError(f"the query vector has {q.shape[0]} dimensions, the model {dim}")
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("the query vector must be finite and non-zero")
    return q / norm


def visual_evidence(
    embedder: Embedder,
    page_image: Image.Image,
    query_vector: np.ndarray,
    *,
    grids: Sequence[tuple[int, int]] = DEFAULT_GRIDS,
    overlap: float = DEFAULT_OVERLAP,
    max_image_tokens: int = DEFAULT_TOKENS,
    cache: EvidenceCache | None = None,
) -> VisualEvidence:
    """Where on ``page_image`` the query (its vector, from ``embed_queries``) matches.

    The regions' scores are the cosines of their vectors with the query; ``cache`` keeps
    them per (page pixels, query vector, model, settings), so asking again embeds nothing.
    """
    checked = _check_grids(grids, overlap)
    if int(max_image_tokens) < 1:
        raise ValueError(f"max_image_tokens must be at least 1, got {max_image_tokens}")
    q = _query(query_vector, int(embedder.dim))
    width, height = page_image.size
    boxes = regions(width, height, checked, overlap)
    key = None
    scores = None
    if cache is not None:
        settings = f"{checked}:{overlap}:{int(max_image_tokens)}:{TOKEN_PX}"
        key = cache.key(image_digest(page_image), vector_digest(q), model_key(embedder), settings)
        scores = cache.get(key)
    cached = scores is not None
    if scores is None:
        vectors = embed_crops(embedder, [page_image.crop(b) for b in boxes], max_image_tokens)
        scores = [float(s) for s in vectors @ q]
        if cache is not None and key is not None:
            cache.put(key, scores)
    found = _regions(boxes, scores, checked, width, height)
    return VisualEvidence(
        regions=found,
        heatmap=heatmap(boxes, scores, width, height),
        best=max(found, key=lambda r: r.score),
        max_image_tokens=int(max_image_tokens),
        grids=checked,
        cached=cached,
    )


def _regions(
    boxes: list[Box],
    scores: Sequence[float],
    grids: tuple[tuple[int, int], ...],
    width: int,
    height: int,
) -> list[VisualRegion]:
    names = [f"{c}x{r}" for c, r in grids for _ in range(c * r)]
    numbers = [i + 1 for c, r in grids for i in range(c * r)]
    sizes = [c * r for c, r in grids for _ in range(c * r)]
    return [
        VisualRegion(
            box=(x0 / width, y0 / height, x1 / width, y1 / height),
            pixels=(x0, y0, x1, y1),
            score=float(s),
            text=f"region {n}/{size} of the {name} grid (approximate)",
        )
        for (x0, y0, x1, y1), s, name, n, size in zip(
            boxes, scores, names, numbers, sizes, strict=True
        )
    ]


def heatmap_image(
    page_image: Image.Image, evidence: VisualEvidence, *, alpha: float = 0.45
) -> Image.Image:
    """The page with the heat map laid over it (red = strong match) and the best region
    outlined: what the app shows under "where on this page?"."""
    page = page_image.convert("RGB")
    heat = evidence.heatmap
    if heat.shape != (page.height, page.width):
        raise ValueError(
            f"the evidence is for a {heat.shape[1]}x{heat.shape[0]} page, not {page.size}"
        )
    level = (heat * 255).astype(np.uint8)
    colour = np.stack([level, np.zeros_like(level), 255 - level], axis=-1)
    overlay = Image.blend(page, Image.fromarray(colour, "RGB"), alpha)
    draw = ImageDraw.Draw(overlay)
    x0, y0, x1, y1 = evidence.best.pixels
    line = max(2, min(page.size) // 150)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 200, 0), width=line)
    return overlay


__all__ = [
    "DEFAULT_GRIDS",
    "DEFAULT_OVERLAP",
    "DEFAULT_TOKENS",
    "NOTE",
    "VisualEvidence",
    "VisualRegion",
    "embed_crops",
    "heatmap",
    "heatmap_image",
    "regions",
    "shrink_to_budget",
    "takes_budget",
    "visual_evidence",
]
